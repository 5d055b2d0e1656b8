"""Endpoints: a workload's network interface with its pod metadata and identity.

Without Kubernetes, endpoints come from a registry file (YAML) that lists the
cluster's endpoints; those whose `node` is this agent's node (or that name no node)
are local and get the datapath attached to their host-side interface, the others
only give names and identities to remote addresses. The agent watches the file and
also takes additions and removals through its admin API.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Iterable

import yaml

from .endpoint_ids import EndpointIDError, EndpointIDs
from .identities import Identity, IdentityAllocator
from ..pipeline.l7.visibility import ANNOTATION, VisibilityError, parse_visibility

log = logging.getLogger(__name__)

NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
SERVICE_ACCOUNT_LABEL = "io.cilium.k8s.policy.serviceaccount"
CLUSTER_LABEL = "io.cilium.k8s.policy.cluster"


def packed_ip(ip: str) -> bytes:
    """An address as the datapath reports it: 16 bytes, IPv4 in the first four."""
    return ipaddress.ip_address(ip).packed.ljust(16, b"\0")


class EndpointError(ValueError):
    """A malformed endpoint definition."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    namespace: str
    labels: tuple[tuple[str, str], ...]
    ips: tuple[str, ...]
    interface: str = ""
    node: str = ""
    service_account: str = "default"
    workload_name: str = ""
    workload_kind: str = ""
    cluster: str = "default"
    id: int = 0
    identity: int = 0
    identity_labels: tuple[str, ...] = field(default=(), compare=False)
    # Kubernetes-style annotations webb reads (L7 visibility: pipeline/l7/visibility.py).
    annotations: tuple[tuple[str, str], ...] = ()
    # Its flow.Endpoint message, encoded once: every flow of the endpoint reuses it.
    wire: bytes = field(default=b"", compare=False, repr=False)

    def with_wire(self) -> "Endpoint":
        from ..pipeline.threefour import encode_endpoint

        return replace(self, wire=encode_endpoint(
            self.id, self.identity, self.namespace, self.identity_labels, self.name,
            self.workload_name, self.workload_kind, self.cluster))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def security_labels(self) -> list[str]:
        out = [f"k8s:{k}={v}" for k, v in self.labels]
        out.append(f"k8s:{NAMESPACE_LABEL}={self.namespace}")
        out.append(f"k8s:{SERVICE_ACCOUNT_LABEL}={self.service_account}")
        out.append(f"k8s:{CLUSTER_LABEL}={self.cluster}")
        return sorted(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "namespace": self.namespace,
            "labels": dict(self.labels), "ips": list(self.ips), "interface": self.interface,
            "node": self.node, "service_account": self.service_account,
            "workload": {"name": self.workload_name, "kind": self.workload_kind},
            "identity": self.identity, "identity_labels": list(self.identity_labels),
            "annotations": dict(self.annotations),
        }


def parse_endpoint(raw: Any) -> Endpoint:
    """Validates one registry entry; errors name the field."""
    if not isinstance(raw, dict):
        raise EndpointError("endpoint must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise EndpointError("endpoint.name: required string")
    ns = raw.get("namespace", "default")
    if not isinstance(ns, str) or not ns:
        raise EndpointError(f"endpoint {name}: namespace must be a non-empty string")
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict):
        raise EndpointError(f"endpoint {name}: labels must be a mapping")
    ips = raw.get("ips") or []
    if isinstance(ips, str):
        ips = [ips]
    norm_ips = []
    for ip in ips:
        try:
            norm_ips.append(str(ipaddress.ip_address(str(ip))))
        except ValueError:
            raise EndpointError(f"endpoint {name}: ips: {ip!r} is not an IP address") from None
    wl = raw.get("workload") or {}
    if not isinstance(wl, dict):
        raise EndpointError(f"endpoint {name}: workload must be a mapping with name and kind")
    try:
        ep_id = int(raw.get("id", 0) or 0)
    except (TypeError, ValueError):
        raise EndpointError(f"endpoint {name}: id must be an integer") from None
    annotations = raw.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise EndpointError(f"endpoint {name}: annotations must be a mapping")
    annotations = {str(k): str(v) for k, v in annotations.items()}
    try:
        parse_visibility(annotations.get(ANNOTATION, ""))
    except VisibilityError as e:
        raise EndpointError(f"endpoint {name}: annotation {ANNOTATION}: {e}") from None
    return Endpoint(
        annotations=tuple(sorted(annotations.items())),
        name=name, namespace=ns,
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        ips=tuple(norm_ips), interface=str(raw.get("interface", "") or ""),
        node=str(raw.get("node", "") or ""),
        service_account=str(raw.get("service_account", "default") or "default"),
        workload_name=str(wl.get("name", "") or ""), workload_kind=str(wl.get("kind", "") or ""),
        cluster=str(raw.get("cluster", "default") or "default"), id=ep_id,
    )


@dataclass(frozen=True)
class NodeInfo:
    """Another node of the cluster, from the registry file's `nodes` list."""

    name: str
    ips: tuple[str, ...]
    agent_address: str = ""


def load_registry_file(path: str) -> tuple[list[Endpoint], list[NodeInfo]]:
    """Returns the endpoints and nodes (`nodes: [{name, ips, agent_address}]`) of a file."""
    eps, nodes, _ = read_registry_file(path)
    return eps, nodes


def parse_namespaces(raw: Any, where: str = "namespaces") -> dict[str, dict[str, str]]:
    """`namespaces: [{name, labels}]` (or a mapping name -> labels): the labels that
    namespaceSelectors of network policies match."""
    if raw is None:
        return {}
    items = ([{"name": k, "labels": v} for k, v in raw.items()] if isinstance(raw, dict)
             else raw)
    if not isinstance(items, list):
        raise EndpointError(f"{where}: must be a list of {{name, labels}}")
    out: dict[str, dict[str, str]] = {}
    for n in items:
        if not isinstance(n, dict) or not isinstance(n.get("name"), str) or not n["name"]:
            raise EndpointError(f"{where}: each namespace needs a name")
        labels = n.get("labels") or {}
        if not isinstance(labels, dict):
            raise EndpointError(f"{where}: namespace {n['name']}: labels must be a mapping")
        out[n["name"]] = {str(k): str(v) for k, v in labels.items()}
    return out


def read_registry_file(path: str) -> tuple[list[Endpoint], list[NodeInfo], dict[str, dict[str, str]]]:
    """Endpoints, nodes and namespace labels of a registry file."""
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    if not isinstance(doc, dict):
        raise EndpointError(f"{path}: top level must be a mapping with 'endpoints'")
    eps = [parse_endpoint(e) for e in doc.get("endpoints") or []]
    nodes: list[NodeInfo] = []
    for n in doc.get("nodes") or []:
        if not isinstance(n, dict) or not n.get("name"):
            raise EndpointError(f"{path}: nodes: each node needs a name")
        try:
            ips = tuple(str(ipaddress.ip_address(str(ip))) for ip in n.get("ips") or [])
        except ValueError as e:
            raise EndpointError(f"{path}: node {n['name']}: {e}") from None
        nodes.append(NodeInfo(str(n["name"]), ips, str(n.get("agent_address", "") or "")))
    return eps, nodes, parse_namespaces(doc.get("namespaces"), f"{path}: namespaces")


Listener = Callable[[Endpoint | None, Endpoint | None], Awaitable[None]]


class EndpointRegistry:
    """Endpoints known to this agent, by key and by IP, with identities resolved.

    Listeners get (old, new) on every change; the datapath uses it to attach and
    detach interfaces without a restart.
    """

    def __init__(self, node_name: str, identities: IdentityAllocator) -> None:
        self.node_name = node_name
        self.identities = identities
        self._by_key: dict[str, Endpoint] = {}
        self._by_ip: dict[str, Endpoint] = {}
        # The datapath reports addresses as 16 raw bytes (IPv4 in the first four);
        # keying by those spares a conversion per event.
        self._by_packed: dict[bytes, Endpoint] = {}
        self._listeners: list[Listener] = []
        self._ids = EndpointIDs()
        self._file_keys: set[str] = set()
        self.nodes: list[NodeInfo] = []
        self.namespaces: dict[str, dict[str, str]] = {}  # namespace -> its labels
        self._node_listeners: list[Callable[[list[NodeInfo]], None]] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def owns(self, ep: Endpoint) -> bool:
        """An endpoint of this node (with an ID, listed by the admin API): one that
        names this node, or names none and has an interface here. A pod of this node
        whose interface is not found yet is one too (not attached meanwhile)."""
        return ep.node == self.node_name if ep.node else bool(ep.interface)

    def is_local(self, ep: Endpoint) -> bool:
        """An endpoint of this node whose interface the datapath attaches to."""
        return bool(ep.interface) and self.owns(ep)

    def by_ip(self, ip: str) -> Endpoint | None:
        return self._by_ip.get(ip)

    @property
    def by_packed(self) -> dict[bytes, Endpoint]:
        return self._by_packed

    def list(self) -> list[Endpoint]:
        """Every endpoint known, this node's and the others' (names, identities)."""
        return sorted(self._by_key.values(), key=lambda e: (e.namespace, e.name))

    def local(self) -> list[Endpoint]:
        """This node's endpoints, as Cilium's endpoint list shows them."""
        return [e for e in self.list() if self.owns(e)]

    def get(self, key: str) -> Endpoint | None:
        return self._by_key.get(key)

    def _resolve(self, ep: Endpoint, old: Endpoint | None) -> Endpoint:
        ident: Identity = self.identities.allocate(ep.security_labels())
        ep_id = 0  # another node's endpoint: its ID means nothing here (Hubble shows 0)
        if self.owns(ep):
            try:
                ep_id = self._ids.allocate(ep.key, ep.id)
            except EndpointIDError as e:
                raise EndpointError(f"endpoint {ep.key}: {e}") from None
        else:
            self._ids.release(ep.key)
        return replace(ep, id=ep_id, identity=ident.id, identity_labels=ident.labels).with_wire()

    async def upsert(self, ep: Endpoint) -> Endpoint:
        """Adds or updates an endpoint; EndpointError if its ID is taken on this node."""
        old = self._by_key.get(ep.key)
        new = self._resolve(ep, old)
        if old == new and old.identity_labels == new.identity_labels:
            return old
        if old:
            self._unindex(old)
        self._by_key[new.key] = new
        for ip in new.ips:
            self._by_ip[ip] = new
            self._by_packed[packed_ip(ip)] = new
        await self._notify(old, new)
        return new

    async def remove(self, key: str) -> Endpoint | None:
        old = self._by_key.pop(key, None)
        if old is None:
            return None
        self._unindex(old)
        self._ids.release(key)
        self._file_keys.discard(key)
        await self._notify(old, None)
        return old

    def _unindex(self, old: Endpoint) -> None:
        for ip in old.ips:
            if self._by_ip.get(ip) is old:
                del self._by_ip[ip]
            if self._by_packed.get(packed_ip(ip)) is old:
                del self._by_packed[packed_ip(ip)]

    async def _notify(self, old: Endpoint | None, new: Endpoint | None) -> None:
        for listener in self._listeners:
            try:
                await listener(old, new)
            except Exception:  # one failing listener must not stop the others
                log.exception("endpoint listener failed for %s", (new or old).key)  # type: ignore[union-attr]

    def subscribe_nodes(self, listener: Callable[[list[NodeInfo]], None]) -> None:
        self._node_listeners.append(listener)

    def set_cluster(self, nodes: Iterable[NodeInfo] | None = None,
                    namespaces: dict[str, dict[str, str]] | None = None) -> None:
        """Nodes and/or namespace labels from a source other than the file (the
        Kubernetes watchers); node listeners hear of it as of a file change."""
        if nodes is not None:
            self.nodes = list(nodes)
        if namespaces is not None:
            self.namespaces = dict(namespaces)
        for nl in self._node_listeners:
            nl(self.nodes)

    async def sync_file(self, endpoints: Iterable[Endpoint], nodes: Iterable[NodeInfo],
                        namespaces: dict[str, dict[str, str]] | None = None) -> None:
        """Makes the file-sourced endpoints equal to `endpoints`."""
        eps = list(endpoints)
        self.nodes = list(nodes)
        if namespaces is not None:
            self.namespaces = namespaces
        for nl in self._node_listeners:
            nl(self.nodes)
        keys = {e.key for e in eps}
        for key in sorted(self._file_keys - keys):
            await self.remove(key)
        for ep in eps:
            try:
                await self.upsert(ep)
            except EndpointError as e:  # one bad entry (a taken ID) must not stop the rest
                log.error("endpoints file: %s", e)
        self._file_keys = keys


async def watch_registry_file(path: str, registry: EndpointRegistry,
                              interval: float = 0.5) -> None:
    """Polls the file's mtime; a malformed file is logged and the last good state kept."""
    last: tuple[float, int] | None = None
    while True:
        try:
            st = os.stat(path)
            sig = (st.st_mtime, st.st_size)
            if sig != last:
                last = sig
                eps, nodes, namespaces = read_registry_file(path)
                await registry.sync_file(eps, nodes, namespaces)
                log.info("endpoints file %s: %d endpoints", path, len(eps))
        except FileNotFoundError:
            if last is not None:
                log.warning("endpoints file %s disappeared; keeping endpoints", path)
                last = None
        except (EndpointError, yaml.YAMLError, ValueError) as e:
            log.error("endpoints file %s rejected, keeping previous endpoints: %s", path, e)
        await asyncio.sleep(interval)

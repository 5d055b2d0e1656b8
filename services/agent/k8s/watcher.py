"""Kubernetes mode: the API server as the source of endpoints, identities, nodes,
namespaces, Services and policies.

Everything feeds the same parts the registry file feeds: pods become Endpoints in
the EndpointRegistry (whose listeners attach the datapath and recompile policy),
Nodes and Namespaces go through EndpointRegistry.set_cluster, policies into the
PolicyEngine, Services and EndpointSlices into the ServiceMap the flow encoder
reads. Identities are allocated cluster-wide (identity_crd.py) before an endpoint
is upserted, so the registry only ever sees numbers every node agrees on.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable

from webb.backoff import Backoff, delay as backoff_delay
from webb.timeouts import wait_for

from ..stores.endpoints import Endpoint, EndpointRegistry, NodeInfo
from ..policy.engine import PolicyEngine
from .client import KubeClient, KubeError, Resource
from .identity_crd import CRDIdentityAllocator, IdentityError
from .informer import DELETED, Informer
from .nodes import node_info
from .pods import pod_endpoint, pod_key
from .policies import POLICY_RESOURCES, PolicyFeed
from .services import ServiceMap

log = logging.getLogger(__name__)

PODS = Resource("v1", "pods")
NAMESPACES = Resource("v1", "namespaces", namespaced=False)
NODES = Resource("v1", "nodes", namespaced=False)
SERVICES = Resource("v1", "services")
SLICES_V1 = Resource("discovery.k8s.io/v1", "endpointslices")
SLICES_V1BETA1 = Resource("discovery.k8s.io/v1beta1", "endpointslices")

MAX_POD_RETRY_S = 30.0  # a pod without interface/identity is synced again at least this often

# Finds a local pod's host-side interface (interfaces.host_interface) for its IPs.
InterfaceFinder = Callable[[tuple[str, ...]], Awaitable[str]]


@dataclass
class KubeOptions:
    node_name: str
    cluster: str = "default"
    agent_port: int = 4244
    peer_address: str = ""          # this agent's announced address, if set explicitly
    install_crds: bool = True
    identity_gc_interval: float = 60.0
    identity_gc_grace: float = 900.0  # Cilium's identity-gc-interval default is 15 min
    interface_retry: float = 1.0
    sync_timeout: float = 60.0


class KubeSource:
    def __init__(self, client: KubeClient, opts: KubeOptions, registry: EndpointRegistry,
                 identities: CRDIdentityAllocator, policy: PolicyEngine | None,
                 services: ServiceMap, find_interface: InterfaceFinder,
                 on_node_ips: Callable[[set[str]], None] | None = None) -> None:
        self.client = client
        self.opts = opts
        self.registry = registry
        self.identities = identities
        self.policy = policy
        self.services = services
        self.find_interface = find_interface
        self.on_node_ips = on_node_ips
        self.pods: dict[str, dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.nodes: dict[str, NodeInfo] = {}
        self.slices_resource = SLICES_V1
        # pod key -> (uid, ips, host-side interface): looked up once per pod incarnation
        self._interfaces: dict[str, tuple[str, tuple[str, ...], str]] = {}
        # Pods to sync again (interface not there yet, identity not allocated):
        # pod key -> (next retry (monotonic), retries so far).
        self._retry: dict[str, tuple[float, int]] = {}
        self._rs_owner: dict[tuple[str, str], tuple[str, str]] = {}
        self._pod_locks: dict[str, asyncio.Lock] = {}
        self.informers: dict[str, Informer] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.identities.in_use = self.used_label_sets

    # -- start and stop -------------------------------------------------------------------
    async def start(self) -> None:
        """Checks the API server answers, starts every watch and waits (bounded) until
        the first lists are in, so the agent starts with the cluster's state."""
        version = await self._version()
        log.info("Kubernetes API server %s, version %s", self.client.server,
                 (version or {}).get("gitVersion", "?"))
        if not await self.client.served("discovery.k8s.io/v1", "endpointslices"):
            # Kubernetes before 1.21 serves EndpointSlices as v1beta1 only.
            self.slices_resource = SLICES_V1BETA1
        # In phases, each waited for (bounded): identities first (so pods find theirs in
        # the cache), then what endpoints are judged by (namespaces, nodes, Services,
        # policies: enforcement is in place before a pod's programs go on), then pods.
        self.informers["identities"] = await self.identities.start(self.client,
                                                                   self.opts.install_crds)
        await self._run_and_sync(["identities"])
        self._add(NAMESPACES, self._on_namespace)
        self._add(NODES, self._on_node)
        self._add(SERVICES, self._on_service)
        self._add(self.slices_resource, self._on_slice, "endpointslices")
        phase2 = ["namespaces", "nodes", "services", "endpointslices"]
        if self.policy is not None:
            feed = PolicyFeed(self.policy)
            for kind, res in POLICY_RESOURCES:
                if await self.client.served(res.group_version, res.plural):
                    self._add(res, feed.handler(kind, res), kind)
                    phase2.append(kind)
                else:  # e.g. Cilium's CRDs, installed later or never
                    self._spawn(self._when_served(res, feed.handler(kind, res), kind),
                                f"k8s-{kind}")
        await self._run_and_sync(phase2)
        self._add(PODS, self._on_pod)
        self.identities.gc_ready = self.informers["pods"].synced.is_set
        await self._run_and_sync(["pods"])
        self._spawn(self._retry_pods(), "k8s-pod-retry")
        self._spawn(self.identities.run_gc(self.opts.identity_gc_interval,
                                           self.opts.identity_gc_grace), "k8s-identity-gc")

    async def _run_and_sync(self, names: list[str]) -> None:
        infs = [self.informers[n] for n in names]
        for inf in infs:
            self._spawn(inf.run(), f"k8s-{inf.name}")
        try:
            await wait_for(asyncio.gather(*(i.synced.wait() for i in infs)),
                                   self.opts.sync_timeout)
        except asyncio.TimeoutError:
            log.warning("Kubernetes caches %s not synced after %.0fs; continuing, they will "
                        "catch up", ", ".join(names), self.opts.sync_timeout)

    async def _version(self) -> Any:
        """GET /version, retried for a while: an agent often starts alongside a
        control plane that is still coming up."""
        deadline = time.monotonic() + self.opts.sync_timeout
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                return await self.client.get("/version")
            except KubeError as e:
                if time.monotonic() >= deadline or e.status in (401, 403):
                    raise KubeError(e.status, f"Kubernetes API server {self.client.server} "
                                              f"does not answer: {e}") from None
                log.warning("Kubernetes API server %s: %s (retrying)", self.client.server, e)
            await backoff.sleep()

    def _add(self, res: Resource, handler, name: str = "") -> None:  # type: ignore[no-untyped-def]
        inf = Informer(self.client, res, handler, name or res.plural)
        self.informers[inf.name] = inf

    def _spawn(self, coro, name: str) -> None:  # type: ignore[no-untyped-def]
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def _when_served(self, res: Resource, handler, name: str) -> None:  # type: ignore[no-untyped-def]
        """Watches a kind once the API serves it (CRDs may be installed after the agent)."""
        backoff = Backoff(1.0, 30.0)
        while True:  # ends when served (then runs the informer) or when cancelled
            try:
                if await self.client.served(res.group_version, res.plural):
                    break
            except KubeError as e:
                log.warning("%s: discovery failed: %s", name, e)
            await backoff.sleep()
        inf = Informer(self.client, res, handler, name)
        self.informers[name] = inf
        await inf.run()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()

    # -- pods ---------------------------------------------------------------------------
    async def _on_pod(self, event: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        key = pod_key(obj)
        if event == DELETED:
            self.pods.pop(key, None)
        else:
            self.pods[key] = obj
        await self.sync_pod(key)

    async def sync_pod(self, key: str) -> None:
        """Makes the registry's endpoint for pod `key` match the pod (serialised per pod:
        identity allocation awaits the API server)."""
        lock = self._pod_locks.setdefault(key, asyncio.Lock())
        async with lock:
            await self._sync_pod(key)
            if key not in self.pods:
                self._pod_locks.pop(key, None)

    async def _sync_pod(self, key: str) -> None:
        pod = self.pods.get(key)
        ep = pod_endpoint(pod, self.opts.cluster, "", self._rs_owner) if pod else None
        if ep is None:
            self._retry.pop(key, None)
            self._interfaces.pop(key, None)
            await self.registry.remove(key)
            return
        assert pod is not None
        await self._resolve_owner(pod, ep)
        ep = pod_endpoint(pod, self.opts.cluster, "", self._rs_owner) or ep
        if ep.node == self.opts.node_name:
            uid = str((pod.get("metadata") or {}).get("uid", ""))
            known = self._interfaces.get(key)
            ifname = known[2] if known is not None and known[:2] == (uid, ep.ips) else ""
            if not ifname:
                ifname = await self.find_interface(ep.ips)
                if ifname:
                    self._interfaces[key] = (uid, ep.ips, ifname)
            if ifname:
                ep = replace(ep, interface=ifname)
        # Without an interface (the CNI still wiring it) the pod is known by name and
        # identity meanwhile, and attached once a retry finds it.
        missing = ep.node == self.opts.node_name and not ep.interface
        try:
            await self.identities.ensure(ep.security_labels())
        except (IdentityError, KubeError) as e:
            log.warning("pod %s: no identity yet (%s); will retry", key, e)
            self._retry_later(key)
            return
        await self.registry.upsert(ep)
        if missing:
            self._retry_later(key)
        else:
            self._retry.pop(key, None)

    def _retry_later(self, key: str) -> None:
        self._retry.setdefault(key, (time.monotonic() + self._retry_delay(0), 0))

    def _retry_delay(self, attempt: int) -> float:
        return backoff_delay(attempt, self.opts.interface_retry,
                             max(self.opts.interface_retry, MAX_POD_RETRY_S))

    async def _resolve_owner(self, pod: dict[str, Any], ep: Endpoint) -> None:
        """A ReplicaSet's own owner (its Deployment), read once per ReplicaSet."""
        refs = (pod.get("metadata") or {}).get("ownerReferences") or []
        rs = next((r for r in refs if isinstance(r, dict) and r.get("kind") == "ReplicaSet"), None)
        if rs is None or not rs.get("name"):
            return
        k = (ep.namespace, str(rs["name"]))
        if k in self._rs_owner:
            return
        try:
            obj = await self.client.get(f"/apis/apps/v1/namespaces/{k[0]}/replicasets/{k[1]}")
        except KubeError as e:
            log.debug("replicaset %s/%s: %s (naming the workload from the pod)", *k, e)
            return
        owners = [r for r in (obj.get("metadata") or {}).get("ownerReferences") or []
                  if isinstance(r, dict) and r.get("controller")]
        if len(self._rs_owner) > 50_000:  # bounded cache: start over
            self._rs_owner.clear()
        self._rs_owner[k] = ((str(owners[0].get("name")), str(owners[0].get("kind")))
                             if owners else (k[1], "ReplicaSet"))

    async def _retry_pods(self) -> None:
        """Pods whose interface did not exist yet, or whose identity could not be
        allocated, are synced again, less often the longer they wait (at most every 30 s)."""
        while True:  # ends when cancelled
            await asyncio.sleep(self.opts.interface_retry)
            now = time.monotonic()
            for key, (due, attempt) in list(self._retry.items()):
                if due > now:
                    continue
                attempt += 1
                self._retry[key] = (now + self._retry_delay(attempt), attempt)
                try:
                    await self.sync_pod(key)
                except Exception:
                    log.exception("pod %s: sync failed", key)

    def used_label_sets(self) -> set[tuple[str, ...]]:
        """The security label sets of every endpoint pod in the cluster (GC keeps them)."""
        out = set()
        for pod in list(self.pods.values()):
            ep = pod_endpoint(pod, self.opts.cluster, "", self._rs_owner)
            if ep is not None:
                out.add(tuple(sorted(set(ep.security_labels()))))
        return out

    # -- cluster objects ------------------------------------------------------------------
    async def _on_namespace(self, event: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        if event == DELETED:
            self.namespaces.pop(name, None)
        else:
            labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
            if self.namespaces.get(name) == labels:
                return
            self.namespaces[name] = labels
        self.registry.set_cluster(namespaces=self.namespaces)

    async def _on_node(self, event: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        name = str((obj.get("metadata") or {}).get("name", ""))
        info = None if event == DELETED else node_info(obj, self.opts.agent_port)
        if info is not None and name == self.opts.node_name and self.opts.peer_address:
            info = NodeInfo(info.name, info.ips, self.opts.peer_address)
        if info is None:
            if self.nodes.pop(name, None) is None:
                return
        elif self.nodes.get(name) == info:
            return
        else:
            self.nodes[name] = info
        self.registry.set_cluster(nodes=sorted(self.nodes.values(), key=lambda n: n.name))
        own = self.nodes.get(self.opts.node_name)
        if self.on_node_ips is not None and own is not None:
            self.on_node_ips(set(own.ips))

    async def _on_service(self, event: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if event == DELETED:
            self.services.delete_service(obj)
        else:
            self.services.set_service(obj)

    async def _on_slice(self, event: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if event == DELETED:
            self.services.delete_slice(obj)
        else:
            self.services.set_slice(obj)

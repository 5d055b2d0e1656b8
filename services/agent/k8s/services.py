"""Services on flows: which Kubernetes Service an address and port belong to.

A flow's source_service/destination_service (flow.Service {name, namespace}, Flow
fields 20 and 21) name the Service whose frontend (a ClusterIP and service port)
or whose backend (an EndpointSlice address and target port) the address and port
are. Frontends are seen where kube-proxy has not translated yet (a client pod's
veth); backends where the packet reaches the chosen pod (the server's veth).

EndpointSlices come from discovery.k8s.io/v1 on current clusters and from v1beta1
on those that do not serve v1 (Kubernetes 1.20); both have the same fields that
matter here (endpoints[].addresses, conditions.ready, ports, the
kubernetes.io/service-name label).
"""
from __future__ import annotations

import asyncio

import ipaddress
from typing import Any

from ..datapath.event import FlowEvent
from ..pipeline.flow_wire import SERVICE, F, ld, s

SOURCE_SERVICE, DESTINATION_SERVICE = F.source_service, F.destination_service
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}

Key = tuple[bytes, int, int]  # (16-byte address, port, IP protocol)


def packed16(ip: str) -> bytes | None:
    try:
        return ipaddress.ip_address(ip).packed.ljust(16, b"\0")
    except ValueError:
        return None


def _proto(raw: Any) -> int:
    return PROTOCOLS.get(str(raw or "TCP").upper(), 0)


def service_frontends(svc: dict[str, Any]) -> list[Key]:
    """(ClusterIP, port, protocol) of every cluster IP and port of a Service."""
    spec = svc.get("spec") or {}
    ips = list(spec.get("clusterIPs") or []) or [spec.get("clusterIP")]
    out = []
    for ip in ips:
        if not ip or ip == "None":
            continue
        packed = packed16(str(ip))
        if packed is None:
            continue
        for p in spec.get("ports") or []:
            if isinstance(p, dict) and isinstance(p.get("port"), int) and _proto(p.get("protocol")):
                out.append((packed, p["port"], _proto(p.get("protocol"))))
    return out


def slice_backends(es: dict[str, Any]) -> list[Key]:
    """(address, port, protocol) of every ready endpoint of an EndpointSlice."""
    ports = [(p["port"], _proto(p.get("protocol"))) for p in es.get("ports") or []
             if isinstance(p, dict) and isinstance(p.get("port"), int) and _proto(p.get("protocol"))]
    out = []
    for ep in es.get("endpoints") or []:
        if not isinstance(ep, dict):
            continue
        if (ep.get("conditions") or {}).get("ready") is False:
            continue
        for ip in ep.get("addresses") or []:
            packed = packed16(str(ip))
            if packed is not None:
                out.extend((packed, port, proto) for port, proto in ports)
    return out


def slice_service(es: dict[str, Any]) -> tuple[str, str] | None:
    meta = es.get("metadata") or {}
    name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return (str(name), str(meta.get("namespace") or "default")) if name else None


class ServiceMap:
    """Frontends and backends of the cluster's Services, kept by the Kubernetes
    watchers; `fields` is the encoder's hook."""

    def __init__(self) -> None:
        self._frontends: dict[str, list[Key]] = {}   # "ns/name" -> keys
        self._backends: dict[str, tuple[tuple[str, str], list[Key]]] = {}  # "ns/slice"
        self._by_key: dict[Key, tuple[str, str]] = {}
        self._wire: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self._rebuild_scheduled = False

    def set_service(self, svc: dict[str, Any]) -> None:
        meta = svc.get("metadata") or {}
        self._frontends[f"{meta.get('namespace') or 'default'}/{meta.get('name')}"] = \
            service_frontends(svc)
        self._rebuild()

    def delete_service(self, svc: dict[str, Any]) -> None:
        meta = svc.get("metadata") or {}
        self._frontends.pop(f"{meta.get('namespace') or 'default'}/{meta.get('name')}", None)
        self._rebuild()

    def set_slice(self, es: dict[str, Any]) -> None:
        meta = es.get("metadata") or {}
        key = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
        svc = slice_service(es)
        if svc is None:
            self._backends.pop(key, None)
        else:
            self._backends[key] = (svc, slice_backends(es))
        self._rebuild()

    def delete_slice(self, es: dict[str, Any]) -> None:
        meta = es.get("metadata") or {}
        self._backends.pop(f"{meta.get('namespace') or 'default'}/{meta.get('name')}", None)
        self._rebuild()

    def _rebuild(self) -> None:
        """Once per loop turn, however many events came in it (a relist of N objects
        is one rebuild, not N); immediately when no loop runs."""
        if self._rebuild_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._rebuild_now()
            return
        self._rebuild_scheduled = True
        loop.call_soon(self._rebuild_now)

    def _rebuild_now(self) -> None:
        # Rebuilt whole: Services change rarely and a copy keeps lookups lock-free
        # for readers on other threads. Frontends win over backends, and a sorted
        # order makes the choice stable when an address backs two Services.
        self._rebuild_scheduled = False
        table: dict[Key, tuple[str, str]] = {}
        for svc, keys in sorted(self._backends.values()):
            for k in keys:
                table.setdefault(k, svc)
        for ref, keys in sorted(self._frontends.items()):
            ns, name = ref.split("/", 1)
            for k in keys:
                table[k] = (name, ns)
        self._by_key = table
        live = set(table.values())
        for svc in [w for w in list(self._wire) if w not in live]:  # list(): one C-level copy
            self._wire.pop(svc, None)  # encodings of Services gone

    def lookup(self, ip: str, port: int, proto: int = 6) -> tuple[str, str] | None:
        """(name, namespace) of the Service of an address and port, or None."""
        packed = packed16(ip)
        return self._by_key.get((packed, port, proto)) if packed else None

    def _encoded(self, svc: tuple[str, str]) -> tuple[bytes, bytes]:
        w = self._wire.get(svc)
        if w is None:
            body = s(SERVICE.name, svc[0]) + s(SERVICE.namespace, svc[1])
            w = self._wire[svc] = (ld(SOURCE_SERVICE, body), ld(DESTINATION_SERVICE, body))
        return w

    def fields(self, ev: FlowEvent) -> bytes:
        """Flow fields 20 and 21 for a datapath event (b"" when no Service matches)."""
        table = self._by_key
        if not table:
            return b""
        out = b""
        src = table.get((ev.saddr, ev.sport, ev.proto))
        if src is not None:
            out += self._encoded(src)[0]
        dst = table.get((ev.daddr, ev.dport, ev.proto))
        if dst is not None:
            out += self._encoded(dst)[1]
        return out

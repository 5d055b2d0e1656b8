"""Which service card an endpoint belongs to.

Like Hubble UI, a card is an application in a namespace: pods that share the
``app`` label (or ``k8s-app``, ``app.kubernetes.io/name``) are one service,
whatever their version, node or identity (reviews v1, v2 and v3 are one card).
Pods without such a label fall back to their workload, then to their pod name.
Endpoints outside the cluster get a card per reserved identity (world, host,
remote-node, kube-apiserver, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webb.labels import SOURCE_RESERVED, SOURCE_UNSPEC, parse_label

from .query import RESERVED_IDENTITIES

APP_LABEL_KEYS = ("app", "k8s-app", "app.kubernetes.io/name", "name")
RESERVED_NAMES = {v: k for k, v in RESERVED_IDENTITIES.items()}
# labels every pod has that say nothing to a user looking at a card
HIDDEN_LABEL_PREFIXES = ("io.cilium.k8s.policy.", "io.kubernetes.pod.namespace",
                         "io.cilium.k8s.namespace.labels.", "pod-template-hash")
NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"


@dataclass(frozen=True, slots=True)
class ServiceId:
    key: str        # unique: "bookinfo/reviews", "reserved:world"
    kind: str       # service | world | host | reserved | unknown
    name: str       # what the card says: "reviews", "world"
    namespace: str
    term: str       # filter term that selects the card's flows (direction either)


def visible_labels(labels: Any) -> list[tuple[str, str]]:
    """(key, value) pairs a card shows, without the bookkeeping ones."""
    out = []
    for lab in labels:
        source, key, value = parse_label(lab)
        if source == SOURCE_RESERVED or key.startswith(HIDDEN_LABEL_PREFIXES):
            continue
        out.append((key, value))
    return out


def _reserved(name: str) -> ServiceId:
    kind = name if name in ("world", "host") else "reserved"
    ident = RESERVED_IDENTITIES.get(name)
    term = f"identity={ident}" if ident is not None else f"label=reserved:{name}"
    return ServiceId(f"reserved:{name}", kind, name, "", term)


def identify(ep: Any) -> ServiceId:
    """The card of a flow.Endpoint."""
    labels = ep.labels
    ns = ep.namespace
    for lab in labels:
        source, name, _ = parse_label(lab)
        if source == SOURCE_RESERVED:
            if name.startswith("world"):
                name = "world"
            if not ep.pod_name:
                return _reserved(name)
    app_key = ""
    app = ""
    for want in APP_LABEL_KEYS:
        for lab in labels:
            source, key, value = parse_label(lab)
            if key == want and value:
                app_key, app = (key if source == SOURCE_UNSPEC else f"{source}:{key}"), value
                break
        if app:
            break
    if app:
        sel = f"{app_key}={app}"
        if ns:
            sel += f",{NAMESPACE_LABEL}={ns}"
        return ServiceId(f"{ns}/{app}", "service", app, ns, f"label={sel}")
    if ep.workloads:
        w = ep.workloads[0].name
        return ServiceId(f"{ns}/{w}", "service", w, ns, f"pod={ns or 'default'}/{w}")
    if ep.pod_name:
        return ServiceId(f"{ns}/{ep.pod_name}", "service", ep.pod_name, ns,
                         f"pod={ns or 'default'}/{ep.pod_name}")
    ident = ep.identity
    if ident in RESERVED_NAMES:
        return _reserved(RESERVED_NAMES[ident])
    if ident:
        return ServiceId(f"identity:{ident}", "unknown", f"identity {ident}", ns, f"identity={ident}")
    return ServiceId("unknown", "unknown", "unknown", "", "identity=0")


class ServiceCache:
    """identify() memoised per (identity, namespace, pod): the per-flow cost is one
    dict lookup. Bounded: cleared when it grows past ``limit`` entries."""

    def __init__(self, limit: int = 20000) -> None:
        self.limit = limit
        self._cache: dict[tuple, ServiceId] = {}

    def __call__(self, ep: Any) -> ServiceId:
        k = (ep.identity, ep.namespace, ep.pod_name)
        sid = self._cache.get(k)
        if sid is None:
            sid = identify(ep)
            if len(self._cache) >= self.limit:
                self._cache.clear()
            self._cache[k] = sid
        return sid

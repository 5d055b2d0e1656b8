"""Context options: which labels say who sent and who received a flow.

Hubble's syntax and values:

  sourceContext / destinationContext            identifier{|identifier}   -> label "source" / "destination"
  source{Egress,Ingress}Context, destination{Egress,Ingress}Context        (override by traffic direction)
  labelsContext                                 label{,label}             -> one label each

An identifier list is a fallback chain: the first non-empty value wins
(``dns|ip`` = the DNS name, else the IP).

Each series can also be *bound* to the endpoints it names one pod or one address
of (``pod``, ``pod-name``, ``ip``; ``source_pod``, ``source_ip``...): the series
garbage collector removes it once those endpoints are gone (see series_gc).
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

from webb.api.flow import flow_pb2 as fpb

from .errors import ConfigError

IDENTIFIERS = ("identity", "namespace", "pod", "pod-short", "pod-name", "dns", "ip",
               "reserved-identity", "workload", "workload-name", "app")

# labelsContext labels, in the order they appear on a metric (Hubble's order).
LABELS = ("source_ip", "source_pod", "source_namespace", "source_workload",
          "source_workload_kind", "source_app",
          "destination_ip", "destination_pod", "destination_namespace", "destination_workload",
          "destination_workload_kind", "destination_app", "traffic_direction")

# option key (lower case) -> (side, direction); direction None = both.
CONTEXT_KEYS = {
    "sourcecontext": ("source", None),
    "sourceegresscontext": ("source", fpb.EGRESS),
    "sourceingresscontext": ("source", fpb.INGRESS),
    "destinationcontext": ("destination", None),
    "destinationegresscontext": ("destination", fpb.EGRESS),
    "destinationingresscontext": ("destination", fpb.INGRESS),
}
LABELS_KEY = "labelscontext"
OPTION_KEYS = frozenset(CONTEXT_KEYS) | {LABELS_KEY}
# How the options are spelled in documentation and messages.
OPTION_NAMES = {"sourcecontext": "sourceContext", "sourceegresscontext": "sourceEgressContext",
                "sourceingresscontext": "sourceIngressContext",
                "destinationcontext": "destinationContext",
                "destinationegresscontext": "destinationEgressContext",
                "destinationingresscontext": "destinationIngressContext",
                "labelscontext": "labelsContext"}

# Identifiers / labels whose value names one pod (or one address): series carrying
# them are bound to that endpoint for garbage collection.
_PER_ENDPOINT_IDS = frozenset({"pod", "pod-name", "ip"})
_PER_ENDPOINT_LABELS = {"source": ("source_pod", "source_ip"),
                        "destination": ("destination_pod", "destination_ip")}

_SHORT_POD = re.compile(r"^(.+?)(-[a-z0-9]+){1,2}$")
_APP_LABELS = ("k8s:app.kubernetes.io/name=", "k8s:k8s-app=", "k8s:app=")
KUBE_APISERVER = "reserved:kube-apiserver"

_DIRECTIONS = {fpb.INGRESS: "ingress", fpb.EGRESS: "egress"}


# Identifiers and labels that vary per flow rather than per endpoint (addresses, DNS
# names): contexts using them are computed for every flow.
_PER_FLOW_IDS = frozenset({"ip", "dns"})
_PER_FLOW_LABELS = frozenset({"source_ip", "destination_ip"})
CONTEXT_CACHE_SIZE = 50_000


def short_pod_name(name: str) -> str:
    """``reviews-v1-5d8f7b9c4-x2x7z`` -> ``reviews-v1``: strips up to two hash suffixes."""
    return _SHORT_POD.sub(r"\1", name)


def app_of(labels) -> str:
    """The pod's app name: the first of app.kubernetes.io/name, k8s-app, app among its labels."""
    for label in labels:
        for prefix in _APP_LABELS:
            if label.startswith(prefix):
                value = label[len(prefix):]
                if value:
                    return value
    return ""


def reserved_identity(labels) -> str:
    if KUBE_APISERVER in labels:
        return KUBE_APISERVER
    for label in labels:
        if label.startswith("reserved:"):
            return label
    return ""


def workload_name(ep: fpb.Endpoint) -> str:
    ws = ep.workloads
    return ws[0].name if ws else ""


def workload_kind(ep: fpb.Endpoint) -> str:
    ws = ep.workloads
    return ws[0].kind if ws else ""


def traffic_direction(flow: fpb.Flow) -> str:
    return _DIRECTIONS.get(flow.traffic_direction, "unknown")


def _with_namespace(ns: str, name: str) -> str:
    return f"{ns}/{name}" if ns else name


def _pod(ep: fpb.Endpoint) -> str:
    return _with_namespace(ep.namespace, ep.pod_name)


def _workload(ep: fpb.Endpoint) -> str:
    name = workload_name(ep)
    return _with_namespace(ep.namespace, name) if name else ""


# identifier -> f(endpoint, its address, flow, is_source) -> value
_IDENT: dict[str, Callable[[fpb.Endpoint, str, fpb.Flow, bool], str]] = {
    "namespace": lambda ep, ip, f, s: ep.namespace,
    "identity": lambda ep, ip, f, s: ",".join(ep.labels),
    "pod": lambda ep, ip, f, s: _pod(ep),
    "pod-short": lambda ep, ip, f, s: _with_namespace(ep.namespace, short_pod_name(ep.pod_name)),
    "pod-name": lambda ep, ip, f, s: ep.pod_name,
    "dns": lambda ep, ip, f, s: ",".join(f.source_names if s else f.destination_names),
    "ip": lambda ep, ip, f, s: ip,
    "reserved-identity": lambda ep, ip, f, s: reserved_identity(ep.labels),
    "workload": lambda ep, ip, f, s: _workload(ep),
    "workload-name": lambda ep, ip, f, s: workload_name(ep),
    "app": lambda ep, ip, f, s: app_of(ep.labels),
}

# labelsContext label -> f(src endpoint, dst endpoint, src ip, dst ip, flow) -> value
_LABEL: dict[str, Callable[..., str]] = {
    "source_ip": lambda s, d, sip, dip, f: sip,
    "source_pod": lambda s, d, sip, dip, f: s.pod_name,
    "source_namespace": lambda s, d, sip, dip, f: s.namespace,
    "source_workload": lambda s, d, sip, dip, f: workload_name(s),
    "source_workload_kind": lambda s, d, sip, dip, f: workload_kind(s),
    "source_app": lambda s, d, sip, dip, f: app_of(s.labels),
    "destination_ip": lambda s, d, sip, dip, f: dip,
    "destination_pod": lambda s, d, sip, dip, f: d.pod_name,
    "destination_namespace": lambda s, d, sip, dip, f: d.namespace,
    "destination_workload": lambda s, d, sip, dip, f: workload_name(d),
    "destination_workload_kind": lambda s, d, sip, dip, f: workload_kind(d),
    "destination_app": lambda s, d, sip, dip, f: app_of(d.labels),
    "traffic_direction": lambda s, d, sip, dip, f: traffic_direction(f),
}


def endpoint_key(ep: fpb.Endpoint, ip: str) -> str:
    """What a series is bound to: the pod when there is one, else the address."""
    if ep.pod_name:
        return f"pod:{ep.namespace}/{ep.pod_name}"
    return f"ip:{ip}" if ip else ""


def pod_key(namespace: str, pod: str) -> str:
    return f"pod:{namespace}/{pod}"


def _parse_identifiers(key: str, value: str) -> tuple[str, ...]:
    out = []
    for ident in value.split("|"):
        ident = ident.strip().lower()
        if ident not in _IDENT:
            raise ConfigError(f"unknown context '{ident}' in {key} "
                              f"(one of: {', '.join(IDENTIFIERS)})")
        out.append(ident)
    return tuple(out)


def _parse_labels(value: str) -> tuple[str, ...]:
    wanted = set()
    for label in value.split(","):
        label = label.strip()
        if label not in _LABEL:
            raise ConfigError(f"invalid labelsContext value: {label!r} "
                              f"(one of: {', '.join(LABELS)})")
        wanted.add(label)
    return tuple(label for label in LABELS if label in wanted)


class ContextOptions:
    """The context part of one metric's options; label names and per-flow values."""

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        # side -> {direction or None: identifiers}
        self.chains: dict[str, dict[int | None, tuple[str, ...]]] = {"source": {}, "destination": {}}
        self.labels: tuple[str, ...] = ()
        for key, value in (options or {}).items():
            k = key.lower()
            if k in CONTEXT_KEYS:
                side, direction = CONTEXT_KEYS[k]
                self.chains[side][direction] = _parse_identifiers(key, value)
            elif k == LABELS_KEY:
                self.labels = _parse_labels(value)
        self._label_fns = [_LABEL[label] for label in self.labels]
        self.has_source = bool(self.chains["source"])
        self.has_destination = bool(self.chains["destination"])
        self.enabled = bool(self.labels) or self.has_source or self.has_destination
        # Which labelsContext sides name a single endpoint, and whether a context chain
        # can (binding series to endpoints, for garbage collection).
        self._label_binds = {side: any(label in self.labels for label in _PER_ENDPOINT_LABELS[side])
                             for side in ("source", "destination")}
        self._chain_may_bind = any(_PER_ENDPOINT_IDS & set(ids)
                                   for chains in self.chains.values() for ids in chains.values())
        self.binds = any(self._label_binds.values()) or self._chain_may_bind
        self._memo: dict[bool, tuple[object, tuple[str, ...], tuple[str, ...]]] = {}
        # Most contexts name endpoints by what (identity, namespace, pod) determines:
        # then the labels of a pair of endpoints are computed once, not once per flow.
        used = {i for chains in self.chains.values() for ids in chains.values() for i in ids}
        # (a pod label binds a series to the address of an endpoint without a pod: per flow)
        self._by_endpoints = (not (used & _PER_FLOW_IDS) and not (set(self.labels) & _PER_FLOW_LABELS)
                              and not any(self._label_binds.values()))
        self._directional = (any(d is not None for chains in self.chains.values() for d in chains)
                             or "traffic_direction" in self.labels)
        self._cache: dict[tuple, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def label_names(self) -> list[str]:
        names = list(self.labels)
        if self.has_source:
            names.append("source")
        if self.has_destination:
            names.append("destination")
        return names

    def status(self) -> str:
        parts = []
        if self.labels:
            parts.append("labels=" + ",".join(self.labels))
        for side in ("source", "destination"):
            for direction, ids in self.chains[side].items():
                suffix = {None: "", fpb.EGRESS: "Egress", fpb.INGRESS: "Ingress"}[direction]
                parts.append(f"{side}{suffix}=" + "|".join(ids))
        return ",".join(sorted(parts))

    def _chain_value(self, side: str, ep: fpb.Endpoint, ip: str, flow: fpb.Flow) -> tuple[str, str]:
        """(value, identifier that gave it) of the first non-empty identifier."""
        chains = self.chains[side]
        ids = chains.get(flow.traffic_direction) or chains.get(None, ())
        is_source = side == "source"
        for ident in ids:
            value = _IDENT[ident](ep, ip, flow, is_source)
            if value:
                return value, ident
        return "", ""

    def _compute(self, flow: fpb.Flow, invert: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
        src, dst = flow.source, flow.destination
        ip = flow.IP
        sip, dip = ip.source, ip.destination
        values: list[str] = []
        if self._label_fns:
            if invert:
                values = [fn(dst, src, dip, sip, flow) for fn in self._label_fns]
            else:
                values = [fn(src, dst, sip, dip, flow) for fn in self._label_fns]
        s_ident = d_ident = ""
        if self.has_source or self.has_destination:
            s, s_ident = self._chain_value("source", src, sip, flow) if self.has_source else ("", "")
            d, d_ident = (self._chain_value("destination", dst, dip, flow) if self.has_destination
                          else ("", ""))
            if invert:
                s, d = d, s
            if self.has_source:
                values.append(s)
            if self.has_destination:
                values.append(d)
        if not self.binds:
            return tuple(values), ()
        # The endpoints whose own pod or address a label shows. Chains are evaluated on
        # the flow's own sides; labelsContext's "source" shows the destination when inverted.
        shown_src, shown_dst = ((dst, dip), (src, sip)) if invert else ((src, sip), (dst, dip))
        keys: list[str] = []
        for bound, (ep, addr) in ((self._label_binds["source"], shown_src),
                                  (self._label_binds["destination"], shown_dst),
                                  (s_ident in _PER_ENDPOINT_IDS, (src, sip)),
                                  (d_ident in _PER_ENDPOINT_IDS, (dst, dip))):
            if bound:
                k = endpoint_key(ep, addr)
                if k and k not in keys:
                    keys.append(k)
        return tuple(values), tuple(keys)

    def values(self, flow: fpb.Flow, invert: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(label values in label_names() order, endpoint keys the series is bound to).

        Remembered for the flow last asked about, so handlers sharing these options
        compute them once per flow. ``invert`` swaps source and destination (for
        metrics counted on reply flows, like httpV2).
        """
        memo = self._memo.get(invert)
        if memo is not None and memo[0] is flow:
            return memo[1], memo[2]
        if not self.enabled:
            result: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        elif self._by_endpoints:
            s, d = flow.source, flow.destination
            key = (s.identity, s.namespace, s.pod_name, d.identity, d.namespace, d.pod_name,
                   flow.traffic_direction if self._directional else 0, invert)
            cache = self._cache
            result = cache.get(key)  # type: ignore[assignment]
            if result is None:
                result = self._compute(flow, invert)
                if len(cache) >= CONTEXT_CACHE_SIZE:
                    cache.clear()  # bounded; refills with the pairs still talking
                cache[key] = result
        else:
            result = self._compute(flow, invert)
        self._memo[invert] = (flow, result[0], result[1])
        return result

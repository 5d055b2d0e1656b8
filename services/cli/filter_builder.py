"""Filter flags of `webb observe` -> the whitelist and blacklist of a GetFlowsRequest,
with Hubble's semantics (hubble observe --print-raw-filters shows the same):

- Each FlowFilter side is built twice, "left" and "right": flags naming both ends
  (--pod, --ip, --label, --port, --identity, --service, --workload, --fqdn,
  --cluster, --namespace) set the source field on the left and the destination
  field on the right; every other flag goes to both. Left and right are OR'ed;
  equal ones collapse into one.
- Repeating a flag ORs its values; different flags AND.
- --not sends the next filter flag to the blacklist instead.
- Namespaces are applied last, onto the pod and service filters of their side
  (a bare pod "foo" becomes "ns/foo"; no pod or service filter becomes "ns/").
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from webb.api.flow import flow_pb2 as fpb

from . import datapath_names as names


class FilterFlagError(ValueError):
    pass


# Flags that may not be combined within one list (Hubble's conflict groups).
CONFLICTS = [
    ["from-fqdn", "from-ip", "ip", "fqdn", "from-namespace", "namespace", "from-all-namespaces", "all-namespaces"],
    ["from-fqdn", "from-ip", "ip", "fqdn", "from-pod", "pod"],
    ["to-fqdn", "to-ip", "ip", "fqdn", "to-namespace", "namespace", "to-all-namespaces", "all-namespaces"],
    ["to-fqdn", "to-ip", "ip", "fqdn", "to-pod", "pod"],
    ["to-pod", "namespace", "all-namespaces"],
    ["from-pod", "namespace", "all-namespaces"],
    ["to-service", "namespace", "all-namespaces"],
    ["from-service", "namespace", "all-namespaces"],
    ["snat-ip"],
    ["label", "from-label"],
    ["label", "to-label"],
    ["service", "from-service"],
    ["service", "to-service"],
    ["verdict"], ["drop-reason-desc"], ["type"], ["http-status"], ["http-method"],
    ["http-path"], ["http-url"], ["http-header"], ["protocol"],
    ["port", "to-port"],
    ["port", "from-port"],
    ["identity", "to-identity"],
    ["identity", "from-identity"],
    ["workload", "to-workload"],
    ["workload", "from-workload"],
    ["node-label"], ["tcp-flags"], ["uuid"], ["traffic-direction"], ["cel-expression"],
    ["encrypted", "unencrypted"],
]

# Flags whose value goes to the source field on the left, destination on the right.
_BOTH_ENDS = {
    "fqdn": ("source_fqdn", "destination_fqdn"),
    "pod": ("source_pod", "destination_pod"),
    "ip": ("source_ip", "destination_ip"),
    "label": ("source_label", "destination_label"),
    "service": ("source_service", "destination_service"),
    "port": ("source_port", "destination_port"),
    "cluster": ("source_cluster_name", "destination_cluster_name"),
}
# Flags that set one field (the same on left and right).
_ONE_FIELD = {
    "uuid": "uuid", "from-fqdn": "source_fqdn", "to-fqdn": "destination_fqdn",
    "from-pod": "source_pod", "to-pod": "destination_pod",
    "from-ip": "source_ip", "to-ip": "destination_ip", "snat-ip": "source_ip_xlated",
    "from-label": "source_label", "to-label": "destination_label",
    "from-service": "source_service", "to-service": "destination_service",
    "from-port": "source_port", "to-port": "destination_port",
    "trace-id": "trace_id", "http-status": "http_status_code", "http-method": "http_method",
    "http-path": "http_path", "http-url": "http_url", "protocol": "protocol",
    "node-name": "node_name", "node-label": "node_labels",
    "from-cluster": "source_cluster_name", "to-cluster": "destination_cluster_name",
}

_TCP_FLAGS = ("SYN", "FIN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


def parse_tcp_flags(val: str) -> fpb.TCPFlags:
    flags = fpb.TCPFlags()
    for part in val.split(","):
        up = part.upper()
        if up not in _TCP_FLAGS:
            raise FilterFlagError(f"unknown tcp flag: {part}")
        setattr(flags, up, True)
    return flags


def ip_version(val: str) -> int:
    v = val.lower()
    if v in ("4", "v4", "ipv4", "ip4"):
        return fpb.IPv4
    if v in ("6", "v6", "ipv6", "ip6"):
        return fpb.IPv6
    return fpb.IP_NOT_USED


def goquote(s: str) -> str:
    """Go's %q for the plain strings flags carry."""
    return json.dumps(s, ensure_ascii=False)


def _parse_uint32(text: str, what: str, kind: str) -> int:
    if not text.isdigit() or int(text) >= 2**32:
        raise FilterFlagError(
            f"unable to parse {what} '{text}', not a known {kind} name and unable to parse as "
            f"numeric value: strconv.ParseUint: parsing {goquote(text)}: invalid syntax")
    n = int(text)
    return n if n < 2**31 else n - 2**32  # int32 on the wire, as Go's int32() conversion


def parse_event_type(val: str) -> fpb.EventTypeFilter:
    """TYPE[:SUBTYPE]: a type name ("trace") or number, then for trace an observation point
    ("to-endpoint"), for agent an agent event name, or a number."""
    typ, has_sub, sub = val.partition(":")
    f = fpb.EventTypeFilter()
    known = names.MESSAGE_TYPE_NAMES.get(typ, 0)  # 0 for numeric types, as upstream
    f.type = known if typ in names.MESSAGE_TYPE_NAMES else _parse_uint32(typ, "type", "type")
    if has_sub:
        if known == names.TRACE:
            for k, v in names.TRACE_OBSERVATION_POINTS.items():
                if v == sub:
                    f.match_sub_type, f.sub_type = True, k
                    break
        elif known == names.AGENT and sub in names.AGENT_EVENT_SUBTYPES:
            f.match_sub_type, f.sub_type = True, names.AGENT_EVENT_SUBTYPES[sub]
        if not f.match_sub_type:
            f.match_sub_type, f.sub_type = True, _parse_uint32(sub, "event sub-type", "sub-type")
    return f


def parse_workload(val: str) -> fpb.Workload:
    """"kind/name" or "name" (Hubble's parseWorkload)."""
    kind, sep, name = val.partition("/")
    if not sep:
        return fpb.Workload(name=val)
    return fpb.Workload(kind=kind, name=name)


def _namespace_of(name: str) -> str:
    parts = name.split("/")
    return parts[0] if len(parts) > 1 else ""


def _add_namespaces(values: list[str], namespaces: list[str]) -> list[str]:
    if not namespaces or not values:
        return list(values)
    out = []
    for v in values:
        if "/" in v:
            out.append(v)
            continue
        out.extend(f"{ns}/{v}" for ns in namespaces)
    return out


def _apply_src(namespaces: list[str], ff: fpb.FlowFilter) -> None:
    if not ff.source_pod and not ff.source_service:
        ff.source_pod.append("")
    pods = _add_namespaces(list(ff.source_pod), namespaces)
    svcs = _add_namespaces(list(ff.source_service), namespaces)
    del ff.source_pod[:]
    ff.source_pod.extend(pods)
    del ff.source_service[:]
    ff.source_service.extend(svcs)


def _apply_dst(namespaces: list[str], ff: fpb.FlowFilter) -> None:
    if not ff.destination_pod and not ff.destination_service:
        ff.destination_pod.append("")
    pods = _add_namespaces(list(ff.destination_pod), namespaces)
    svcs = _add_namespaces(list(ff.destination_service), namespaces)
    del ff.destination_pod[:]
    ff.destination_pod.extend(pods)
    del ff.destination_service[:]
    ff.destination_service.extend(svcs)


def _ns_conflicts(namespaces: list[str], values) -> None:
    for ns in namespaces:
        for name in values:
            nn = _namespace_of(name)
            if nn and nn != ns:
                raise FilterFlagError(
                    f"namespace conflict: {goquote(ns)} does not contain {goquote(name)}")


def _inconsistent(pods, services) -> None:
    for pod in pods:
        pod_ns = _namespace_of(pod)
        if not pod_ns:
            continue
        for svc in services:
            if _namespace_of(svc) != pod_ns:
                raise FilterFlagError(f"namespace of service {goquote(svc)} conflict with pod "
                                      f"{goquote(pod_ns)}")


@dataclass
class FilterTracker:
    """One list (whitelist or blacklist) under construction."""

    left: fpb.FlowFilter | None = None
    right: fpb.FlowFilter | None = None
    ns: list[str] = field(default_factory=list)
    src_ns: list[str] = field(default_factory=list)
    dst_ns: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def _left(self) -> fpb.FlowFilter:
        if self.left is None:
            self.left = fpb.FlowFilter()
        return self.left

    def _right(self) -> fpb.FlowFilter:
        if self.right is None:
            self.right = fpb.FlowFilter()
        return self.right

    def both(self):
        return (self._left(), self._right())

    def check_namespaces(self) -> None:
        for ff in (self.left, self.right):
            if ff is None:
                continue
            for nss in (self.ns, self.src_ns):
                _ns_conflicts(nss, ff.source_pod)
                _ns_conflicts(nss, ff.source_service)
            for nss in (self.ns, self.dst_ns):
                _ns_conflicts(nss, ff.destination_pod)
                _ns_conflicts(nss, ff.destination_service)
            _inconsistent(ff.source_pod, ff.source_service)
            _inconsistent(ff.destination_pod, ff.destination_service)

    def flow_filters(self) -> list[fpb.FlowFilter]:
        if self.left is None and self.right is None and not (self.ns or self.src_ns or self.dst_ns):
            return []
        left, right = fpb.FlowFilter(), fpb.FlowFilter()
        if self.left is not None:
            left.CopyFrom(self.left)
        if self.right is not None:
            right.CopyFrom(self.right)
        if self.dst_ns:
            _apply_dst(self.dst_ns, left)
            _apply_dst(self.dst_ns, right)
        if self.src_ns:
            _apply_src(self.src_ns, left)
            _apply_src(self.src_ns, right)
        if self.ns:
            _apply_src(self.ns, left)
            _apply_dst(self.ns, right)
        if left == right:
            return [left]
        return [left, right]


class FilterBuilder:
    """Receives filter flags in command-line order (set(name, value))."""

    def __init__(self) -> None:
        self.whitelist: FilterTracker | None = None
        self.blacklist: FilterTracker | None = None
        self.blacklisting = False

    def set(self, name: str, val: str) -> None:
        if name == "not":
            if self.blacklisting:
                raise FilterFlagError("consecutive --not statements")
            self.blacklisting = True
            return
        if self.blacklisting:
            self.blacklisting = False
            if self.blacklist is None:
                self.blacklist = FilterTracker()
            self._set(self.blacklist, name, val)
            return
        if self.whitelist is None:
            self.whitelist = FilterTracker()
        self._set(self.whitelist, name, val)

    def finish(self) -> tuple[list[fpb.FlowFilter], list[fpb.FlowFilter]]:
        if self.blacklisting:
            raise FilterFlagError("trailing --not found in the arguments")
        wl = self.whitelist.flow_filters() if self.whitelist else []
        bl = self.blacklist.flow_filters() if self.blacklist else []
        return wl, bl

    @staticmethod
    def _check_conflicts(t: FilterTracker) -> None:
        for group in CONFLICTS:
            for flag in group:
                if flag in t.changed:
                    for other in group:
                        if other != flag and other in t.changed:
                            raise FilterFlagError(f"filters --{flag} and --{other} cannot be combined")

    def _set(self, t: FilterTracker, name: str, val: str) -> None:
        if name not in t.changed:
            t.changed.append(name)
        self._check_conflicts(t)
        left, right = t.both() if name not in ("namespace", "from-namespace", "to-namespace",
                                                "all-namespaces", "from-all-namespaces",
                                                "to-all-namespaces") else (None, None)

        def each(fn) -> None:
            fn(left)
            fn(right)

        if name in _BOTH_ENDS:
            src, dst = _BOTH_ENDS[name]
            getattr(left, src).append(val)
            getattr(right, dst).append(val)
        elif name in _ONE_FIELD:
            fld = _ONE_FIELD[name]
            each(lambda f: getattr(f, fld).append(val))
        elif name == "namespace":
            t.ns.append(val)
        elif name == "from-namespace":
            t.src_ns.append(val)
        elif name == "to-namespace":
            t.dst_ns.append(val)
        elif name == "all-namespaces":
            t.ns.append("")
        elif name == "from-all-namespaces":
            t.src_ns.append("")
        elif name == "to-all-namespaces":
            t.dst_ns.append("")
        elif name == "ipv4":
            each(lambda f: f.ip_version.append(fpb.IPv4))
        elif name == "ipv6":
            each(lambda f: f.ip_version.append(fpb.IPv6))
        elif name == "ip-version":
            v = ip_version(val)
            each(lambda f: f.ip_version.append(v))
        elif name == "ip-trace-id":
            if val == "0":
                raise FilterFlagError("invalid --ip-trace-id value; must be greater than 0")
            if not val.isdigit() or int(val) >= 2**64:
                raise FilterFlagError(f"invalid --ip-trace-id value: strconv.ParseUint: "
                                      f"parsing {goquote(val)}: invalid syntax")
            each(lambda f: f.ip_trace_id.append(int(val)))
        elif name == "verdict":
            if val not in fpb.Verdict.keys():
                raise FilterFlagError(f"invalid --verdict value: {val}")
            v = fpb.Verdict.Value(val)
            each(lambda f: f.verdict.append(v))
        elif name == "drop-reason-desc":
            if val == "":
                raise FilterFlagError("empty --drop-reason-desc value")
            if val not in fpb.DropReason.keys():
                raise FilterFlagError(f"invalid --drop-reason-desc value: {val}")
            v = fpb.DropReason.Value(val)
            each(lambda f: f.drop_reason_desc.append(v))
        elif name == "http-header":
            key, sep, hval = val.partition(":")
            if not sep:
                raise FilterFlagError(f"invalid http-header value {goquote(val)}, expected name:value")
            each(lambda f: f.http_header.append(fpb.HTTPHeader(key=key, value=hval)))
        elif name == "type":
            et = parse_event_type(val)
            each(lambda f: f.event_type.append(et))
        elif name in ("workload", "from-workload", "to-workload"):
            w = parse_workload(val)
            if name == "workload":
                left.source_workload.append(w)
                right.destination_workload.append(w)
            else:
                fld = "source_workload" if name == "from-workload" else "destination_workload"
                each(lambda f: getattr(f, fld).append(w))
        elif name in ("identity", "from-identity", "to-identity"):
            try:
                ident = names.parse_identity(val)
            except ValueError as e:
                raise FilterFlagError(str(e)) from None
            if name == "identity":
                left.source_identity.append(ident)
                right.destination_identity.append(ident)
            else:
                fld = "source_identity" if name == "from-identity" else "destination_identity"
                each(lambda f: getattr(f, fld).append(ident))
        elif name == "tcp-flags":
            flags = parse_tcp_flags(val)
            each(lambda f: f.tcp_flags.append(flags))
        elif name == "traffic-direction":
            td = val.lower()
            if td == "ingress":
                each(lambda f: f.traffic_direction.append(fpb.INGRESS))
            elif td == "egress":
                each(lambda f: f.traffic_direction.append(fpb.EGRESS))
            else:
                raise FilterFlagError(f"{td}: invalid traffic direction, expected ingress or egress")
        elif name == "cel-expression":
            each(lambda f: f.experimental.cel_expression.append(val))
        elif name == "interface":
            each(lambda f: f.interface.append(fpb.NetworkInterface(name=val)))
        elif name == "encrypted":
            each(lambda f: f.encrypted.append(True))
        elif name == "unencrypted":
            each(lambda f: f.encrypted.append(False))
        else:  # pragma: no cover - the parser only registers known names
            raise FilterFlagError(f"unknown filter flag --{name}")
        t.check_namespaces()

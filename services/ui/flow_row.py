"""A flow as a row of the flows table (Hubble UI's columns) and as full JSON."""
from __future__ import annotations

from typing import Any

from webb import protojson
from webb.api.flow import flow_pb2 as fpb

from .l7stats import RCODES, url_path
from .service import ServiceCache
from .service_map import _drop_reason, _l4

_TCP_FLAGS = ("SYN", "ACK", "FIN", "RST", "PSH", "URG", "ECE", "CWR", "NS")
_DIRECTION = {fpb.INGRESS: "ingress", fpb.EGRESS: "egress"}
_ids = ServiceCache()


def _verdict(v: int) -> str:
    try:
        return fpb.Verdict.Name(v)
    except ValueError:
        return str(v)


def _endpoint(ep: Any, ip: str) -> dict[str, Any]:
    sid = _ids(ep)
    return {"pod": ep.pod_name, "namespace": ep.namespace, "ip": ip, "identity": ep.identity,
            "service": sid.name, "card": sid.key,
            "workload": ep.workloads[0].name if ep.workloads else ""}


_flags_text: dict[bytes, str] = {}  # encoded TCPFlags -> text (a few dozen combinations)


def tcp_flags(flow: Any) -> str:
    l4 = flow.l4
    if l4.WhichOneof("protocol") != "TCP" or not l4.TCP.HasField("flags"):
        return ""
    f = l4.TCP.flags
    key = f.SerializeToString()
    text = _flags_text.get(key)
    if text is None:
        text = ", ".join(n for n in _TCP_FLAGS if getattr(f, n))
        if len(_flags_text) < 1024:
            _flags_text[key] = text
    return text


def l7_info(flow: Any) -> str:
    if flow.Type != fpb.L7 or not flow.HasField("l7"):
        return ""
    l7 = flow.l7
    which = l7.WhichOneof("record")
    lat = f" ({l7.latency_ns / 1e6:.1f} ms)" if l7.latency_ns else ""
    if which == "http":
        h = l7.http
        path = url_path(h.url) if h.url else ""
        if l7.type == fpb.RESPONSE:
            return f"HTTP {h.code} {h.method} {path}{lat}".replace("  ", " ").strip()
        return f"HTTP {h.method} {path}".strip()
    if which == "dns":
        d = l7.dns
        qt = ",".join(d.qtypes)
        if l7.type == fpb.RESPONSE:
            ans = ",".join(d.ips[:3])
            return f"DNS {RCODES.get(d.rcode, d.rcode)} {d.query} {qt} {ans}{lat}".strip()
        return f"DNS {d.query} {qt}".strip()
    return which.upper() if which else "L7"


def flow_time(flow: Any) -> float:
    """Seconds since the epoch (float)."""
    t = flow.time
    return t.seconds + t.nanos / 1e9


def to_row(flow: Any) -> dict[str, Any]:
    proto, sport, dport = _l4(flow)
    is_reply: bool | None = flow.is_reply.value if flow.HasField("is_reply") else None
    row = {
        "id": flow.uuid, "time": flow_time(flow), "node": flow.node_name,
        "verdict": _verdict(flow.verdict),
        "drop_reason": _drop_reason(flow) if flow.verdict == fpb.DROPPED else "",
        "src": _endpoint(flow.source, flow.IP.source), "dst": _endpoint(flow.destination, flow.IP.destination),
        "protocol": proto, "sport": sport, "dport": dport,
        "flags": tcp_flags(flow), "l7": l7_info(flow),
        "direction": _DIRECTION.get(flow.traffic_direction, "unknown"),
        "reply": is_reply, "type": fpb.FlowType.Name(flow.Type) if flow.Type in (1, 2, 3) else "UNKNOWN",
        "summary": flow.Summary,
    }
    if proto.startswith("ICMP"):
        icmp = getattr(flow.l4, proto)
        row["icmp"] = {"type": icmp.type, "code": icmp.code}
    return row


def to_json(flow: Any) -> dict[str, Any]:
    """The whole flow as `hubble observe -o json` prints it (webb.protojson)."""
    return protojson.to_dict(flow)

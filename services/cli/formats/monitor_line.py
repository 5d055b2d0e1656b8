"""`cilium monitor` lines made from flows:

  xx drop (Policy denied) flow 0x5e1f00aa to endpoint 148, identity 22047->15745: 10.42.0.220:56148 -> 10.42.0.231:9080 tcp SYN
  -> endpoint 148 flow 0x5e1f00aa identity 22047->15745 state new ifindex lxc1: 10.42.0.220:56148 -> 10.42.0.231:9080 tcp SYN
  Policy verdict log: flow 0x5e1f00aa local EP ID 148, remote ID 22047, proto 6, ingress, action deny, auth: disabled, match none, 10.42.0.220:56148 -> 10.42.0.231:9080 tcp SYN
  <- Request http from 12 ([k8s:app=productpage]) to 148 ([k8s:app=reviews]), identity 22047->15745, verdict Forwarded GET http://reviews:9080/reviews/0 => 0

A flow has no skb hash: "flow 0x..." is a CRC-32 of the flow's 5-tuple, the same for
every event of one direction of a connection, which is what the hash tells a reader.
"""
from __future__ import annotations

from webb.icmp import icmp_type_code

import zlib

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb

from .. import datapath_names as names
from .flow_fields import enum_name, join_host_port, safe

_TRACE_SUMMARY = {
    1: "-> proxy", 2: "-> host from", 3: "-> stack", 4: "-> overlay", 11: "-> network",
    13: "-> crypto", 6: "<- proxy", 7: "<- host", 8: "<- stack", 9: "<- overlay",
    10: "<- network", 12: "<- crypto",
}
_TRACE_REASON = {fpb.NEW: "new", fpb.ESTABLISHED: "established", fpb.REPLY: "reply",
                 fpb.RELATED: "related", 5: "reopened"}
_L7_VERDICT = {fpb.FORWARDED: "Forwarded", fpb.DROPPED: "Denied", fpb.ERROR: "Error",
               fpb.REDIRECTED: "Redirected"}
_L7_TYPE = {fpb.REQUEST: "Request", fpb.RESPONSE: "Response", fpb.SAMPLE: "Sample"}
_PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "ICMPv4": 1, "ICMPv6": 58, "SCTP": 132, "IGMP": 2,
                  "VRRP": 112}
_DNS_SOURCE = {"proxy": "Proxy", "fqdn-poller": "Poll"}


def flow_hash(f: fpb.Flow) -> int:
    proto = f.l4.WhichOneof("protocol") if f.HasField("l4") else ""
    sport, dport = "", ""
    if proto in ("TCP", "UDP", "SCTP"):
        p = getattr(f.l4, proto)
        sport, dport = p.source_port, p.destination_port
    key = f"{f.IP.source}|{f.IP.destination}|{proto}|{sport}|{dport}"
    return zlib.crc32(key.encode())


def connection_summary(f: fpb.Flow) -> str:
    """GetConnectionSummary: "a:p -> b:p tcp SYN, ACK", "a -> b EchoRequest", ..."""
    has_ip = f.HasField("IP") and (f.IP.source or f.IP.destination)
    src, dst = safe(f.IP.source), safe(f.IP.destination)
    proto = f.l4.WhichOneof("protocol") if f.HasField("l4") else None
    if proto in ("ICMPv4", "ICMPv6"):
        icmp = getattr(f.l4, proto)
        return f"{src} -> {dst} {icmp_type_code(icmp.type, icmp.code, proto == 'ICMPv6')}"
    if proto in ("TCP", "UDP", "SCTP"):
        p = getattr(f.l4, proto)
        s = (f"{join_host_port(src, str(p.source_port))} -> "
             f"{join_host_port(dst, str(p.destination_port))} {proto.lower()}")
        if proto == "TCP":
            fl = p.flags
            s += " " + ", ".join(n for n, on in (("SYN", fl.SYN), ("ACK", fl.ACK), ("RST", fl.RST),
                                                 ("FIN", fl.FIN)) if on)
        return s
    if has_ip:
        return f"{src} -> {dst}"
    if f.HasField("ethernet"):
        return f"{safe(f.ethernet.source)} -> {safe(f.ethernet.destination)}"
    return "[unknown]"


def _ident(identity: int, numeric: bool) -> str:
    return str(identity) if numeric else names.identity_name(identity)


def _identities(f: fpb.Flow, numeric: bool) -> str:
    return f"{_ident(f.source.identity, numeric)}->{_ident(f.destination.identity, numeric)}"


def _trace_state(f: fpb.Flow) -> str:
    if f.trace_reason in _TRACE_REASON:
        return _TRACE_REASON[f.trace_reason]
    if f.HasField("is_reply"):
        if f.is_reply.value:
            return "reply"
        tcp = f.l4.TCP if f.l4.WhichOneof("protocol") == "TCP" else None
        if tcp is not None and not (tcp.flags.SYN and not tcp.flags.ACK):
            return "established"
        return "new"
    return "unknown"


def _ifname(f: fpb.Flow) -> str:
    if f.HasField("interface"):
        return safe(f.interface.name) or str(f.interface.index)
    return "0"


def drop_line(f: fpb.Flow, numeric: bool = False) -> str:
    sub = f.event_type.sub_type or int(f.drop_reason_desc)
    return (f"xx drop ({names.drop_reason(sub, f.ext_error)}) flow {flow_hash(f):#x} "
            f"to endpoint {f.destination.ID}, identity {_identities(f, numeric)}: "
            f"{connection_summary(f)}")


def trace_line(f: fpb.Flow, numeric: bool = False) -> str:
    point = f.event_type.sub_type & 0xFF
    if point == 0:
        head = f"-> endpoint {f.destination.ID}"
    elif point == 5:
        head = f"<- endpoint {f.source.ID}"
    elif point == 1 and f.proxy_port:
        head = f"-> proxy port {f.proxy_port}"
    else:
        head = _TRACE_SUMMARY.get(point, "unknown trace")
    enc = "encrypted " if f.IP.encrypted else ""
    return (f"{head} {enc}flow {flow_hash(f):#x} identity {_identities(f, numeric)} "
            f"state {_trace_state(f)} ifindex {_ifname(f)}: {connection_summary(f)}")


def policy_verdict_line(f: fpb.Flow, numeric: bool = False) -> str:
    ingress = f.traffic_direction == fpb.INGRESS
    local, remote = (f.destination, f.source) if ingress else (f.source, f.destination)
    proto = f.l4.WhichOneof("protocol") if f.HasField("l4") else None
    action = {fpb.DROPPED: "deny", fpb.ERROR: "deny", fpb.AUDIT: "audit",
              fpb.REDIRECTED: "redirect"}.get(f.verdict, "allow")
    auth = enum_name(fpb.AuthType, f.auth_type).lower().replace("_", "-")
    return (f"Policy verdict log: flow {flow_hash(f):#x} local EP ID {local.ID}, remote ID "
            f"{_ident(remote.identity, numeric)}, proto {_PROTO_NUMBERS.get(proto or '', 0)}, "
            f"{'ingress' if ingress else 'egress'}, action {action}, auth: {auth}, match "
            f"{names.policy_match_type(f.policy_match_type)}, {connection_summary(f)}")


def _labels(ep: fpb.Endpoint) -> str:
    return "[" + " ".join(safe(x) for x in ep.labels) + "]"


def l7_line(f: fpb.Flow, numeric: bool = False) -> str:
    l7 = f.l7
    direction = {fpb.INGRESS: "<-", fpb.EGRESS: "->"}.get(f.traffic_direction, "??")
    record = l7.WhichOneof("record")
    proto = record if record in ("http", "dns", "kafka") else "unknown-l7"
    kind = _L7_TYPE.get(l7.type, "Request")
    verdict = _L7_VERDICT.get(f.verdict, enum_name(fpb.Verdict, f.verdict))
    # Cilium's access log names the requester "source" in both directions; a response
    # flow has the responder as its source.
    requester, responder = (f.destination, f.source) if l7.type == fpb.RESPONSE else (f.source, f.destination)
    ids = f"{_ident(requester.identity, numeric)}->{_ident(responder.identity, numeric)}"
    if l7.type == fpb.RESPONSE:
        head = (f"{direction} {kind} {proto} to {requester.ID} ({_labels(requester)}) from "
                f"{responder.ID} ({_labels(responder)}), identity {ids}, verdict {verdict}")
    else:
        head = (f"{direction} {kind} {proto} from {requester.ID} ({_labels(requester)}) to "
                f"{responder.ID} ({_labels(responder)}), identity {ids}, verdict {verdict}")
    if record == "http":
        h = l7.http
        return f"{head} {safe(h.method)} {safe(h.url)} => {h.code}"
    if record == "dns":
        d = l7.dns
        qtypes = ",".join(d.qtypes)
        if l7.type == fpb.RESPONSE:
            source = _DNS_SOURCE.get(d.observation_source, "Query")
            s = (f"{head} DNS {source}: {safe(d.query)} {qtypes} TTL: {d.ttl} "
                 f"Answer: '{','.join(d.ips)}'")
            if d.cnames:
                s += f" CNAMEs: {','.join(safe(x) for x in d.cnames)}"
            return s
        return f"{head} DNS Query: {safe(d.query)} {qtypes}"
    if record == "kafka":
        k = l7.kafka
        return f"{head} {safe(k.api_key)} topic {safe(k.topic)} => {k.error_code}"
    return head


def lost_line(res: opb.GetFlowsResponse) -> str:
    le = res.lost_events
    cpu = le.cpu.value if le.HasField("cpu") else 0
    return f"CPU {cpu:02d}: Lost {le.num_events_lost} events"


def event_kind(f: fpb.Flow) -> str:
    """Which monitor event a flow stands for: drop, trace, policy-verdict, l7 or ''."""
    if f.HasField("l7") or f.event_type.type == names.ACCESS_LOG:
        return "l7"
    t = f.event_type.type
    if t == names.DROP or (t == 0 and f.verdict == fpb.DROPPED):
        return "drop"
    if t == names.POLICY_VERDICT:
        return "policy-verdict"
    if t == names.TRACE:
        return "trace"
    return ""


def monitor_line(f: fpb.Flow, numeric: bool = False) -> str:
    kind = event_kind(f)
    if kind == "l7":
        return l7_line(f, numeric)
    if kind == "drop":
        return drop_line(f, numeric)
    if kind == "policy-verdict":
        return policy_verdict_line(f, numeric)
    if kind == "trace":
        return trace_line(f, numeric)
    return f"?? {safe(f.Summary)}: {connection_summary(f)}"

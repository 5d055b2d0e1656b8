"""What several handlers ask of a flow, with Hubble's names.

Cilium's monitor message types (flow.event_type.type), the trace observation point
names used as the flow metric's ``subtype``, and the protocol that best describes a
flow (L7 protocol first, else L4).
"""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb

MSG_DROP = 1
MSG_DEBUG = 2
MSG_CAPTURE = 3
MSG_TRACE = 4
MSG_POLICY_VERDICT = 5
MSG_ACCESS_LOG = 129  # L7

TRACE_POINTS = {
    0: "to-endpoint", 1: "to-proxy", 2: "to-host", 3: "to-stack", 4: "to-overlay",
    5: "from-endpoint", 6: "from-proxy", 7: "from-host", 8: "from-stack", 9: "from-overlay",
    10: "from-network", 11: "to-network", 12: "from-crypto", 13: "to-crypto",
}

_L4_NAMES = (("TCP", "TCP"), ("UDP", "UDP"), ("ICMPv4", "ICMPv4"), ("ICMPv6", "ICMPv6"),
             ("SCTP", "SCTP"), ("VRRP", "VRRP"), ("IGMP", "IGMP"))


def l7_kind(flow: fpb.Flow) -> str:
    """"DNS", "HTTP", "Kafka" or "" (no L7 record)."""
    if not flow.HasField("l7"):
        return ""
    record = flow.l7.WhichOneof("record")
    return {"dns": "DNS", "http": "HTTP", "kafka": "Kafka"}.get(record or "", "")


def l4_kind(flow: fpb.Flow) -> str:
    if not flow.HasField("l4"):
        return ""
    which = flow.l4.WhichOneof("protocol")
    return which or ""


def flow_protocol(flow: fpb.Flow) -> str:
    """Hubble's FlowProtocol: the L7 protocol of an L7 flow, else the L4 protocol."""
    t = flow.event_type.type
    if t == MSG_ACCESS_LOG:
        return l7_kind(flow) or "Unknown L7"
    if t in (MSG_DROP, MSG_TRACE, MSG_POLICY_VERDICT, MSG_CAPTURE):
        return l4_kind(flow) or "Unknown L4"
    return "Unknown flow"


def verdict_name(flow: fpb.Flow) -> str:
    return fpb.Verdict.Name(flow.verdict) if flow.verdict in _VERDICTS else str(flow.verdict)


def drop_reason_name(flow: fpb.Flow) -> str:
    r = flow.drop_reason_desc
    return fpb.DropReason.Name(r) if r in _DROP_REASONS else str(r)


def is_reply(flow: fpb.Flow) -> bool | None:
    """True/False, or None when the datapath could not tell."""
    return flow.is_reply.value if flow.HasField("is_reply") else None


_VERDICTS = frozenset(fpb.Verdict.values())
_DROP_REASONS = frozenset(fpb.DropReason.values())

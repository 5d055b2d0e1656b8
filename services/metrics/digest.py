"""A flow reduced to what the metric handlers read, as bytes: flows with equal digests
count the same, so the exporter evaluates the handlers once per distinct digest.

The digest is computed in C (upb), never by reading fields in Python
(``webb.flow_digest``): the encoded GetFlowsResponse is parsed as a reduced flow.Flow
without the fields no handler reads (time, uuid, node, source ports, URLs, headers,
DNS TTLs, ...), stripped of them and serialized again, so
``flow.Flow.FromString(digest)`` is a flow the handlers treat exactly as the original.
Whole sub-messages whose presence no handler tests (the endpoints, the trace context,
ICMP) are copied undecoded.

One conditional read: the destination port is read only of flows that are not
replies, or that were dropped (port-distribution, flows-to-world). A reply's
destination port is the client's ephemeral port: left in, every reply would be a
digest of its own; it is cleared from the digest of forwarded replies.

READS below must list every field a handler (or the context options, or the series
GC) reads. tests/unit/test_metrics_digest.py checks, on randomized flows that set
every field, that counting by digest gives what the handlers give flow by flow.
"""
from __future__ import annotations

from typing import Callable

from webb.api.flow import flow_pb2 as fpb
from webb.flow_digest import BYTES, KEEP, reduced_response_class

# message (in package flow) -> field -> KEEP | BYTES. Messages not listed keep all fields.
READS: dict[str, dict[str, str]] = {
    "Flow": {"verdict": KEEP, "drop_reason_desc": KEEP, "event_type": KEEP, "IP": KEEP,
             "l4": KEEP, "source": BYTES, "destination": BYTES, "source_names": KEEP,
             "destination_names": KEEP, "l7": KEEP, "traffic_direction": KEEP,
             "policy_match_type": KEEP, "is_reply": KEEP, "trace_context": BYTES},
    "IP": {"source": KEEP, "destination": KEEP, "ipVersion": KEEP},
    # a oneof keeps every member: which one is set is read (l4_kind)
    "Layer4": {"TCP": KEEP, "UDP": KEEP, "SCTP": KEEP, "ICMPv4": BYTES, "ICMPv6": BYTES,
               "VRRP": BYTES, "IGMP": BYTES},
    "TCP": {"destination_port": KEEP, "flags": KEEP},
    "UDP": {"destination_port": KEEP},
    "SCTP": {"destination_port": KEEP},
    "Layer7": {"type": KEEP, "latency_ns": KEEP, "dns": KEEP, "http": KEEP, "kafka": BYTES},
    "DNS": {"query": KEEP, "ips": KEEP, "rcode": KEEP, "qtypes": KEEP, "rrtypes": KEEP},
    "HTTP": {"code": KEEP, "method": KEEP, "protocol": KEEP},
}

_Response = reduced_response_class(READS, "webb_metrics_digest")
_DROPPED = fpb.DROPPED


def make_digest() -> Callable[[bytes], bytes]:
    """digest(encoded GetFlowsResponse carrying a flow) -> bytes of a reduced flow.Flow."""
    parse = _Response.FromString

    def digest(raw: bytes) -> bytes:
        f = parse(raw).flow
        if f.is_reply.value and f.verdict != _DROPPED:
            l4 = f.l4
            which = l4.WhichOneof("protocol")
            if which == "TCP":
                l4.TCP.destination_port = 0
            elif which == "UDP":
                l4.UDP.destination_port = 0
            elif which == "SCTP":
                l4.SCTP.destination_port = 0
        f.DiscardUnknownFields()
        return f.SerializeToString()

    return digest

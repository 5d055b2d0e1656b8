"""A flow reduced to what the service map reads (``ServiceMap.add``), as bytes: the
flows of a batch with equal digests update the map once, with their number.

Computed in C by ``webb.flow_digest`` (a reduced decode, stripped, serialized again):
no time, uuid, Summary, event type, IP version, TCP flags... The endpoints are carried
undecoded.

Ports: ``ServiceMap.add`` draws a request's arrow to its destination port and a
reply's to its source port; the other one is the client's ephemeral port, cleared
here, so the flows of one connection share a digest. A flow whose ``is_reply`` is
unknown gets no digest: whether it is a reply is guessed from its ports and flags and
from the ports the map knows when it comes (``_guess_reply``), so it is decoded and
added on its own, in stream order; the digest therefore needs neither flags nor the
deprecated ``reply``.

READS must list every field ``ServiceMap.add`` reads; tests/unit/test_ui_map_digest.py
checks, on randomized flows, that adding per digest builds the map flow by flow does.
"""
from __future__ import annotations

from typing import Callable

from webb.flow_digest import BYTES, KEEP, reduced_response_class

READS: dict[str, dict[str, str]] = {
    "Flow": {"verdict": KEEP, "IP": KEEP, "l4": KEEP, "source": BYTES, "destination": BYTES,
             "Type": KEEP, "node_name": KEEP, "l7": KEEP, "traffic_direction": KEEP,
             "drop_reason_desc": KEEP, "ext_drop_reason_desc": KEEP, "is_reply": KEEP},
    "IP": {"source": KEEP, "destination": KEEP},
    # a oneof keeps every member: which one is set is read (the protocol)
    "Layer4": {"TCP": KEEP, "UDP": KEEP, "SCTP": KEEP, "ICMPv4": BYTES, "ICMPv6": BYTES,
               "VRRP": BYTES, "IGMP": BYTES},
    "TCP": {"source_port": KEEP, "destination_port": KEEP},
    "UDP": {"source_port": KEEP, "destination_port": KEEP},
    "SCTP": {"source_port": KEEP, "destination_port": KEEP},
    "Layer7": {"type": KEEP, "latency_ns": KEEP, "dns": KEEP, "http": KEEP, "kafka": BYTES},
    "DNS": {"query": KEEP, "rcode": KEEP},
    "HTTP": {"code": KEEP, "method": KEEP, "url": KEEP},
}

_Response = reduced_response_class(READS, "webb_ui_map_digest")


def make_digest() -> Callable[[bytes], bytes | None]:
    """digest(encoded GetFlowsResponse carrying a flow) -> bytes of a reduced flow.Flow,
    or None for a flow whose ``is_reply`` is unknown."""
    parse = _Response.FromString

    def digest(raw: bytes) -> bytes | None:
        f = parse(raw).flow
        if not f.HasField("is_reply"):
            return None
        l4 = f.l4
        which = l4.WhichOneof("protocol")
        if which == "TCP" or which == "UDP" or which == "SCTP":
            m = getattr(l4, which)
            if f.is_reply.value:
                m.destination_port = 0
            else:
                m.source_port = 0
        f.DiscardUnknownFields()
        return f.SerializeToString()

    return digest

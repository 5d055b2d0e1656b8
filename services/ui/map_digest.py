"""A flow reduced to what the service map reads (``ServiceMap.add``), as bytes: the
flows of a batch with equal digests update the map once, with their number.

Computed in C by ``webb.flow_digest``, a whole batch at a time (one reduced decode, one
strip, one serialization for all its flows): no time, uuid, Summary, event type, IP
version, TCP flags... The endpoints are carried undecoded. What is left per flow in
Python is what C cannot decide:

Ports: ``ServiceMap.add`` draws a request's arrow to its destination port and a
reply's to its source port; the other one is the client's ephemeral port, cleared
here, so the flows of one connection share a digest. A flow whose ``is_reply`` is
unknown gets no digest: whether it is a reply is guessed from its ports and flags and
from the ports the map knows when it comes (``_guess_reply``), so it is decoded and
added on its own, in stream order; the digest therefore needs neither flags nor the
deprecated ``reply``.

L7 latency: only an HTTP response's latency is read (its arrow's and route's latency
histograms), and no two responses share one: left in, every HTTP response would be a
digest of its own. It is cleared from the digest of every L7 flow and handed back
beside it, for the map to add flow by flow.

READS must list every field ``ServiceMap.add`` reads; tests/unit/test_ui_map_digest.py
checks, on randomized flows and batches, that adding per digest builds the map flow by
flow does.
"""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb
from webb.flow_digest import (BYTES, KEEP, encode_entries, reduced_batch_class,
                              reduced_response_class, split_entries)

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
_Batch = reduced_batch_class(_Response, "webb_ui_map_digest_batch")
_L7 = fpb.L7
_PORTS = frozenset(("TCP", "UDP", "SCTP"))


def digest_batch(raws: list[bytes]) -> tuple[list[bytes | None], dict[int, int]]:
    """(digests, latencies) of encoded GetFlowsResponses that each carry a flow:
    ``digests[i]`` is the encoding of a GetFlowsResponse holding flow i reduced (None
    when its ``is_reply`` is unknown); ``latencies[i]`` the L7 latency cleared from
    digest i (only flows that had one)."""
    batch = _Batch.FromString(encode_entries(raws))
    batch.DiscardUnknownFields()
    unknown: list[int] = []
    latencies: dict[int, int] = {}
    i = 0
    for r in batch.responses:
        f = r.flow
        if f.HasField("is_reply"):
            l4 = f.l4
            which = l4.WhichOneof("protocol")
            if which in _PORTS:
                if f.is_reply.value:
                    getattr(l4, which).destination_port = 0
                else:
                    getattr(l4, which).source_port = 0
            if f.Type == _L7:
                l7 = f.l7
                ns = l7.latency_ns
                if ns:
                    latencies[i] = ns
                    l7.latency_ns = 0
        else:
            unknown.append(i)
        i += 1
    digests: list[bytes | None] = split_entries(batch.SerializeToString())  # type: ignore[assignment]
    for i in unknown:
        digests[i] = None
    return digests, latencies

"""The flow wire cache: each record's flow body, encoded once and kept on it.

Nothing here parses: the datapath's raw event bytes are decoded and encoded by
threefour.py (L3/L4) or l7/encode.py (L7) the first time somebody reads a record,
and the result is stored in the record itself (FlowRecord.wire), whose raw bytes
(or L7 message) are then dropped. So cache_wire() CHANGES THE RECORD IT IS GIVEN;
flow() and response() go through it. What is kept is the flow's body: every field
but the UUID and the two endpoints' messages, which each read adds
(flow_wire.with_endpoints), so the ring does not hold a copy of them per flow (they
are two thirds of a flow's bytes). A flow_pb2.Flow is parsed from the bytes only
when a filter or a field mask needs the message. The per-event path stops at
FlowRecord; this runs only for flows somebody reads.
"""
from __future__ import annotations

from typing import Any

from webb.api.flow import flow_pb2 as fpb

from ..datapath.event import decode
from .flow_wire import SEQ_48, _V, _varint, endpoint_fields, timestamp, with_endpoints
from .threefour import _R_FLOW, _R_TIME, FlowEncoder, tcp_flags_summary
from .l7.encode import L7Encoder
from .record import FlowRecord, L7Record

__all__ = ["FlowWireCache", "tcp_flags_summary"]

# Encoded (source, destination) fields kept for GetFlows' responses, by endpoint pair:
# a node's flows are between a few pairs; beyond the bound the table starts again
# (at most ~0.7 MB: two Endpoint messages and a node name a pair).
MAX_PAIRS = 1024


class FlowWireCache:
    """Encodes records' flow bodies on first read and caches them on the records."""

    def __init__(self, node_name: str, ifnames: dict[int, str], version: str) -> None:
        self.node_name = node_name
        self.ifnames = ifnames
        self.encoder = FlowEncoder(node_name, version, ifnames)
        self.l7 = L7Encoder(node_name, version)
        # (id(src), id(dst)) -> (src, dst, their fields + the response's node_name and
        # time key, the flow bytes among those). Endpoints are immutable snapshots (a
        # change makes a new one), so an entry whose objects are still the record's is
        # current; the objects are kept so their ids cannot be reused meanwhile.
        self._pairs: dict[tuple[int, int], tuple[object, object, bytes, int]] = {}

    def flow_uuid(self, seq: int) -> str:
        return self.encoder.flow_uuid(seq)

    def body(self, rec: FlowRecord) -> bytes:
        """The record's flow body; the first call stores it on the record (rec.wire) and
        drops its raw bytes or L7 message."""
        body = rec.wire
        if body is None:
            if rec.__class__ is L7Record:
                body = self._l7_body(rec)  # type: ignore[arg-type]
            else:
                body = rec.wire = self.encoder.body(decode(rec.raw), rec.time_ns)  # type: ignore[arg-type]
                rec.raw = None  # the body says it all now
        return body

    def cache_wire(self, rec: FlowRecord) -> bytes:
        """The record's whole flow.Flow bytes (see body())."""
        body = rec.wire
        if body is None:
            body = self.body(rec)
        src = rec.src
        if src is None:  # read back from the history store: the whole flow
            return body
        dst = rec.dst
        return with_endpoints(body, self.encoder.flow_uuid_bytes(rec.seq),
                              src.wire or src.with_wire().wire, dst.wire or dst.with_wire().wire)

    def _l7_body(self, rec: L7Record) -> bytes:
        # Encoded once, on the loop (history and export encode L7 records there too,
        # before their threads see them); the message is dropped once encoded.
        w = rec.wire = self.l7.body(rec.msg, rec.time_ns)  # type: ignore[arg-type]
        rec.msg = None
        return w

    def flow(self, rec: FlowRecord) -> fpb.Flow:
        return fpb.Flow.FromString(self.cache_wire(rec))

    def response(self, rec: FlowRecord) -> bytes:
        """observer.GetFlowsResponse bytes of the record: encoder.response(cache_wire(rec),
        rec.time_ns) byte for byte, written with one join (once per message GetFlows
        sends): the body, the UUID field's fixed head and the seq, then the pair's
        endpoint fields with the response's node_name and time key, encoded once."""
        body = rec.wire
        if body is None:
            body = self.body(rec)
        src, dst, seq = rec.src, rec.dst, rec.seq
        if src is None or seq >= SEQ_48:  # a whole flow from history, or a seq past 2^48
            return self.encoder.response(self.cache_wire(rec), rec.time_ns)
        pair = self._pairs.get((id(src), id(dst)))
        if pair is None or pair[0] is not src or pair[1] is not dst:
            pair = self._pair(src, dst)
        n = len(body) + pair[3]
        ts = timestamp(rec.time_ns)
        return b"".join((_R_FLOW, _V[n] if n < 65536 else _varint(n), body,
                         self.encoder.uuid_field_head, b"%012x" % seq, pair[2],
                         _V[len(ts)], ts))

    def _pair(self, src: Any, dst: Any) -> tuple[object, object, bytes, int]:
        pairs = self._pairs
        if len(pairs) >= MAX_PAIRS:
            pairs.clear()
        fields = endpoint_fields(src.wire or src.with_wire().wire, dst.wire or dst.with_wire().wire)
        pair = pairs[(id(src), id(dst))] = (
            src, dst, fields + self.encoder.node_field + _R_TIME,
            len(self.encoder.uuid_field_head) + 12 + len(fields))  # 12: b"%012x" % seq
        return pair

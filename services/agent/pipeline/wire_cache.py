"""The flow wire cache: each record's flow.Flow bytes, encoded once and kept on it.

Nothing here parses: the datapath's raw event bytes are decoded and encoded by
threefour.py (L3/L4) or l7/encode.py (L7) the first time somebody reads a record,
and the result is stored in the record itself (FlowRecord.wire), whose raw bytes
(or L7 message) are then dropped. So cache_wire() CHANGES THE RECORD IT IS GIVEN;
flow() and response() go through it. A flow_pb2.Flow is parsed from the cached
bytes only when a filter or a field mask needs the message. The per-event path
stops at FlowRecord; this runs only for flows somebody reads.
"""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb

from ..datapath.event import decode
from .threefour import FlowEncoder, tcp_flags_summary
from .l7.encode import L7Encoder
from .record import FlowRecord, L7Record

__all__ = ["FlowWireCache", "tcp_flags_summary"]


class FlowWireCache:
    """Encodes records' flows on first read and caches the bytes on the records."""

    def __init__(self, node_name: str, ifnames: dict[int, str], version: str) -> None:
        self.node_name = node_name
        self.ifnames = ifnames
        self.encoder = FlowEncoder(node_name, version, ifnames)
        self.l7 = L7Encoder(node_name, version)

    def flow_uuid(self, seq: int) -> str:
        return self.encoder.flow_uuid(seq)

    def cache_wire(self, rec: FlowRecord) -> bytes:
        """The record's flow.Flow bytes; the first call stores them on the record
        (rec.wire) and drops its raw bytes or L7 message."""
        w = rec.wire
        if w is None:
            if rec.__class__ is L7Record:
                return self._l7_wire(rec)  # type: ignore[arg-type]
            ev = decode(rec.raw)  # type: ignore[arg-type]
            w = rec.wire = self.encoder.encode(ev, rec.time_ns, rec.seq,
                                               rec.src.wire or rec.src.with_wire().wire,
                                               rec.dst.wire or rec.dst.with_wire().wire)
            rec.raw = None  # the wire bytes say it all now
        return w

    def _l7_wire(self, rec: L7Record) -> bytes:
        # Encoded once, on the loop (history and export encode L7 records there too,
        # before their threads see them); the message is dropped once encoded.
        msg = rec.msg
        if msg is None:
            return rec.wire  # type: ignore[return-value]
        w = rec.wire = self.l7.encode(msg, rec.time_ns, self.flow_uuid(rec.seq),  # type: ignore[arg-type]
                                      rec.src.wire or rec.src.with_wire().wire,
                                      rec.dst.wire or rec.dst.with_wire().wire)
        rec.msg = None
        return w

    def flow(self, rec: FlowRecord) -> fpb.Flow:
        return fpb.Flow.FromString(self.cache_wire(rec))

    def response(self, rec: FlowRecord) -> bytes:
        return self.encoder.response(self.cache_wire(rec), rec.time_ns)

"""L3/L4 parser: datapath records to flow.Flow, like Hubble's threefour parser.

Runs only for flows somebody reads; the per-event path stops at FlowRecord (raw
event bytes, decoded here). A record's wire bytes are encoded once (encoder.py) and
cached, and its raw bytes dropped; a flow_pb2.Flow is parsed from them when a filter
or field mask needs the message.
"""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb

from .datapath.event import decode
from .encoder import FlowEncoder, tcp_flags_summary
from .record import FlowRecord

__all__ = ["FlowParser", "tcp_flags_summary"]


class FlowParser:
    def __init__(self, node_name: str, ifnames: dict[int, str], version: str) -> None:
        self.node_name = node_name
        self.ifnames = ifnames
        self.encoder = FlowEncoder(node_name, version, ifnames)

    def flow_uuid(self, seq: int) -> str:
        return self.encoder.flow_uuid(seq)

    def wire(self, rec: FlowRecord) -> bytes:
        w = rec.wire
        if w is None:
            ev = decode(rec.raw)  # type: ignore[arg-type]
            w = rec.wire = self.encoder.encode(ev, rec.time_ns, rec.seq,
                                               rec.src.wire or rec.src.with_wire().wire,
                                               rec.dst.wire or rec.dst.with_wire().wire)
            rec.raw = None  # the wire bytes say it all now
        return w

    def flow(self, rec: FlowRecord) -> fpb.Flow:
        return fpb.Flow.FromString(self.wire(rec))

    def response(self, rec: FlowRecord) -> bytes:
        return self.encoder.response(self.wire(rec), rec.time_ns)

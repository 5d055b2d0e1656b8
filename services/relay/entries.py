"""Entries of a merged flow stream: serialized observer.GetFlowsResponse bytes, kept
as they came, in three parallel columns (time in ns, bytes, node name).

The relay never decodes a flow to route it: a batched upstream carries each
entry's time and node beside it; an upstream answering Hubble's GetFlows has its
top-level fields scanned (no Flow is built). What kind an entry is (flow, node
status, lost events) is its first field: every serializer webb meets (upb, Go's
protobuf) writes fields in number order and the response oneof has numbers 1-3,
before node_name (1000) and time (1001); scan() puts an entry that is not so in
that order.
"""
from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp

from webb.api.observer import observer_pb2 as opb

FLOW_BYTE = 0x0A  # field 1 (flow), length-delimited
NODE_STATUS_BYTE = 0x12  # field 2
LOST_EVENTS_BYTE = 0x1A  # field 3


class Columns:
    """A run of entries, oldest first."""

    __slots__ = ("times", "raws", "nodes")

    def __init__(self, times: list[int] | None = None, raws: list[bytes] | None = None,
                 nodes: list[str] | None = None) -> None:
        self.times = times if times is not None else []
        self.raws = raws if raws is not None else []
        self.nodes = nodes if nodes is not None else []

    def __len__(self) -> int:
        return len(self.raws)

    def extend(self, other: "Columns") -> None:
        self.times.extend(other.times)
        self.raws.extend(other.raws)
        self.nodes.extend(other.nodes)

    def append(self, t: int, raw: bytes, node: str) -> None:
        self.times.append(t)
        self.raws.append(raw)
        self.nodes.append(node)


def is_flow(raw: bytes) -> bool:
    return bool(raw) and raw[0] == FLOW_BYTE


def _varint(b: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        if c < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _timestamp_ns(b: bytes, i: int, end: int) -> int:
    seconds = nanos = 0
    while i < end:
        k, i = _varint(b, i)
        if k == 0x08:
            seconds, i = _varint(b, i)
        elif k == 0x10:
            nanos, i = _varint(b, i)
        else:
            return 0  # not a Timestamp as webb knows it: sort by arrival
    if seconds >= 1 << 63:  # negative int64 (before 1970): sort by arrival
        return 0
    return seconds * 1_000_000_000 + nanos


def scan(raw: bytes, arrival_ns: int) -> tuple[int, bytes]:
    """(time to sort by, the entry) of one serialized GetFlowsResponse: its `time`,
    else its flow's time, else the arrival time."""
    i, n = 0, len(raw)
    first_field = 0
    t = 0
    try:
        while i < n:
            k, i = _varint(raw, i)
            field, wt = k >> 3, k & 7
            if not first_field:
                first_field = field
            if wt == 2:
                ln, i = _varint(raw, i)
                if field == 1001:
                    t = _timestamp_ns(raw, i, i + ln)
                i += ln
            elif wt == 0:
                _, i = _varint(raw, i)
            elif wt == 1:
                i += 8
            elif wt == 5:
                i += 4
            else:
                raise ValueError("unsupported wire type")
    except (IndexError, ValueError):
        return _decoded(raw, arrival_ns)
    if first_field > 3 or not t:
        return _decoded(raw, arrival_ns)
    return t, raw


def _decoded(raw: bytes, arrival_ns: int) -> tuple[int, bytes]:
    """The slow path: a response without its own time, or in an unusual field order."""
    msg = opb.GetFlowsResponse.FromString(raw)
    t = msg.time.seconds * 1_000_000_000 + msg.time.nanos
    if not t and msg.HasField("flow"):
        t = msg.flow.time.seconds * 1_000_000_000 + msg.flow.time.nanos
    return (t or arrival_ns), msg.SerializeToString()  # upb writes fields in number order


def now_ts() -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


def lost_count(raw: bytes) -> int:
    """Events an entry stands for when it is shed: a lost-events entry its count."""
    if raw and raw[0] == LOST_EVENTS_BYTE:
        return opb.GetFlowsResponse.FromString(raw).lost_events.num_events_lost or 1
    return 1

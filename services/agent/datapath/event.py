"""Layout of the records bpf/flow.c writes to the perf buffer, and their decoding.

Decoding is one struct.unpack per record (about a microsecond); everything else a
Flow needs is built later, only for flows someone reads.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

# struct flow_event in bpf/flow.c
EVENT_STRUCT = struct.Struct("<QQQ16s16s6s6sHHIIBBBBBBBBB7x")
EVENT_SIZE = EVENT_STRUCT.size  # 96

EVENT_TRACE = 1

POINT_FROM_ENDPOINT = 0
POINT_TO_ENDPOINT = 1

REASON_NEW = 0
REASON_FLAGS = 1
REASON_REPORT = 2

STAT_PACKETS = 0
STAT_EVENTS = 1
STAT_PARSE_ERRORS = 2


class FlowEvent(NamedTuple):
    ts: int
    packets: int
    bytes: int
    saddr: bytes
    daddr: bytes
    smac: bytes
    dmac: bytes
    sport: int
    dport: int
    ifindex: int
    pkt_len: int
    event_type: int
    reason: int
    family: int
    proto: int
    tcp_flags: int
    point: int
    is_reply: int
    icmp_type: int
    icmp_code: int


_unpack = EVENT_STRUCT.unpack_from


def decode(raw: bytes) -> FlowEvent:
    return FlowEvent._make(_unpack(raw))


def pack(ev: FlowEvent) -> bytes:
    """The inverse of decode, for tests and benchmarks that feed records by hand."""
    return EVENT_STRUCT.pack(*ev)

"""Layout of the records bpf/ programs write to their perf buffers (bpf/event.h), and
their decoding.

The agent keeps records raw: ingest reads only the few fields it needs per event
(HEAD_STRUCT); a full decode (one struct.unpack) and everything else a Flow needs
happen later, only for flows someone reads.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

# struct flow_event in bpf/event.h
EVENT_STRUCT = struct.Struct("<QQQ16s16s6s6sHHIIBBBBBBBBBBHIII")
EVENT_SIZE = EVENT_STRUCT.size  # 104
# What ingest needs of every event, without a full decode: ts, saddr, daddr, family.
HEAD_STRUCT = struct.Struct("<Q16x16s16s26xB")

EVENT_TRACE = 1
EVENT_DROP = 2             # dropped by the datapath (policy); drop_reason: Hubble's code
EVENT_POLICY_VERDICT = 3   # first packet of an allowed connection of a policed endpoint
EVENT_KERNEL_DROP = 4      # freed by the kernel with a drop reason; drop_reason: the kernel's
# EVENT_POLICY_VERDICT's reason: the connection goes to the L7 proxy (Hubble: REDIRECTED).
VERDICT_REDIRECT = 1

# bpf/flow.c marks the packets it drops with this, so drop.c does not report them again.
WEBB_DROP_MARK = 0x7765626D

POINT_FROM_ENDPOINT = 0
POINT_TO_ENDPOINT = 1

REASON_NEW = 0
REASON_FLAGS = 1
REASON_REPORT = 2

STAT_PACKETS = 0
STAT_EVENTS = 1
STAT_PARSE_ERRORS = 2
STAT_POLICY_DROPS = 3
STAT_L7_EVENTS = 4
STAT_L7_LOST = 5  # L7 records the ring buffer had no room for (reported as lost events)


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
    match_type: int = 0    # policy verdicts and drops: Cilium's policy match type
    proxy_port: int = 0    # traces: the packet went to the L7 proxy on this port (TO_PROXY)
    drop_reason: int = 0
    policy_set: int = 0    # the agent's id of the set of policies behind a verdict
    remote_id: int = 0     # the peer's identity as the policy saw it (0: not checked)


_unpack = EVENT_STRUCT.unpack_from


def decode(raw: bytes) -> FlowEvent:
    return FlowEvent._make(_unpack(raw))


def pack(ev: FlowEvent) -> bytes:
    """The inverse of decode, for tests and benchmarks that feed records by hand."""
    return EVENT_STRUCT.pack(*ev)


# struct l7_event in bpf/l7.h: a header, then the first cap_len bytes of the packet.
L7_EVENT_STRUCT = struct.Struct("<Q16s16sHHIIIHHBBBBBB6x")
L7_EVENT_SIZE = L7_EVENT_STRUCT.size  # 72

L7_NONE = 0
L7_HTTP = 1
L7_DNS = 2
L7_KIND_MASK = 0x0F
L7_RESPONSE_SIDE = 0x10
L7_MODE_SPORT = 2  # l7_sel key mode bit: the port is the packet's source port


class L7Event(NamedTuple):
    ts: int
    saddr: bytes
    daddr: bytes
    sport: int
    dport: int
    ifindex: int
    seq: int
    payload_len: int
    payload_off: int
    cap_len: int
    family: int
    proto: int
    point: int
    l7: int
    is_reply: int
    tcp_flags: int

    @property
    def kind(self) -> int:
        return self.l7 & L7_KIND_MASK

    @property
    def response_side(self) -> bool:
        return bool(self.l7 & L7_RESPONSE_SIDE)


def decode_l7(raw: bytes) -> tuple[L7Event, bytes]:
    """The header and the captured payload (the packet bytes after its L4 header)."""
    ev = L7Event._make(L7_EVENT_STRUCT.unpack_from(raw))
    start = L7_EVENT_SIZE + ev.payload_off
    return ev, raw[start:L7_EVENT_SIZE + ev.cap_len]


def pack_l7(ev: L7Event, packet: bytes) -> bytes:
    """The inverse of decode_l7 for tests: packet = the bytes the kernel would append."""
    return L7_EVENT_STRUCT.pack(*ev) + packet


def _decode_l7_batch_py(raws: list[bytes]) -> tuple[list[tuple[L7Event, bytes]], int]:
    items, bad = [], 0
    for raw in raws:
        try:
            items.append(decode_l7(raw))
        except Exception:  # a short record: counted by the caller, never stops the batch
            bad += 1
    return items, bad


try:  # the same in C where scripts/build_ext.py built it (tests/unit/test_ringbuf.py)
    from ._ringbuf import decode_l7 as _decode_l7_c
except ImportError:
    _decode_l7_c = None


def decode_l7_batch(raws: list[bytes]) -> tuple[list[tuple[L7Event, bytes]], int]:
    """decode_l7 of each record: the (event, payload) items and how many records were
    too short to decode."""
    if _decode_l7_c is not None:
        try:
            return _decode_l7_c(raws, L7Event)
        except TypeError:  # a record that is not bytes (tests' buffers): Python's rules
            pass
    return _decode_l7_batch_py(raws)

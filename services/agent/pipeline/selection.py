"""GetFlows over the ring: which entries a request selects, in which order.

Hubble's rules: `number` alone means the newest N matching flows (sent oldest
first), `first` the oldest N, neither means everything held; since/until bound
the time; `follow` goes on with new flows after the history (a follow with
neither number nor since has no history). A reader that the
ring overtakes is told how many entries it lost.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Union

from .record import FlowRecord, LostRecord
from ..stores.ring import Ring

LOST_SOURCE_RING = 3  # flow.LostEventSource.HUBBLE_RING_BUFFER

Entry = Union[FlowRecord, LostRecord]


class _Idle:
    """Marks where a reader caught up with the ring and is about to wait: a batched
    stream sends what it holds there, so light traffic is not held back."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "IDLE"


IDLE = _Idle()


@dataclass
class Lost:
    """Entries a reader never saw: perf-buffer losses or ring overwrites."""

    source: int
    count: int
    cpu: int
    time_ns: int
    first_seq: int = -1  # a ring overwrite: the first seq of the span (history fills it)


@dataclass
class ReadRequest:
    number: int = 0
    first: bool = False
    follow: bool = False
    since_ns: int | None = None
    until_ns: int | None = None


class RequestError(ValueError):
    pass


def validate(req: ReadRequest) -> None:
    if req.first and req.follow:
        raise RequestError("first cannot be specified with follow")
    if req.number and req.since_ns is not None and not req.first:
        raise RequestError("number cannot be specified with since unless first is set")
    if req.since_ns is not None and req.until_ns is not None and req.since_ns > req.until_ns:
        raise RequestError("since must be before until")


async def read_flows(ring: Ring, req: ReadRequest,
                     match: Callable[[FlowRecord], bool] | None,
                     start_seq: int | None = None,
                     idle: bool = False,
                     end_seq: int | None = None) -> AsyncIterator[FlowRecord | Lost | _Idle]:
    """Yields each selected flow record, or Lost notices; match=None selects all.

    start_seq (the history reader's) starts at that sequence number instead; a span
    older than the ring comes first as a Lost notice, which history fills in.
    idle=True yields IDLE each time the reader is about to wait for new entries.
    end_seq: where a request without follow ends (default: the ring's next seq now)."""
    since, until = req.since_ns, req.until_ns

    def in_window(rec: FlowRecord) -> bool:
        t = rec.time_ns
        return (since is None or t >= since) and (until is None or t <= until)

    # Without follow, the history as it stands now: entries written later are no
    # part of the answer, so the ring overwriting them under a slow reader is no loss.
    end = ring.next_seq if end_seq is None else end_seq
    if start_seq is not None:
        start = start_seq
    elif req.number and not req.first:
        # Walk back to the Nth newest match, then stream forward from there.
        need, pos, start = req.number, end - 1, ring.oldest_seq
        while pos >= ring.oldest_seq and need:
            e = ring.get(pos)
            if isinstance(e, FlowRecord) and in_window(e) and (match is None or match(e)):
                need -= 1
                if not need:
                    start = pos
            pos -= 1
    elif req.follow and not req.number and since is None:
        start = end  # like Hubble: a plain follow starts with the next flow
    else:
        start = ring.oldest_seq
    limit = req.number if req.first else 0
    history_limit = req.number if (req.number and not req.first) else 0

    pos, sent = start, 0
    follow = req.follow
    # Once per entry sent, so the ring is read here without method calls: its list,
    # and the oldest seq it holds as Ring.oldest_seq computes it (writers run while
    # this generator is suspended at a yield, so both bounds are read again after one).
    buf, cap, floor = ring.buffer, ring.capacity, ring.start_seq
    while True:
        nxt = ring.next_seq
        oldest = nxt - cap
        if oldest < floor:
            oldest = floor
        if pos < oldest:
            upto = oldest if follow else min(oldest, end)
            lost_from, pos = pos, oldest
            if upto > lost_from:
                yield Lost(LOST_SOURCE_RING, upto - lost_from, -1, time.time_ns(), lost_from)
                continue  # the ring went on while the notice was sent: look again
        if pos >= nxt or (not follow and pos >= end):
            if not follow:
                return
            if idle:
                yield IDLE
            await ring.wait_beyond(pos)
            continue
        e = buf[pos % cap]
        pos += 1
        if e.__class__ is LostRecord:
            yield Lost(e.source, e.count, e.cpu, e.time_ns)
            continue
        if e is None:
            continue
        t = e.time_ns
        if until is not None and t > until:
            if follow or pos >= end:
                return
            continue
        if since is not None and t < since:
            continue
        if match is not None and not match(e):
            continue
        yield e
        sent += 1
        if limit and sent >= limit:
            return
        if history_limit and sent >= history_limit and not follow:
            return

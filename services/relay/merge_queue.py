"""The time-ordered merge of several agents' flow streams, on columns of entries.

Each source (an Upstream) holds what its agent sent, in time order, as parallel
lists of times, serialized responses and node names (entries.py); its buffer is
the sorting buffer. The merge releases runs of entries, never one at a time and
never decoding one, up to a horizon time H: every buffered entry with time <= H
leaves, the sources' runs interleaved by time (a stable sort of runs: equal
times keep source order). H is:

  1. the oldest of the newest buffered times of the open sources, when every
     open source has something buffered: nothing older can still come (a k-way
     merge; exact);
  2. follow only: when more than `max_len` entries are buffered (Hubble's
     SortBufferMaxLen), the time that leaves `max_len` behind;
  3. follow only: the newest time among the entries that have waited `window_ns`
     (Hubble's 1 s drain timeout), so an idle node never holds the others back
     for longer;
  4. a source that finished no longer holds anything back; when none is open,
     everything leaves.

Without follow (a finite history request) rules 2 and 3 are off: a source that
is ahead fills its bounded buffer and waits (gRPC flow control holds its agent),
so memory stays bounded and the order is exact for any amount of history.
Hubble's relay applies rules 2 and 3 to history too and so interleaves long
histories out of order.

This module knows nothing about gRPC or asyncio: time is passed in (ns).
"""
from __future__ import annotations

from bisect import bisect_right
from typing import Protocol, Sequence

from .entries import Columns


class Source(Protocol):
    times: list[int]
    raws: list[bytes]
    nodes: list[str]
    finished: bool

    def __len__(self) -> int: ...

    def waited(self, limit_ns: int) -> int:
        """How many of the oldest buffered entries arrived at or before limit_ns."""

    def consume(self, k: int) -> None:
        """Drops the oldest k entries (they were released)."""

    @property
    def oldest_arrival(self) -> int | None:
        """When the oldest buffered entry arrived (ns), None when empty."""


class MergeQueue:
    def __init__(self, max_len: int = 100, window_ns: int = 1_000_000_000,
                 follow: bool = False) -> None:
        if max_len < 1:
            raise ValueError("max_len must be at least 1")
        if window_ns <= 0:
            raise ValueError("window must be positive")
        self.max_len = max_len
        self.window_ns = window_ns
        self.follow = follow

    def horizon(self, sources: Sequence[Source], now: int) -> int | None:
        """The time up to which entries may leave now; None: nothing may."""
        h: int | None = None
        open_newest = []
        total = 0
        all_buffered = True
        for s in sources:
            n = len(s)
            total += n
            if not s.finished:
                if n:
                    open_newest.append(s.times[-1])
                else:
                    all_buffered = False
        if not total:
            return None
        if all_buffered:  # rules 1 and 4
            h = min(open_newest) if open_newest else _ALL
        if self.follow and h is not _ALL:
            if total > self.max_len:  # rule 2
                ts = sorted(t for s in sources for t in s.times)
                h = _max(h, ts[total - self.max_len - 1])
            limit = now - self.window_ns
            for s in sources:  # rule 3
                m = s.waited(limit) if len(s) else 0
                if m:
                    h = _max(h, max(s.times[:m]))
        return h

    def release(self, sources: Sequence[Source], now: int) -> Columns:
        """The entries that may leave now, oldest first."""
        h = self.horizon(sources, now)
        if h is None:
            return Columns()
        return take(sources, h)

    def drain(self, sources: Sequence[Source]) -> Columns:
        """Everything buffered, oldest first (end of stream)."""
        return take(sources, _ALL)

    def next_deadline(self, sources: Sequence[Source]) -> int | None:
        """When rule 3 may next release something without new input (ns)."""
        if not self.follow:
            return None
        ds = [a for a in (s.oldest_arrival for s in sources) if a is not None]
        return min(ds) + self.window_ns if ds else None


_ALL = 2**63  # a horizon past every time


def _max(a: int | None, b: int) -> int:
    return b if a is None or b > a else a


def take(sources: Sequence[Source], h: int) -> Columns:
    """Removes every entry with time <= h from the sources; returns them in time order."""
    runs: list[tuple[list[int], list[bytes], list[str]]] = []
    for s in sources:
        n = len(s)
        if not n:
            continue
        times = s.times
        k = n if h >= _ALL or times[-1] <= h else bisect_right(times, h)
        if not k:
            continue
        if k == n:
            runs.append((times[:], s.raws[:], s.nodes[:]))
        else:
            runs.append((times[:k], s.raws[:k], s.nodes[:k]))
        s.consume(k)
    if not runs:
        return Columns()
    if len(runs) == 1:
        return Columns(*runs[0])
    ts: list[int] = []
    rs: list[bytes] = []
    ns: list[str] = []
    for t, r, n in runs:
        ts += t
        rs += r
        ns += n
    # Timsort merges the runs (each already sorted) in linear time; stable.
    order = sorted(range(len(ts)), key=ts.__getitem__)
    return Columns([ts[i] for i in order], [rs[i] for i in order], [ns[i] for i in order])

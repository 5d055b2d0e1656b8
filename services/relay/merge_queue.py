"""The time-ordered merge of several agents' GetFlows streams.

Each agent sends its responses in time order; the relay interleaves them into
one stream in time order with a bounded sorting buffer. An item leaves the
buffer (oldest first) when one of these holds:

  1. every open source has at least one item buffered: the oldest buffered item
     is then older than anything still to come (a k-way merge; exact);
  2. follow only: the buffer holds more than `max_len` items (Hubble's
     100-flow buffer); the oldest goes out;
  3. follow only: an item has waited `window_ns` (Hubble's 1 s drain timeout),
     so that an idle node never holds the others' flows back for longer;
  4. a source closes (finished or failed): it no longer holds anything back.

Without follow (a finite history request) rules 2 and 3 are off and the caller
asks `accepts()` before pushing: a source that already has an item buffered
waits while the buffer is full, so the buffer stays bounded and the order is
exact for any amount of history. Hubble's relay applies rules 2 and 3 to
history too and so interleaves long histories out of order.

This module knows nothing about gRPC or asyncio: time is passed in (ns).
"""
from __future__ import annotations

import heapq
from collections import deque
from typing import Generic, Hashable, TypeVar

T = TypeVar("T")


class _Entry(Generic[T]):
    __slots__ = ("key", "seq", "source", "arrival", "item", "done")

    def __init__(self, key: int, seq: int, source: Hashable, arrival: int, item: T) -> None:
        self.key = key
        self.seq = seq
        self.source = source
        self.arrival = arrival
        self.item = item
        self.done = False

    def __lt__(self, other: "_Entry[T]") -> bool:
        return (self.key, self.seq) < (other.key, other.seq)


class MergeQueue(Generic[T]):
    def __init__(self, max_len: int = 100, window_ns: int = 1_000_000_000,
                 follow: bool = False) -> None:
        if max_len < 1:
            raise ValueError("max_len must be at least 1")
        if window_ns <= 0:
            raise ValueError("window must be positive")
        self.max_len = max_len
        self.window_ns = window_ns
        self.follow = follow
        self._heap: list[_Entry[T]] = []
        self._arrivals: deque[_Entry[T]] = deque()  # push order = arrival order
        self._count: dict[Hashable, int] = {}  # buffered items per source (open or not)
        self._open: set[Hashable] = set()
        self._empty_open = 0  # open sources with nothing buffered
        self._seq = 0

    # -- sources ----------------------------------------------------------------
    def add_source(self, source: Hashable) -> None:
        if source in self._open:
            return
        self._open.add(source)
        if not self._count.get(source):
            self._empty_open += 1

    def close_source(self, source: Hashable) -> None:
        if source not in self._open:
            return
        self._open.discard(source)
        if not self._count.get(source):
            self._empty_open -= 1

    @property
    def open_sources(self) -> frozenset[Hashable]:
        return frozenset(self._open)

    def buffered(self, source: Hashable) -> int:
        return self._count.get(source, 0)

    def __len__(self) -> int:
        return len(self._heap)

    # -- items ------------------------------------------------------------------
    def accepts(self, source: Hashable) -> bool:
        """Whether `source` may push now (always in follow mode)."""
        return self.follow or not self._count.get(source) or len(self._heap) < self.max_len

    def push(self, source: Hashable, key: int, item: T, now: int) -> list[T]:
        """Buffers `item` (ordered by `key`, e.g. its time in ns). In follow
        mode returns what had to leave because the buffer overflowed."""
        self._seq += 1
        e = _Entry(key, self._seq, source, now, item)
        heapq.heappush(self._heap, e)
        self._arrivals.append(e)
        n = self._count.get(source, 0)
        self._count[source] = n + 1
        if n == 0 and source in self._open:
            self._empty_open -= 1
        out: list[T] = []
        if self.follow:
            while len(self._heap) > self.max_len:
                out.append(self._pop())
        return out

    def _pop(self) -> T:
        e = heapq.heappop(self._heap)
        e.done = True
        n = self._count[e.source] - 1
        if n:
            self._count[e.source] = n
        else:
            del self._count[e.source]
            if e.source in self._open:
                self._empty_open += 1
        arr = self._arrivals
        while arr and arr[0].done:
            arr.popleft()
        return e.item

    def pop_ready(self, now: int) -> list[T]:
        """Items that may leave now, oldest first."""
        out: list[T] = []
        heap = self._heap
        while heap and self._empty_open == 0:  # rule 1 (and 4: closed sources do not count)
            out.append(self._pop())
        if self.follow:  # rule 3
            limit = now - self.window_ns
            while heap and self._arrivals and self._arrivals[0].arrival <= limit:
                out.append(self._pop())
        return out

    def drain(self) -> list[T]:
        """Everything buffered, oldest first (end of stream)."""
        return [self._pop() for _ in range(len(self._heap))]

    def next_deadline(self) -> int | None:
        """When pop_ready() may next release something without a push (ns)."""
        if not self.follow or not self._arrivals:
            return None
        return self._arrivals[0].arrival + self.window_ns

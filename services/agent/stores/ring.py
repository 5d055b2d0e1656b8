"""The flow ring buffer: fixed capacity, newest overwrite oldest, sequence-numbered.

Every entry written gets the next sequence number; a reader holds a sequence
number and learns exactly how many entries were overwritten under it, which the
observer turns into a LostEvent. Writers never wait for readers. This module is
the ring and nothing else: a history store can sit beside it behind the same
read calls.
"""
from __future__ import annotations

import asyncio
from typing import Generic, Iterable, TypeVar

from webb.timeouts import wait_for

T = TypeVar("T")


def valid_capacity(n: int) -> bool:
    """Hubble's rule: capacity is 2^k - 1 (1, 3, 7, ..., 65535, ...)."""
    return n >= 1 and (n & (n + 1)) == 0


class Ring(Generic[T]):
    def __init__(self, capacity: int, start_seq: int = 0) -> None:
        if not valid_capacity(capacity):
            raise ValueError(f"ring capacity must be 2^n-1 (e.g. 4095, 65535), got {capacity}")
        self.capacity = capacity
        self._buf: list[T | None] = [None] * capacity
        # A history store continues the sequence numbers of a previous run.
        self._start = start_seq
        self._next = start_seq  # sequence number the next write gets
        self._wakeup: asyncio.Future[None] | None = None

    @property
    def buffer(self) -> list[T | None]:
        """The entries, seq % capacity: for a reader that indexes them itself
        (pipeline/selection.py, once per entry sent), with oldest_seq's rule."""
        return self._buf

    @property
    def start_seq(self) -> int:
        """The first seq this ring was given (oldest_seq is never below it)."""
        return self._start

    @property
    def next_seq(self) -> int:
        return self._next

    @property
    def oldest_seq(self) -> int:
        return max(self._start, self._next - self.capacity)

    def __len__(self) -> int:
        return self._next - self.oldest_seq

    def write(self, item: T) -> int:
        seq = self._next
        self._buf[seq % self.capacity] = item
        self._next = seq + 1
        return seq

    def write_many(self, items: Iterable[T]) -> None:
        buf, cap, seq = self._buf, self.capacity, self._next
        for item in items:
            buf[seq % cap] = item
            seq += 1
        self._next = seq
        self.notify()

    def notify(self) -> None:
        w = self._wakeup
        if w is not None:
            self._wakeup = None
            if not w.done():
                w.set_result(None)

    def get(self, seq: int) -> T | None:
        """The entry at seq, or None if it was overwritten or not written yet."""
        if seq < self.oldest_seq or seq >= self._next:
            return None
        return self._buf[seq % self.capacity]

    async def wait_beyond(self, seq: int, timeout: float | None = None) -> bool:
        """Waits until an entry with sequence >= seq exists; False on timeout."""
        while self._next <= seq:
            if self._wakeup is None or self._wakeup.done():
                self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await wait_for(asyncio.shield(self._wakeup), timeout)
            except asyncio.TimeoutError:
                return self._next > seq
        return True

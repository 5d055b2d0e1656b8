"""Persists ingested flows in batches, off the hot path.

Ingest hands each batch of ring records to `on_batch`, which only keeps the list
and the records' raw bytes (a reader may encode a ring record and drop them).
A task hands what collected to one writer thread every `interval` seconds: it
packs the columns, compresses them (zlib releases the GIL) and appends them with
an fsync, so a crash loses at most the batch being written. Until a batch is on
disk it stays readable here (`pending`), so a query never misses the flows between
the ring and the store.

If the disk cannot keep up, the oldest unwritten batches are dropped (counted,
and reported to queries over them as lost): ingest never waits for the disk.
"""
from __future__ import annotations

import asyncio
import bisect
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from webb.timeouts import wait_for

from .batch import pack_batch
from .encoding import capture_raws
from .store import HistoryStore, Removed

log = logging.getLogger(__name__)

FRAME_FLOWS = 16384  # most flows in one frame: a query decompresses one frame at a time
# At low rates a frame waits for this many flows (or MAX_DELAY_S): a frame of a few
# dozen flows compresses to ~45 B/flow, one of a few hundred to ~25 B/flow.
MIN_FRAME_FLOWS = 256
MAX_DELAY_S = 5.0
# Flows waiting for the disk before the oldest are dropped (counted): ~1.5 s at the
# ingest ceiling, ~75 MB of records kept alive at worst.
MAX_PENDING = 1 << 18


@dataclass
class PendingBatch:
    recs: list[Any]
    raws: list[bytes | None]
    first_seq: int
    last_seq: int



class HistoryWriter:
    def __init__(self, store: HistoryStore, wire_of: Callable[[Any, bytes | None], bytes],
                 loop_wire: Callable[[Any], bytes] | None = None, interval: float = 1.0,
                 max_pending: int = MAX_PENDING) -> None:
        self.store = store
        self.wire_of = wire_of  # encodes a record kept as flow.Flow bytes (writer thread)
        # Records without raw bytes (L7 messages) encode themselves and drop their
        # message: that happens on the event loop, like a reader's encoding.
        self.loop_wire = loop_wire
        self.interval = interval
        self.max_pending = max_pending
        self.pending: list[PendingBatch] = []  # not yet on disk, seq order
        self._pending_flows = 0
        self._taken = 0  # pending[:_taken] are being written now
        self._exec = ThreadPoolExecutor(1, thread_name_prefix="history-writer")
        self._wake = asyncio.Event()
        self.dropped: list[Removed] = []  # spans dropped before reaching the disk
        self._oldest_at = 0.0  # when the oldest pending batch arrived (monotonic)
        self.last_flush_s = 0.0

    # -- the ingest side (event loop, hot path: keep it to list operations) ---------

    def on_batch(self, recs: list[Any]) -> None:
        if not recs:
            return
        if not self.pending:
            self._oldest_at = time.monotonic()
        self.pending.append(PendingBatch(recs, capture_raws(recs), recs[0].seq, recs[-1].seq))
        self._pending_flows += len(recs)
        if self._pending_flows > self.max_pending:
            self._drop_oldest()
        if self._pending_flows >= FRAME_FLOWS * 4:
            self._wake.set()  # a burst: write now rather than at the next tick

    def _drop_oldest(self) -> None:
        """The disk is behind: the oldest batch not being written goes, counted."""
        i = self._taken
        if i >= len(self.pending):
            return
        p = self.pending.pop(i)
        self._pending_flows -= len(p.recs)
        self.store.stats.dropped_flows += len(p.recs)
        self.dropped.append(Removed(p.first_seq, p.last_seq, p.recs[0].time_ns,
                                    p.recs[-1].time_ns, len(p.recs)))
        del self.dropped[:-1024]
        log.warning("history: the disk is behind; dropped %d flows", len(p.recs))

    # -- reads --------------------------------------------------------------------

    def batch_at_or_after(self, seq: int) -> PendingBatch | None:
        pend = self.pending
        i = bisect.bisect_left([p.last_seq for p in pend], seq)
        return pend[i] if i < len(pend) else None

    def dropped_in(self, first_seq: int, last_seq: int, since: int | None,
                   until: int | None) -> int:
        n = 0
        for r in self.dropped:
            if r.last_seq < first_seq or r.first_seq > last_seq:
                continue
            if (since is not None and r.max_time < since) or (until is not None and r.min_time > until):
                continue
            n += r.count
        return n

    # -- the writer task ------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if (self.pending and self._pending_flows < MIN_FRAME_FLOWS
                    and time.monotonic() - self._oldest_at < MAX_DELAY_S):
                continue  # a few flows: wait for more rather than write a tiny frame
            try:
                await self.flush()
            except Exception:
                log.exception("history flush failed")

    async def flush(self) -> None:
        """Writes everything pending now; it stays readable until it is on disk."""
        n = len(self.pending)
        if not n:
            await asyncio.get_running_loop().run_in_executor(
                self._exec, self.store.apply_retention, time.time_ns())
            return
        self._taken = n
        batches = self.pending[:n]
        if self.loop_wire is not None:
            for p in batches:
                if None in p.raws:
                    for rec, raw in zip(p.recs, p.raws):
                        if raw is None and rec.wire is None:
                            self.loop_wire(rec)
        t0 = time.perf_counter()
        try:
            await asyncio.get_running_loop().run_in_executor(self._exec, self._write, batches)
        finally:
            del self.pending[:n]
            self._oldest_at = time.monotonic()  # what came meanwhile is at most this old
            self._taken = 0
            self._pending_flows -= sum(len(p.recs) for p in batches)
        self.last_flush_s = time.perf_counter() - t0

    def _write(self, batches: list[PendingBatch]) -> None:
        """Writer thread: frames of at most FRAME_FLOWS flows, then retention."""
        recs: list[Any] = []
        raws: list[bytes | None] = []
        for p in batches:
            recs.extend(p.recs)
            raws.extend(p.raws)
        for i in range(0, len(recs), FRAME_FLOWS):
            r, w = recs[i:i + FRAME_FLOWS], raws[i:i + FRAME_FLOWS]
            payload = pack_batch(r, w, self.wire_of)
            times = [x.time_ns for x in r]
            self.store.append(payload, len(r), r[0].seq, r[-1].seq, min(times), max(times))
        self.store.apply_retention(time.time_ns())

    async def close(self, next_seq: int | None) -> None:
        """Writes what is pending and remembers the next sequence number."""
        try:
            await self.flush()
        finally:
            await asyncio.get_running_loop().run_in_executor(self._exec, self.store.close,
                                                             next_seq)
            self._exec.shutdown(wait=True)

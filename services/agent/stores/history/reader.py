"""GetFlows over the store and the ring as one sequence of flows.

Every flow has a sequence number, monotonic across restarts; the ring holds the
newest span, the writer's pending batches the span on its way to disk, the store
everything older still retained. A history request (since, first, or number
beyond what the ring holds) starts the ring reader (selection.read_flows) at
a sequence number older than the ring; the ring reports the span it no longer
has as lost (HUBBLE_RING_BUFFER), and this reader fills exactly that span from
the store and the pending batches, in sequence order, so the answer continues
into the ring with no duplicate and no gap, and `follow` goes on live.

Each stored flow is encoded and filtered by the same code as a ring flow (the
observer's `match` on a FlowRecord), so filters answer the same on history.

What the store no longer has (deleted by retention, dropped on a full disk) is
reported as a LostEvent before the flows, never as silently fewer flows.
Requests without since/first/number (a plain follow, or "everything held")
read the ring alone, as in Hubble: the store is for asking about the past.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable

from ...pipeline.selection import IDLE, LOST_SOURCE_RING, Lost, ReadRequest, read_flows
from ...pipeline.record import FlowRecord, LostRecord
from ..ring import Ring
from .batch import unpack_batch
from .segment import Frame
from .store import HistoryStore
from .writer import HistoryWriter

Match = Callable[[Any], bool] | None
YIELD_EVERY = 512  # records read between returns to the event loop


def wants_history(req: ReadRequest) -> bool:
    return req.first or req.since_ns is not None or bool(req.number)


class HistoryReader:
    """Called like selection.read_flows; the observer uses it when history is on."""

    def __init__(self, store: HistoryStore, writer: HistoryWriter) -> None:
        self.store = store
        self.writer = writer

    def __call__(self, ring: Ring, req: ReadRequest, match: Match,
                 idle: bool = False) -> AsyncIterator[Any]:
        return self.read(ring, req, match, idle)

    async def read(self, ring: Ring, req: ReadRequest, match: Match,
                   idle: bool = False) -> AsyncIterator[Any]:
        if not wants_history(req):
            async for item in read_flows(ring, req, match, idle=idle):
                yield item
            return
        since, until = req.since_ns, req.until_ns
        end0 = ring.next_seq  # below this: history; from it on: live
        if req.number and not req.first:
            start, lost = await self._newest_start(ring, req, match)
        else:
            start, lost = self._forward_start(ring, since, until)
        if lost:
            yield Lost(LOST_SOURCE_RING, lost, -1, time.time_ns())
        limit = req.number if (req.first or (req.number and not req.follow)) else 0
        sent = 0
        inner = read_flows(ring, req, match, start_seq=start, idle=idle, end_seq=end0)
        try:
            async for item in inner:
                if item is IDLE:
                    yield item
                    continue
                if (isinstance(item, Lost) and item.source == LOST_SOURCE_RING
                        and item.first_seq >= 0):
                    # The span the ring no longer had when the reader got there. Without
                    # follow it ends at end0 (the request's end), whatever ingest added
                    # while the answer was being sent.
                    lo, hi = item.first_seq, item.first_seq + item.count
                    if lo < end0:
                        async for x in self._fill(lo, min(hi, end0), since, until, match):
                            yield x
                            if not isinstance(x, Lost):
                                sent += 1
                                if limit and sent >= limit:
                                    return
                        if hi > end0:  # a follower fell behind the live ring
                            yield Lost(LOST_SOURCE_RING, hi - end0, -1, item.time_ns)
                        continue
                yield item
                if not isinstance(item, Lost):
                    sent += 1
                    if limit and sent >= limit:
                        return
        finally:
            await inner.aclose()

    # -- where a request starts -----------------------------------------------------

    def _forward_start(self, ring: Ring, since: int | None,
                       until: int | None) -> tuple[int | None, int]:
        """(first seq to read, flows of the window no longer stored)."""
        store, writer = self.store, self.writer
        if since is None:
            start = store.first_seq
        else:
            start = store.first_seq_since(since)
        if start is None:
            pb = writer.pending[0] if writer.pending else None
            start = pb.first_seq if pb is not None else None
        if start is None or start >= ring.oldest_seq:
            start = None
        before = start if start is not None else ring.oldest_seq
        if since is None and until is None:
            return start, 0  # "the oldest flows": what retention removed is no part of it
        lost = store.removed_in(0, before - 1, since, until) + writer.dropped_in(0, before - 1, since, until)
        return start, lost

    async def _newest_start(self, ring: Ring, req: ReadRequest,
                            match: Match) -> tuple[int | None, int]:
        """Seq of the Nth newest match, walking back through the ring, then the
        pending batches, then the store."""
        until = req.until_ns
        need = req.number

        def hit(e: Any) -> bool:
            return (e is not None and not isinstance(e, LostRecord)
                    and (until is None or e.time_ns <= until) and (match is None or match(e)))

        pos, oldest = ring.next_seq - 1, ring.oldest_seq
        while pos >= oldest:  # bounded by the ring's capacity
            if hit(ring.get(pos)):
                need -= 1
                if not need:
                    return pos, 0
            pos -= 1
        hi = oldest
        start: int | None = None
        for pb in reversed(list(self.writer.pending)):
            for r in reversed(pb.recs):
                if r.seq < hi and hit(r):
                    need -= 1
                    start = r.seq
                    if not need:
                        return start, 0
            hi = min(hi, pb.first_seq)
        frame = self.store.frame_before(hi)
        steps = len(self.store.frames) + 1
        unreadable = 0
        while frame is not None and steps:  # bounded by the number of frames
            steps -= 1
            if until is None or frame.min_time <= until:
                recs = await self._load(frame, match)
                if recs is None:  # removed meanwhile, or failed its checksum
                    unreadable += frame.last_seq - frame.first_seq + 1
                for i, r in enumerate(reversed(recs or [])):
                    if r.seq < hi and hit(r):
                        need -= 1
                        start = r.seq
                        if not need:
                            return start, unreadable
                    if i % YIELD_EVERY == YIELD_EVERY - 1:
                        await asyncio.sleep(0)  # filters cost: let ingest run
            hi = frame.first_seq
            frame = self.store.frame_before(hi)
            await asyncio.sleep(0)  # a long walk must not hold the loop
        # Fewer matches than asked for: all there are. What retention took is reported
        # only for a window the request named (until), as "the newest N" has no start.
        lost = unreadable
        if until is not None:
            first = start if start is not None else hi
            lost += (self.store.removed_in(0, first - 1, None, until)
                     + self.writer.dropped_in(0, first - 1, None, until))
        return (start if start is not None and start < ring.oldest_seq else None), lost

    # -- filling a span the ring no longer has ---------------------------------------

    async def _load(self, frame: Frame, match: Match = None) -> list[FlowRecord] | None:
        """A frame's records; with a match that has a pre-filter for stored records
        (pipeline/prefilter.py), only those that can match (what a scan skips anyway)."""
        keep = getattr(match, "keep_stored", None)

        def load() -> list[FlowRecord] | None:
            data = self.store.read_frame(frame)
            return None if data is None else unpack_batch(data, keep)
        return await asyncio.get_running_loop().run_in_executor(None, load)

    async def _fill(self, lo: int, hi: int, since: int | None, until: int | None,
                    match: Match) -> AsyncIterator[Any]:
        """Flows with lo <= seq < hi from the store and the pending batches."""
        store, writer = self.store, self.writer
        lost = (store.removed_in(lo, hi - 1, since, until)
                + writer.dropped_in(lo, hi - 1, since, until))
        if lost:
            yield Lost(LOST_SOURCE_RING, lost, -1, time.time_ns())

        def wanted(r: Any) -> bool:
            t = r.time_ns
            return ((since is None or t >= since) and (until is None or t <= until)
                    and (match is None or match(r)))

        pos = lo
        steps = len(store.frames) + len(writer.pending) + 2
        while pos < hi and steps:  # bounded: each step moves pos past a frame or batch
            steps -= 1
            frame = store.frame_at_or_after(pos)
            if frame is not None and frame.first_seq < hi:
                if ((since is None or frame.max_time >= since)
                        and (until is None or frame.min_time <= until)):
                    recs = await self._load(frame, match)
                    if recs is None:  # removed meanwhile, or failed its checksum: say so
                        yield Lost(LOST_SOURCE_RING, frame.last_seq - frame.first_seq + 1, -1,
                                   time.time_ns())
                    for i, r in enumerate(recs or []):
                        if pos <= r.seq < hi and wanted(r):
                            yield r
                        if i % YIELD_EVERY == YIELD_EVERY - 1:
                            await asyncio.sleep(0)  # filters cost: let ingest run
                pos = max(pos, frame.last_seq + 1)
                await asyncio.sleep(0)
                continue
            pb = writer.batch_at_or_after(pos)
            if pb is not None and pb.first_seq < hi:
                for r in list(pb.recs):
                    if pos <= r.seq < hi and wanted(r):
                        yield r
                pos = max(pos, pb.last_seq + 1)
                continue
            return

"""From perf buffers to the ring: drain on a timer, decode in a batch, enrich, store.

bcc's per-event callback only copies bytes into a list; the kernel wakes user space
once per `wakeup_events` records and the agent drains every `interval` seconds,
so a busy datapath costs a few microseconds of Python per event. The list is
turned into ring records every CHUNK events, so a drain after a stall (bcc reads
whole buffers) never holds the backlog at once. Records keep the raw event bytes.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from bisect import bisect_left
from operator import attrgetter
from typing import Callable

from ..datapath.event import EVENT_SIZE, HEAD_STRUCT
from ..stores.endpoints import Endpoint, EndpointRegistry
from .l7.tracker import L7Tracker
from .record import HOST, REMOTE_NODE, WORLD, FlowRecord, L7Record, LostRecord
from ..stores.ring import Ring

log = logging.getLogger(__name__)

LOST_SOURCE_PERF = 1  # flow.LostEventSource.PERF_EVENT_RING_BUFFER


CHUNK = 8192  # most raw events held in one list: a drain after a stall goes by chunks

# A drain reads the per-CPU buffers one after the other, so an event stamped on one
# CPU just before the drain may land in its buffer after that buffer was read, and
# come one drain later than newer events of another CPU. The timer drain therefore
# releases only records stamped HOLD_NS before it began; the rest wait one drain and
# are sorted with what comes next, so each node's stream leaves in time order. (A
# program's run from its timestamp to its perf write is microseconds; the margin
# also covers a vCPU paused in between.)
HOLD_NS = 5_000_000
# The kernel stamps CLOCK_MONOTONIC; flows carry wall time. The offset between the
# two is taken from a tight bracket of readings and refreshed this often, not read
# per drain: two bare readings a preemption apart would shift a whole drain's times.
OFFSET_REFRESH_NS = 1_000_000_000


def wall_offset_ns(tries: int = 5) -> int:
    """time_ns() - monotonic_ns(), from the reading pair least disturbed by scheduling."""
    best_gap, best = None, 0
    for _ in range(tries):
        m1 = time.monotonic_ns()
        w = time.time_ns()
        m2 = time.monotonic_ns()
        if best_gap is None or m2 - m1 < best_gap:
            best_gap, best = m2 - m1, w - (m1 + m2) // 2
    return best


class Ingest:
    def __init__(self, ring: Ring, registry: EndpointRegistry, node_ips: set[bytes],
                 on_batch: Callable[[list[FlowRecord]], None] | None = None,
                 chunk: int = CHUNK) -> None:
        self.ring = ring
        self.registry = registry
        self.node_ips = node_ips  # packed addresses of this node: reserved:host
        self.on_batch = on_batch
        self.chunk = chunk
        self._raw: list[bytes] = []
        self._lost: list[tuple[int, int]] = []
        self.seen_events = 0
        self.lost_events = 0
        self.remote_node_ips: set[bytes] = set()
        # Set by the agent when policies give world addresses CIDR identities.
        self.cidr_endpoint: Callable[[int, bytes], Endpoint | None] | None = None
        # L7 payload records (their own ring buffer) and what turns them into messages.
        self.l7: L7Tracker | None = None
        self._l7_raw: list[bytes] = []
        self._l7_msgs: list = []  # already-built L7 messages (add_l7)
        # L7 messages built on demand, once per drain (the L7 proxy's flows: building
        # them per request would put that work on the request's path).
        self.l7_source: Callable[[], list] | None = None
        # Records of the last timer drain too new to release (see HOLD_NS).
        self._held: list[FlowRecord] = []
        self._offset = wall_offset_ns()
        self._offset_at = time.monotonic_ns()

    # bcc callbacks: keep them minimal, they run once per event.
    def on_event(self, cpu: int, data: int, size: int) -> None:
        raw = self._raw
        raw.append(ctypes.string_at(data, EVENT_SIZE))
        if len(raw) >= self.chunk:
            # bcc's consume drains whole buffers: after a stall that is the whole
            # backlog, so it goes to the ring a chunk at a time.
            try:
                self.process()
            except Exception:  # an exception must not unwind through bcc's C code
                log.exception("ingest chunk failed")

    def on_l7_batch(self, raws: list[bytes]) -> None:
        """A drain's records of the L7 ring buffer (datapath/ringbuf.py)."""
        self._l7_raw.extend(raws)

    def on_lost(self, *args: int) -> None:
        # bcc passes (lost,) or (cpu, lost) depending on version; the L7 ring buffer's
        # losses come as (lost,) too (datapath/loader.py, from the programs' count)
        lost = args[-1]
        cpu = args[0] if len(args) > 1 else -1
        self._lost.append((cpu, lost))

    def _endpoint(self, packed: bytes, family: int = 4) -> Endpoint:
        """An address that is no known endpoint (process() looked that up first)."""
        if packed in self.node_ips:
            return HOST
        if packed in self.remote_node_ips:
            return REMOTE_NODE
        if self.cidr_endpoint is not None:
            return self.cidr_endpoint(family, packed) or WORLD
        return WORLD

    def process(self, raws: list[bytes] | None = None, hold_from_ns: int | None = None) -> int:
        """Turns the collected raw events into ring entries; returns how many.

        Records keep the raw bytes: only the kernel time and the addresses are read
        here (no full decode, no per-event tuple kept). With hold_from_ns (kernel
        monotonic time), records stamped at or after it wait for the next call;
        without it everything held is released too."""
        if raws is None:
            raws, self._raw = self._raw, []
        lost, self._lost = self._lost, []
        l7raws, self._l7_raw = self._l7_raw, []
        held, self._held = self._held, []
        msgs, self._l7_msgs = self._l7_msgs, []
        if self.l7_source is not None:
            msgs.extend(self.l7_source())
        if not raws and not lost and not l7raws and not held and not msgs:
            return 0
        mono = time.monotonic_ns()
        if mono - self._offset_at >= OFFSET_REFRESH_NS:
            self._offset, self._offset_at = wall_offset_ns(), mono
        offset = self._offset
        head = HEAD_STRUCT.unpack_from
        get = self.registry.by_packed.get
        endpoint = self._endpoint
        recs = held
        append = recs.append
        for raw in raws:
            ts, saddr, daddr, fam = head(raw)
            append(FlowRecord(raw, ts + offset, get(saddr) or endpoint(saddr, fam),
                              get(daddr) or endpoint(daddr, fam)))
        if l7raws and self.l7 is not None:
            msgs.extend(self.l7.process(l7raws, offset))
        for m in msgs:
            ev = m.ev
            append(L7Record(m, m.time_ns, get(ev.saddr) or endpoint(ev.saddr, ev.family),
                            get(ev.daddr) or endpoint(ev.daddr, ev.family)))
        # Per-CPU buffers deliver out of order across CPUs: order by kernel time.
        recs.sort(key=_time_ns)
        if hold_from_ns is not None and recs:
            cut = bisect_left(recs, hold_from_ns + offset, key=_time_ns)
            recs, self._held = recs[:cut], recs[cut:]
            if not recs and not lost:
                return 0
        entries: list[FlowRecord | LostRecord] = []
        now = time.time_ns()
        for cpu, n in lost:
            self.lost_events += n
            entries.append(LostRecord(LOST_SOURCE_PERF, n, cpu, now))
        entries.extend(recs)
        seq = self.ring.next_seq
        for e in entries:
            e.seq = seq
            seq += 1
        self.ring.write_many(entries)
        self.seen_events += len(recs)
        if self.on_batch is not None and recs:
            self.on_batch(recs)
        if lost:
            log.warning("perf buffer lost %d events", sum(n for _, n in lost))
        return len(entries)

    def add_l7(self, messages: list) -> None:
        """L7 messages from outside the datapath (the L7 proxy): they go to the ring with
        the next drain, sorted and held back with the datapath's records."""
        self._l7_msgs.extend(messages)

    async def run(self, consume: Callable[[], None], interval: float = 0.01) -> None:
        while True:
            try:
                start = time.monotonic_ns()
                consume()
                self.process(hold_from_ns=start - HOLD_NS)
            except Exception:
                log.exception("ingest batch failed")
            await asyncio.sleep(interval)


_time_ns = attrgetter("time_ns")

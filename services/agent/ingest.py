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
from operator import attrgetter
from typing import Callable

from .datapath.event import EVENT_SIZE, HEAD_STRUCT
from .endpoint import Endpoint, EndpointRegistry
from .l7.tracker import L7Tracker
from .record import HOST, REMOTE_NODE, WORLD, FlowRecord, L7Record, LostRecord
from .ring import Ring

log = logging.getLogger(__name__)

LOST_SOURCE_PERF = 1  # flow.LostEventSource.PERF_EVENT_RING_BUFFER


CHUNK = 8192  # most raw events held in one list: a drain after a stall goes by chunks


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
        # L7 payload records (their own perf buffer) and what turns them into messages.
        self.l7: L7Tracker | None = None
        self._l7_raw: list[bytes] = []

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

    def on_l7_event(self, cpu: int, data: int, size: int) -> None:
        self._l7_raw.append(ctypes.string_at(data, size))

    def on_lost(self, *args: int) -> None:
        # bcc passes (lost,) or (cpu, lost) depending on version
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

    def process(self, raws: list[bytes] | None = None) -> int:
        """Turns the collected raw events into ring entries; returns how many.

        Records keep the raw bytes: only the kernel time and the addresses are read
        here (no full decode, no per-event tuple kept)."""
        if raws is None:
            raws, self._raw = self._raw, []
        lost, self._lost = self._lost, []
        l7raws, self._l7_raw = self._l7_raw, []
        if not raws and not lost and not l7raws:
            return 0
        offset = time.time_ns() - time.monotonic_ns()
        head = HEAD_STRUCT.unpack_from
        get = self.registry.by_packed.get
        endpoint = self._endpoint
        recs = []
        append = recs.append
        for raw in raws:
            ts, saddr, daddr, fam = head(raw)
            append(FlowRecord(raw, ts + offset, get(saddr) or endpoint(saddr, fam),
                              get(daddr) or endpoint(daddr, fam)))
        if l7raws and self.l7 is not None:
            for m in self.l7.process(l7raws, offset):
                ev = m.ev
                append(L7Record(m, m.time_ns, get(ev.saddr) or endpoint(ev.saddr, ev.family),
                                get(ev.daddr) or endpoint(ev.daddr, ev.family)))
        # Per-CPU buffers deliver out of order across CPUs: order by kernel time.
        recs.sort(key=_time_ns)
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
        """L7 messages from outside the datapath (the L7 proxy) into the ring."""
        get = self.registry.by_packed.get
        endpoint = self._endpoint
        recs = [L7Record(m, m.time_ns, get(m.ev.saddr) or endpoint(m.ev.saddr, m.ev.family),
                         get(m.ev.daddr) or endpoint(m.ev.daddr, m.ev.family)) for m in messages]
        seq = self.ring.next_seq
        for r in recs:
            r.seq = seq
            seq += 1
        self.ring.write_many(recs)
        self.seen_events += len(recs)
        if self.on_batch is not None and recs:
            self.on_batch(recs)

    async def run(self, consume: Callable[[], None], interval: float = 0.01) -> None:
        while True:
            try:
                consume()
                self.process()
            except Exception:
                log.exception("ingest batch failed")
            await asyncio.sleep(interval)


_time_ns = attrgetter("time_ns")

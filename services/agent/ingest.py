"""From perf buffers to the ring: drain on a timer, decode in a batch, enrich, store.

bcc's per-event callback only copies bytes into a list; the kernel wakes user space
once per `wakeup_events` records and the agent drains every `interval` seconds,
so a busy datapath costs about a microsecond of Python per event.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from typing import Callable

from .datapath.event import EVENT_SIZE, EVENT_STRUCT, FlowEvent
from .endpoint import Endpoint, EndpointRegistry
from .record import HOST, REMOTE_NODE, WORLD, FlowRecord, LostRecord
from .ring import Ring

log = logging.getLogger(__name__)

LOST_SOURCE_PERF = 1  # flow.LostEventSource.PERF_EVENT_RING_BUFFER


class Ingest:
    def __init__(self, ring: Ring, registry: EndpointRegistry, node_ips: set[bytes],
                 on_batch: Callable[[list[FlowRecord]], None] | None = None) -> None:
        self.ring = ring
        self.registry = registry
        self.node_ips = node_ips  # packed addresses of this node: reserved:host
        self.on_batch = on_batch
        self._raw: list[bytes] = []
        self._lost: list[tuple[int, int]] = []
        self.seen_events = 0
        self.lost_events = 0
        self.remote_node_ips: set[bytes] = set()
        # Set by the agent when policies give world addresses CIDR identities.
        self.cidr_endpoint: Callable[[int, bytes], Endpoint | None] | None = None

    # bcc callbacks: keep them minimal, they run once per event.
    def on_event(self, cpu: int, data: int, size: int) -> None:
        self._raw.append(ctypes.string_at(data, EVENT_SIZE))

    def on_lost(self, *args: int) -> None:
        # bcc passes (lost,) or (cpu, lost) depending on version
        lost = args[-1]
        cpu = args[0] if len(args) > 1 else -1
        self._lost.append((cpu, lost))

    def _endpoint(self, packed: bytes, family: int = 4):  # type: ignore[no-untyped-def]
        ep = self.registry.by_packed.get(packed)
        if ep is not None:
            return ep
        if packed in self.node_ips:
            return HOST
        if packed in self.remote_node_ips:
            return REMOTE_NODE
        if self.cidr_endpoint is not None:
            return self.cidr_endpoint(family, packed) or WORLD
        return WORLD

    def process(self, raws: list[bytes] | None = None) -> int:
        """Turns the collected raw events into ring entries; returns how many."""
        if raws is None:
            raws, self._raw = self._raw, []
        lost, self._lost = self._lost, []
        if not raws and not lost:
            return 0
        offset = time.time_ns() - time.monotonic_ns()
        unpack = EVENT_STRUCT.unpack_from
        make = FlowEvent._make
        by_packed = self.registry.by_packed
        endpoint = self._endpoint
        recs = []
        for raw in raws:
            ev = make(unpack(raw))
            src = by_packed.get(ev.saddr) or endpoint(ev.saddr, ev.family)
            dst = by_packed.get(ev.daddr) or endpoint(ev.daddr, ev.family)
            recs.append(FlowRecord(ev, ev.ts + offset, src, dst))
        # Per-CPU buffers deliver out of order across CPUs: order by kernel time.
        recs.sort(key=lambda r: r.time_ns)
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

    async def run(self, consume: Callable[[], None], interval: float = 0.01) -> None:
        while True:
            try:
                consume()
                self.process()
            except Exception:
                log.exception("ingest batch failed")
            await asyncio.sleep(interval)

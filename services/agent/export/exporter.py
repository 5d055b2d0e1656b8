"""Hubble's flow exporter: every flow (allow/deny filtered, field masked) as one JSON
line `{"flow": {...}, "node_name": "...", "time": "..."}` (observer.ExportEvent in
protojson with proto names) in a rotated file that log shippers read.

Off the hot path like the history writer: ingest hands batches to `on_batch`
(a list append); a task passes them every `interval` to one thread that encodes,
filters and writes. If the thread falls behind by more than max_pending flows,
the oldest batches are dropped and a lost_events line (OBSERVER_EVENTS_QUEUE,
Hubble's "observer input queue was full") says how many, so a reader of the
file is never silently short of flows.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from google.protobuf import field_mask_pb2

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.filters import build_filter
from webb.protojson import line as _line

from ..stores.history.encoding import capture_raws
from .rotate import RotatingFile

log = logging.getLogger(__name__)

LOST_SOURCE_QUEUE = 2  # flow.LostEventSource.OBSERVER_EVENTS_QUEUE
MAX_PENDING = 1 << 18



class FlowExporter:
    def __init__(self, out: RotatingFile, wire_of: Callable[[Any, bytes | None], bytes],
                 allow: Sequence[fpb.FlowFilter] = (), deny: Sequence[fpb.FlowFilter] = (),
                 fieldmask: field_mask_pb2.FieldMask | None = None,
                 loop_wire: Callable[[Any], bytes] | None = None, interval: float = 0.5,
                 max_pending: int = MAX_PENDING, node_name: str = "") -> None:
        self.out = out
        self.wire_of = wire_of  # thread-safe encoding from captured raw bytes
        self.loop_wire = loop_wire  # records without raw bytes, encoded on the loop
        self.pred = build_filter(list(allow), list(deny)) if (allow or deny) else None
        self.mask = fieldmask
        self.interval = interval
        self.max_pending = max_pending
        self.node_name = node_name
        self.pending: list[tuple[list[Any], list[bytes | None]]] = []
        self._pending_flows = 0
        self._lost = 0
        self.exported = 0
        self.filtered = 0
        self.lost_total = 0
        self.errors = 0
        self._exec = ThreadPoolExecutor(1, thread_name_prefix="flow-exporter")

    def on_batch(self, recs: list[Any]) -> None:
        if not recs:
            return
        self.pending.append((recs, capture_raws(recs)))
        self._pending_flows += len(recs)
        while self._pending_flows > self.max_pending and len(self.pending) > 1:
            old, _ = self.pending.pop(0)
            self._pending_flows -= len(old)
            self._lost += len(old)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:
                log.exception("flow export failed")

    async def flush(self) -> None:
        batches, self.pending = self.pending, []
        self._pending_flows = 0
        lost, self._lost = self._lost, 0
        if not batches and not lost:
            return
        if self.loop_wire is not None:
            for recs, raws in batches:
                if None in raws:
                    for rec, raw in zip(recs, raws):
                        if raw is None and rec.wire is None:
                            self.loop_wire(rec)
        await asyncio.get_running_loop().run_in_executor(self._exec, self._write, batches, lost)

    def _write(self, batches: list[tuple[list[Any], list[bytes | None]]], lost: int) -> None:
        lines: list[bytes] = []
        if lost:
            self.lost_total += lost
            ev = opb.ExportEvent(lost_events=fpb.LostEvent(source=LOST_SOURCE_QUEUE,
                                                           num_events_lost=lost),
                                 node_name=self.node_name)
            ev.time.FromNanoseconds(time.time_ns())
            lines.append(_line(ev))
            log.warning("flow export fell behind: %d flows not exported", lost)
        pred, mask, wire_of = self.pred, self.mask, self.wire_of
        for recs, raws in batches:
            for rec, raw in zip(recs, raws):
                ev = opb.ExportEvent()
                try:
                    # Parsed straight into the event: no second copy of the flow.
                    ev.flow.MergeFromString(wire_of(rec, raw))
                except Exception:  # one bad record must not stop the export
                    self.errors += 1
                    log.exception("flow export: cannot encode a record")
                    continue
                flow = ev.flow
                if pred is not None and not pred(flow):
                    self.filtered += 1
                    continue
                ev.node_name = flow.node_name
                ev.time.CopyFrom(flow.time)
                if mask is not None:
                    full = fpb.Flow()
                    full.CopyFrom(flow)
                    ev.ClearField("flow")
                    mask.MergeMessage(full, ev.flow)
                    ev.flow.SetInParent()
                lines.append(_line(ev))
        try:
            self.out.write(b"".join(lines))
            self.out.flush()
            self.exported += len(lines) - (1 if lost else 0)
        except OSError as e:
            self.errors += 1
            log.error("flow export: writing %s: %s", self.out.path, e)

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            await asyncio.get_running_loop().run_in_executor(self._exec, self.out.close)
            self._exec.shutdown(wait=True)

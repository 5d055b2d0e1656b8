"""The exporter's flows: the relay's (or one agent's) stream, followed with webb.flow_follow.

- Batches (webb.stream.FlowStream/GetFlowBatches), or GetFlows from a Hubble server.
- First connection: ``follow`` with ``since`` = the exporter's start, so the history
  already in the ring buffers (from before the exporter ran) is not counted.
- Reconnection: the follower replays from the newest time counted minus ``overlap``
  and skips what was already counted (exact entries, not timestamps), so flows and
  lost-event notices that happened while the stream was down are counted once.
- A consumer too slow for the stream: the follower sheds flows and hands a LostEvent
  in their place, which ``hubble_lost_events_total{source="observer_events_queue"}``
  counts; nothing is dropped silently.

Counters therefore only move forward. A flow older than the replay point that
reaches the exporter late (a node lagging by more than ``overlap``) is not counted.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import grpc

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.backoff import Backoff
from webb.flow_follow import Batch, FlowFollower, FollowStats, ns_ts, ts_ns

log = logging.getLogger(__name__)

__all__ = ["CHANNEL_OPTIONS", "FlowSource", "FlowSourceConfig", "SourceStats", "ns_ts", "ts_ns"]

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.http2.bdp_probe", 0),
    # Come back quickly when the relay or agent restarts (gRPC's default backs off to 2 min).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

_parse = opb.GetFlowsResponse.FromString


class SourceStats:
    """What /healthz and the exporter's own metrics say about the stream."""

    def __init__(self, follow: FollowStats) -> None:
        self._f = follow
        self.flows = 0        # handed to the pipeline
        self.lost_notices = 0

    connected = property(lambda self: self._f.connected)
    reconnects = property(lambda self: self._f.reconnects)
    duplicates = property(lambda self: self._f.duplicates)
    too_old = property(lambda self: self._f.too_old)
    shed = property(lambda self: self._f.shed)
    mode = property(lambda self: self._f.mode)
    last_flow_ns = property(lambda self: self._f.last_time_ns)
    since_ns = property(lambda self: self._f.since_ns)

    @property
    def last_error(self) -> str:
        f = self._f
        return "" if f.state in ("live", "history") else f.error


@dataclass
class FlowSourceConfig:
    target: str
    overlap_s: float = 2.0
    backoff_min_s: float = 0.2
    backoff_max_s: float = 5.0
    connect_warn_s: float = 3.0
    start_ns: int = field(default_factory=time.time_ns)
    max_pending: int = 100_000  # flows between the stream and the handlers
    shed_after_s: float = 1.0


class FlowSource:
    """Hands each flow batch to ``on_flows`` (a list of flow.Flow; with ``encoded``, a
    list of the encoded GetFlowsResponses that carry them) and each lost-event notice
    to ``on_lost``."""

    def __init__(self, config: FlowSourceConfig,
                 on_flows: Callable[[Sequence], None],
                 on_lost: Callable[[fpb.LostEvent], None], *, encoded: bool = False) -> None:
        self.config = config
        self.on_flows = on_flows
        self.on_lost = on_lost
        self.encoded = encoded
        self.connected_event = asyncio.Event()
        self.follower: FlowFollower | None = None
        self._follow_stats = FollowStats()
        self.stats = SourceStats(self._follow_stats)

    def _on_state(self, s: FollowStats) -> None:
        if s.state == "live":
            self.connected_event.set()
        else:
            self.connected_event.clear()

    def handle(self, batch: Batch) -> None:
        flows: list = []
        add = flows.append
        if self.encoded:
            for raw in batch.raw:  # the fallback's decoded batches keep their bytes too
                b = raw[:1]
                if b == b"\n":
                    add(raw)
                elif b == b"\x1a":
                    self._lost(_parse(raw).lost_events)
        elif batch.decoded is not None:
            for resp in batch.decoded:
                which = resp.WhichOneof("response_types")
                if which == "flow":
                    add(resp.flow)
                elif which == "lost_events":
                    self._lost(resp.lost_events)
        else:
            for raw in batch.raw:
                b = raw[:1]
                if b == b"\n":
                    add(_parse(raw).flow)
                elif b == b"\x1a":
                    self._lost(_parse(raw).lost_events)
        if flows:
            self.stats.flows += len(flows)
            self.on_flows(flows)

    def _lost(self, ev: fpb.LostEvent) -> None:
        self.stats.lost_notices += 1
        self.on_lost(ev)

    async def run(self) -> None:
        cfg = self.config
        channel = grpc.aio.insecure_channel(cfg.target, options=CHANNEL_OPTIONS)
        try:
            self.follower = FlowFollower(
                channel, since_ns=cfg.start_ns, overlap_s=cfg.overlap_s,
                max_pending=cfg.max_pending, shed_after_s=cfg.shed_after_s,
                backoff=Backoff(cfg.backoff_min_s, cfg.backoff_max_s), name="webb-metrics",
                target=cfg.target, connect_warn_s=cfg.connect_warn_s, on_state=self._on_state)
            # the stats object stays the one /healthz and the self-metrics hold
            self.follower.stats = self._follow_stats
            handle = self.handle
            async for batch in self.follower.follow():
                handle(batch)
        finally:
            await channel.close()

"""Follows GetFlows on the relay (or one agent) and survives its restarts without
counting a flow twice.

- First connection: ``follow`` with ``since`` = the exporter's start, so the
  history already in the ring buffers (from before the exporter ran) is not
  counted.
- Reconnection: ``since`` = the newest flow time counted minus ``overlap``, so
  the flows that happened while the stream was down are replayed from the ring
  buffers and counted once. The overlap covers flows of several nodes arriving
  out of time order through the relay; flows inside it are told apart by their
  ``uuid`` (remembered for ``overlap`` seconds of flow time) and skipped when seen
  before. Flows older than the replay point are skipped.
- Lost-event notices are deduplicated the same way (by node, time, source, count).

Counters therefore only move forward. A flow older than the replay point that
reaches the exporter late (a node lagging by more than ``overlap``) is not counted.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc
from webb.backoff import Backoff

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.http2.bdp_probe", 0),
    # Come back quickly when the relay or agent restarts (gRPC's default backs off to 2 min).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def ts_ns(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def ns_ts(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


@dataclass
class SourceStats:
    connected: bool = False
    connects: int = 0
    reconnects: int = 0
    flows: int = 0
    duplicates: int = 0
    too_old: int = 0
    lost_notices: int = 0
    last_error: str = ""
    last_flow_ns: int = 0
    since_ns: int = 0
    connected_at: float = 0.0


class Deduper:
    """Remembers the ids of recently counted items by item time, for ``window_ns``."""

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self.high_ns = 0  # newest item time seen
        self._order: collections.deque[tuple[int, object]] = collections.deque()
        self._ids: set[object] = set()
        self.check_until_ns = -1  # items newer than this cannot be repeats

    def replay_from(self, floor_ns: int) -> int:
        """Called on reconnect: the replay starts at the returned time."""
        self.check_until_ns = self.high_ns
        return max(floor_ns, self.high_ns - self.window_ns) if self.high_ns else floor_ns

    def seen(self, t_ns: int, ident: object) -> bool:
        """True if the item was already counted; otherwise records it."""
        if t_ns <= self.check_until_ns and ident in self._ids:
            return True
        self._ids.add(ident)
        order = self._order
        order.append((t_ns, ident))
        if t_ns > self.high_ns:
            self.high_ns = t_ns
            horizon = t_ns - self.window_ns
            while order and order[0][0] < horizon:
                self._ids.discard(order.popleft()[1])
        return False

    def __len__(self) -> int:
        return len(self._ids)


@dataclass
class FlowSourceConfig:
    target: str
    overlap_s: float = 2.0
    backoff_min_s: float = 0.2
    backoff_max_s: float = 5.0
    connect_warn_s: float = 3.0
    start_ns: int = field(default_factory=time.time_ns)


class FlowSource:
    def __init__(self, config: FlowSourceConfig, on_flow: Callable[[fpb.Flow], None],
                 on_lost: Callable[[fpb.LostEvent], None]) -> None:
        self.config = config
        self.on_flow = on_flow
        self.on_lost = on_lost
        self.stats = SourceStats()
        window = int(config.overlap_s * 1e9)
        self.flows_seen = Deduper(window)
        self.lost_seen = Deduper(window)
        self.floor_ns = config.start_ns  # nothing older is ever counted
        self.connected_event = asyncio.Event()

    def request(self) -> opb.GetFlowsRequest:
        since = self.flows_seen.replay_from(self.floor_ns)
        self.lost_seen.replay_from(self.floor_ns)
        self.floor_ns = since
        self.stats.since_ns = since
        return opb.GetFlowsRequest(follow=True, since=ns_ts(since))

    def handle(self, resp: opb.GetFlowsResponse) -> None:
        which = resp.WhichOneof("response_types")
        if which == "flow":
            flow = resp.flow
            t = ts_ns(flow.time)
            if t < self.floor_ns:
                self.stats.too_old += 1
                return
            ident = flow.uuid or flow.SerializeToString(deterministic=True)
            if self.flows_seen.seen(t, ident):
                self.stats.duplicates += 1
                return
            self.stats.flows += 1
            if t > self.stats.last_flow_ns:
                self.stats.last_flow_ns = t
            self.on_flow(flow)
        elif which == "lost_events":
            ev = resp.lost_events
            t = ts_ns(resp.time) if resp.HasField("time") else time.time_ns()
            if t < self.floor_ns:
                return
            ident = (resp.node_name, t, ev.source, ev.num_events_lost,
                     ev.cpu.value if ev.HasField("cpu") else -1)
            if self.lost_seen.seen(t, ident):
                return
            self.stats.lost_notices += 1
            self.on_lost(ev)

    async def run(self) -> None:
        cfg = self.config
        backoff = Backoff(cfg.backoff_min_s, cfg.backoff_max_s)
        while True:
            channel = grpc.aio.insecure_channel(cfg.target, options=CHANNEL_OPTIONS)
            call = None
            try:
                await self._wait_ready(channel)
                stub = observer_pb2_grpc.ObserverStub(channel)
                call = stub.GetFlows(self.request())
                self._connected()
                backoff.reset()
                handle = self.handle
                async for resp in call:
                    handle(resp)
                self.stats.last_error = "stream ended"
                log.warning("GetFlows on %s ended; reconnecting", cfg.target)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                msg = f"{e.code().name}: {e.details()}"
                if self.stats.connected or msg != self.stats.last_error:
                    log.warning("GetFlows on %s: %s; retrying", cfg.target, msg)
                self.stats.last_error = msg
            finally:
                self._disconnected()
                if call is not None:
                    call.cancel()
                await channel.close()
            await backoff.sleep()

    async def _wait_ready(self, channel: grpc.aio.Channel) -> None:
        """Waits for the channel (gRPC keeps reconnecting); says so while it cannot connect."""
        warned = False
        while True:
            try:
                await asyncio.wait_for(channel.channel_ready(), self.config.connect_warn_s)
                return
            except asyncio.TimeoutError:
                self.stats.last_error = f"cannot connect to {self.config.target}"
                if not warned:
                    log.warning("cannot connect to %s yet; still trying", self.config.target)
                    warned = True

    def _connected(self) -> None:
        s = self.stats
        s.connected = True
        s.connects += 1
        if s.connects > 1:
            s.reconnects += 1
        s.connected_at = time.time()
        s.last_error = ""
        self.connected_event.set()
        log.info("following flows on %s (since %s)", self.config.target,
                 time.strftime("%H:%M:%S", time.localtime(s.since_ns / 1e9)))

    def _disconnected(self) -> None:
        self.stats.connected = False
        self.connected_event.clear()

"""One agent's flow stream for one client request, behind a bounded buffer.

The agent is asked for webb.stream.FlowStream/GetFlowBatches; an agent without it
(UNIMPLEMENTED: a Cilium agent, a webb agent with --disable-batch-service, a
Hubble Relay) is asked for Hubble's GetFlows instead, and the peer remembers that
for later requests on the same connection. Either way what arrives is kept as
entries (entries.py: time, serialized response, node), never decoded beyond
the top-level fields of a GetFlowsResponse that came alone.

The buffer holds about `maxsize` entries (a batch is taken whole, so at most
maxsize plus one batch); the request's merge takes runs from it. When it is full:

- the reader waits: the agent's stream waits too (HTTP/2 flow control), and
  the agent's reader of its ring falls behind; if the ring overtakes it, the
  agent sends a LostEvent (HUBBLE_RING_BUFFER) that reaches the client. This is
  Hubble Relay's behaviour, and all that happens without follow or while the
  client keeps reading (the relay or the client is merely slower than the
  agents: nothing is dropped that the agents still hold);
- with follow, when the client has stopped reading (one write to it has been
  blocked for `lag_timeout`), the reader drops what the agent sends until the
  buffer has room again, then queues a LostEvent (source OBSERVER_EVENTS_QUEUE,
  the count, first and last drop times) for that client, which it gets when it
  catches up. A stuck client then holds nothing but its bounded buffers.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.timeouts import wait_for

from .entries import FLOW_BYTE, lost_count, scan

log = logging.getLogger(__name__)

LOST_SOURCE = fpb.OBSERVER_EVENTS_QUEUE

OpenCall = Callable[[], Any]  # () -> a grpc.aio unary-stream call


def _ts(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


class Upstream:
    def __init__(self, key: str, name: str, generation: int, maxsize: int, follow: bool,
                 lag_timeout: float, wake: Callable[[], None],
                 client_stalled: Callable[[], bool] = lambda: True) -> None:
        self.key = key
        self.name = name
        self.generation = generation
        self.maxsize = maxsize
        self.follow = follow
        self.lag_timeout = lag_timeout
        self._wake = wake
        self._client_stalled = client_stalled
        # The buffer: three parallel columns, oldest first.
        self.times: list[int] = []
        self.raws: list[bytes] = []
        self.nodes: list[str] = []
        self._arrivals: deque[list[int]] = deque()  # [entries, arrival ns] per put
        self._space = asyncio.Event()
        self._space.set()
        self.finished = False  # the stream ended (normally or not)
        self.gone = False  # stopped because its node left the pool
        self.error: BaseException | None = None
        self.batched: bool | None = None  # which API answered; None until one did
        self.last_time_ns: int | None = None  # newest flow time received
        self.received = 0
        self.dropped_total = 0
        self._dropped = 0
        self._drop_first = 0
        self._drop_last = 0
        self.task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.raws)

    # -- the merge's side -------------------------------------------------------------
    def waited(self, limit_ns: int) -> int:
        m = 0
        for n, arrival in self._arrivals:
            if arrival > limit_ns:
                break
            m += n
        return m

    @property
    def oldest_arrival(self) -> int | None:
        return self._arrivals[0][1] if self._arrivals else None

    def consume(self, k: int) -> None:
        if k >= len(self.raws):
            self.times.clear()
            self.raws.clear()
            self.nodes.clear()
            self._arrivals.clear()
        else:
            del self.times[:k]
            del self.raws[:k]
            del self.nodes[:k]
            arr = self._arrivals
            while k and arr:
                if arr[0][0] <= k:
                    k -= arr.popleft()[0]
                else:
                    arr[0][0] -= k
                    k = 0
        if len(self.raws) < self.maxsize:
            if self._dropped:  # the client caught up: tell it what it missed
                self._append_lost_event()
            self._space.set()

    # -- the agent's side -------------------------------------------------------------
    def start(self, open_batches: OpenCall | None, open_flows: OpenCall,
              on_unimplemented: Callable[[], None] = lambda: None) -> None:
        """open_batches None: the peer is known to lack the batched stream."""
        self.task = asyncio.create_task(self._run(open_batches, open_flows, on_unimplemented),
                                        name=f"upstream {self.name}")

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def _run(self, open_batches: OpenCall | None, open_flows: OpenCall,
                   on_unimplemented: Callable[[], None]) -> None:
        try:
            if open_batches is not None:
                try:
                    await self._read_batches(open_batches())
                    return
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.UNIMPLEMENTED or self.received:
                        raise
                    log.info("node %s has no batched flow stream: using GetFlows", self.name)
                    on_unimplemented()
            await self._read_flows(open_flows())
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as e:  # our own cancel arrives as CancelledError
            self.error = e
        except Exception as e:  # never leave the request hanging on a broken reader
            log.exception("upstream %s failed", self.name)
            self.error = e
        finally:
            if self._dropped:
                self._append_lost_event()
            self.finished = True
            self._wake()

    async def _read_batches(self, call: Any) -> None:
        try:
            async for batch in call:
                self.batched = True
                raws = list(batch.responses)
                n = len(raws)
                if not n:
                    continue
                names = batch.nodes
                if len(names) == 1:
                    nodes = [names[0]] * n
                else:
                    nodes = [names[i] if i < len(names) else self.name for i in batch.node_index]
                    if len(nodes) < n:
                        nodes += [self.name] * (n - len(nodes))
                times = list(batch.time_ns)
                if len(times) != n or not all(raws):
                    # a malformed batch (or an empty response, which carries nothing):
                    # the entries' own times, empty ones left out
                    now = time.time_ns()
                    keep = [i for i, r in enumerate(raws) if r]
                    if not keep:
                        continue
                    scanned = [scan(raws[i], now) for i in keep]
                    times = [t for t, _ in scanned]
                    raws = [r for _, r in scanned]
                    nodes = [nodes[i] for i in keep]
                    n = len(raws)
                self.received += n
                # Noted once the wait for room is over: a stream cut meanwhile (its node's
                # connection replaced) has not taken these, and its successor asks for
                # what came after the newest flow noted.
                room = len(self.raws) < self.maxsize or await self._wait_for_room(raws)
                self._note_times(times, raws)
                if room:
                    self.put(times, raws, nodes)
        except asyncio.CancelledError:
            call.cancel()
            raise

    async def _read_flows(self, call: Any) -> None:
        name = self.name
        try:
            async for raw in call:
                self.batched = False
                if not raw:  # an empty response carries nothing
                    continue
                t, raw = scan(raw, time.time_ns())
                self.received += 1
                room = len(self.raws) < self.maxsize or await self._wait_for_room([raw])
                if raw[0] == FLOW_BYTE and (self.last_time_ns is None or t > self.last_time_ns):
                    self.last_time_ns = t  # after the wait, as in _read_batches
                if room:
                    self.put([t], [raw], [name])
        except asyncio.CancelledError:
            call.cancel()
            raise

    def _note_times(self, times: list[int], raws: list[bytes]) -> None:
        for i in range(len(raws) - 1, -1, -1):  # the newest flow: usually the last entry
            if raws[i][0] == FLOW_BYTE:
                t = times[i]
                if self.last_time_ns is None or t > self.last_time_ns:
                    self.last_time_ns = t
                return

    def put(self, times: list[int], raws: list[bytes], nodes: list[str],
            now: int | None = None) -> None:
        """Adds entries (oldest first) that arrived at `now` (monotonic ns)."""
        self.times += times
        self.raws += raws
        self.nodes += nodes
        if now is None:
            now = time.monotonic_ns()
        arr = self._arrivals
        if arr and arr[-1][1] == now:
            arr[-1][0] += len(raws)
        else:
            arr.append([len(raws), now])
        self._wake()

    async def _wait_for_room(self, raws: list[bytes]) -> bool:
        """Waits while the buffer is full; False: the entries were shed (counted)."""
        while len(self.raws) >= self.maxsize:
            self._space.clear()
            if not self.follow:
                await self._space.wait()
                continue
            if self._dropped and self._client_stalled():
                self._drop(raws)  # still stuck: keep dropping
                return False
            try:
                await wait_for(self._space.wait(), self.lag_timeout)
            except asyncio.TimeoutError:
                if self._client_stalled():
                    self._drop(raws)
                    return False
                # the client reads, the relay is just busy: wait (the agent waits too)
        return True

    def _drop(self, raws: list[bytes]) -> None:
        n = sum(lost_count(r) for r in raws)
        now = time.time_ns()
        if not self._dropped:
            self._drop_first = now
            log.info("client too slow: dropping flows of %s", self.name)
        self._dropped += n
        self.dropped_total += n
        self._drop_last = now

    def _append_lost_event(self) -> None:
        lost = fpb.LostEvent(source=LOST_SOURCE, num_events_lost=self._dropped,
                             first=_ts(self._drop_first), last=_ts(self._drop_last))
        self._dropped = 0
        now = time.time_ns()
        raw = opb.GetFlowsResponse(lost_events=lost, node_name=self.name,
                                   time=_ts(now)).SerializeToString()
        # After what is buffered (all older): the notice keeps the stream's time order.
        t = max(now, self.times[-1]) if self.times else now
        self.put([t], [raw], [self.name])

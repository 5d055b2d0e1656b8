"""One agent's GetFlows stream for one client request, behind a bounded queue.

The reader puts what the agent sends into a queue of at most `maxsize`
responses; the request's merge loop takes from it. When the queue is full:

- the reader waits: the agent's stream waits too (HTTP/2 flow control), and
  the agent's reader of its ring falls behind; if the ring overtakes it, the
  agent sends a LostEvent (HUBBLE_RING_BUFFER) that reaches the client. This is
  Hubble Relay's behaviour, and all that happens without follow or while the
  client keeps reading (the relay or the client is merely slower than the
  agents: nothing is dropped that the agents still hold);
- with follow, when the client has stopped reading (one write to it has been
  blocked for `lag_timeout`), the reader drops what the agent sends until the
  queue has room again, then queues a LostEvent (source OBSERVER_EVENTS_QUEUE,
  the count, first and last drop times) for that client, which it gets when it
  catches up. A stuck client then holds nothing but its bounded queues.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb

from .number import response_time_ns

log = logging.getLogger(__name__)

LOST_SOURCE = fpb.OBSERVER_EVENTS_QUEUE


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
        self.items: deque[opb.GetFlowsResponse] = deque()
        self._space = asyncio.Event()
        self._space.set()
        self.finished = False  # the stream ended (normally or not)
        self.error: BaseException | None = None
        self.last_time_ns: int | None = None  # newest flow time received
        self.received = 0
        self.dropped_total = 0
        self._dropped = 0
        self._drop_first = 0
        self._drop_last = 0
        self.task: asyncio.Task[None] | None = None

    def start(self, stub_call: Callable[[], grpc.aio.UnaryStreamCall]) -> None:
        self.task = asyncio.create_task(self._run(stub_call), name=f"upstream {self.name}")

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def take(self) -> opb.GetFlowsResponse:
        item = self.items.popleft()
        if len(self.items) < self.maxsize:
            if self._dropped:  # the client caught up: tell it what it missed
                self.items.append(self._lost_event())
            self._space.set()
        return item

    async def _run(self, stub_call: Callable[[], grpc.aio.UnaryStreamCall]) -> None:
        call = stub_call()
        try:
            async for resp in call:
                self.received += 1
                if resp.HasField("flow"):
                    t = response_time_ns(resp, 0)
                    if t and (self.last_time_ns is None or t > self.last_time_ns):
                        self.last_time_ns = t
                await self._put(resp)
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError as e:  # our own cancel arrives as CancelledError
            self.error = e
        except Exception as e:  # never leave the request hanging on a broken reader
            log.exception("upstream %s failed", self.name)
            self.error = e
        finally:
            if self._dropped:
                self.items.append(self._lost_event())
            self.finished = True
            self._wake()

    async def _put(self, resp: opb.GetFlowsResponse) -> None:
        while len(self.items) >= self.maxsize:
            self._space.clear()
            if not self.follow:
                await self._space.wait()
                continue
            if self._dropped and self._client_stalled():
                self._drop(resp)  # still stuck: keep dropping
                return
            try:
                await asyncio.wait_for(self._space.wait(), self.lag_timeout)
            except asyncio.TimeoutError:
                if self._client_stalled():
                    self._drop(resp)
                    return
                # the client reads, the relay is just busy: wait (the agent waits too)
        self.items.append(resp)
        self._wake()

    def _drop(self, resp: opb.GetFlowsResponse) -> None:
        n = resp.lost_events.num_events_lost if resp.HasField("lost_events") else 1
        now = time.time_ns()
        if not self._dropped:
            self._drop_first = now
            log.info("client too slow: dropping flows of %s", self.name)
        self._dropped += n
        self.dropped_total += n
        self._drop_last = now

    def _lost_event(self) -> opb.GetFlowsResponse:
        lost = fpb.LostEvent(source=LOST_SOURCE, num_events_lost=self._dropped,
                             first=_ts(self._drop_first), last=_ts(self._drop_last))
        self._dropped = 0
        return opb.GetFlowsResponse(lost_events=lost, node_name=self.name, time=_ts(time.time_ns()))

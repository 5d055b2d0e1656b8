"""Follows the source's agent events for endpoint deletions (GetAgentEvents).

Agents send ENDPOINT_DELETED when a pod goes away: the series garbage collector
then removes that pod's series after the grace period, as Hubble does. Hubble's
relay (and webb's) does not serve agent events; against a relay this stops after
the first UNIMPLEMENTED and idle expiry alone bounds the series.
"""
from __future__ import annotations

import asyncio
import logging
import time

import grpc

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc

from .flow_source import CHANNEL_OPTIONS, ns_ts, ts_ns
from .series_gc import SeriesGC

log = logging.getLogger(__name__)


class EndpointEvents:
    def __init__(self, target: str, gc: SeriesGC, start_ns: int | None = None,
                 backoff_s: float = 1.0) -> None:
        self.target = target
        self.gc = gc
        self.since_ns = start_ns if start_ns is not None else time.time_ns()
        self.backoff_s = backoff_s
        self.supported: bool | None = None  # None until the source answered once
        self.deleted = 0

    def handle(self, resp: opb.GetAgentEventsResponse) -> None:
        ev = resp.agent_event
        t = ts_ns(resp.time) if resp.HasField("time") else time.time_ns()
        self.since_ns = max(self.since_ns, t)
        if ev.type == fpb.ENDPOINT_DELETED:
            n = ev.endpoint_update
            if n.pod_name:
                self.deleted += 1
                self.gc.endpoint_deleted(n.namespace, n.pod_name)
        elif ev.type == fpb.ENDPOINT_CREATED:
            n = ev.endpoint_update
            if n.pod_name:
                self.gc.endpoint_created(n.namespace, n.pod_name)

    async def run(self) -> None:
        while True:
            channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
            try:
                await channel.channel_ready()
                stub = observer_pb2_grpc.ObserverStub(channel)
                call = stub.GetAgentEvents(opb.GetAgentEventsRequest(
                    follow=True, since=ns_ts(self.since_ns)))
                async for resp in call:
                    self.supported = True
                    self.handle(resp)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self.supported = False
                    log.info("%s serves no agent events (a relay?): series of gone pods "
                             "expire by idleness only", self.target)
                    return
                log.debug("GetAgentEvents on %s: %s", self.target, e.code().name)
            finally:
                await channel.close()
            await asyncio.sleep(self.backoff_s)

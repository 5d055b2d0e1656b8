"""webb.stream.FlowStream/GetFlowBatches for one node: GetFlows' answer, many
entries to a message.

The selection is the observer's own (ObserverService.select: the same reader,
filters, field mask and encoding as GetFlows); only the output shape differs.
A batch goes out when it holds `max_entries` entries or `max_bytes` bytes, when
its oldest entry has waited `linger` seconds (a slow history scan with a rare
filter), or as soon as the reader has caught up with the ring (the IDLE mark):
light traffic leaves at once, heavy traffic rides in the batches ingest writes.
"""
from __future__ import annotations

import time
from typing import AsyncIterator

import grpc

from webb.api.observer import observer_pb2 as opb
from webb.api.stream import stream_pb2 as spb
from webb.api.stream import stream_pb2_grpc
from webb.filters import FilterError

from ..pipeline.selection import IDLE, RequestError
from .observer import ObserverService

MAX_ENTRIES = 1024
MAX_BYTES = 1 << 20  # well below gRPC's default 4 MiB receive limit
LINGER = 0.005


class FlowStreamService(stream_pb2_grpc.FlowStreamServicer):
    def __init__(self, observer: ObserverService, max_entries: int = MAX_ENTRIES,
                 max_bytes: int = MAX_BYTES, linger: float = LINGER) -> None:
        self.observer = observer
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.linger_ns = int(linger * 1e9)

    async def GetFlowBatches(self, request: opb.GetFlowsRequest,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[spb.FlowBatch]:
        try:
            items, encode = self.observer.select(request, idle=True)
        except (FilterError, RequestError, ValueError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return
        nodes = [self.observer.node.node_name]
        max_entries, max_bytes, linger = self.max_entries, self.max_bytes, self.linger_ns
        clock = time.monotonic_ns
        responses: list[bytes] = []
        times: list[int] = []
        size = started = 0

        def batch() -> spb.FlowBatch:
            return spb.FlowBatch(responses=responses, time_ns=times,
                                 node_index=[0] * len(responses), nodes=nodes)
        try:
            async for item in items:
                if item is IDLE:
                    if responses:
                        yield batch()
                        responses, times, size = [], [], 0
                    continue
                b = encode(item)
                if not responses:
                    started = clock()
                responses.append(b)
                times.append(item.time_ns)
                size += len(b)
                if (len(responses) >= max_entries or size >= max_bytes
                        or clock() - started >= linger):
                    yield batch()
                    responses, times, size = [], [], 0
            if responses:
                yield batch()
        finally:
            await items.aclose()  # type: ignore[attr-defined]


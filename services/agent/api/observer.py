"""observer.Observer for one node: GetFlows, ServerStatus, GetNodes, GetNamespaces,
GetAgentEvents and GetDebugEvents, with Hubble's request semantics and errors."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Callable

import grpc
from google.protobuf import field_mask_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import Int32Value, UInt32Value

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc
from webb.api.relay import relay_pb2 as rpb
from webb.filters import FilterError, build_filter

from .agent_events import AgentEventLog
from ..pipeline.selection import Lost, ReadRequest, RequestError, read_flows, validate
from ..pipeline.wire_cache import FlowWireCache
from ..pipeline.prefilter import record_prefilter
from ..pipeline.record import FlowRecord
from ..stores.ring import Ring

log = logging.getLogger(__name__)

NAMESPACE_WINDOW_NS = 3600 * 1_000_000_000  # Hubble lists namespaces seen in the last hour
# Namespaces remembered at most: beyond, those older than the window go first, then the
# least recently seen (counted), so namespace churn cannot grow the agent's memory.
MAX_NAMESPACES = 4096
RATE_WINDOW_S = 60  # ServerStatus.flows_rate: flows per second over the last minute


def ts_ns(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def ns_ts(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


class NodeState:
    """What ServerStatus and GetNodes report; owned by the agent, read here."""

    def __init__(self, node_name: str, version: str, address: str, ring: Ring,
                 seen: Callable[[], int]) -> None:
        self.node_name = node_name
        self.version = version
        self.address = address
        self.ring = ring
        self.seen = seen
        self.started_ns = time.monotonic_ns()
        self.namespaces: dict[tuple[str, str], int] = {}
        self.namespaces_evicted = 0
        # Flows ingested per wall-clock second, the last RATE_WINDOW_S seconds.
        self._rate_count = [0] * RATE_WINDOW_S
        self._rate_second = [-1] * RATE_WINDOW_S

    def note_batch(self, recs: list[FlowRecord]) -> None:
        self.count_flows(len(recs), time.time_ns() // 1_000_000_000)
        seen = self.namespaces
        t = recs[-1].time_ns  # per batch: the namespace list has an hour's resolution
        src = dst = None
        for r in recs:
            if r.src is not src:
                src = r.src
                if src.namespace:
                    seen[(src.cluster, src.namespace)] = t
            if r.dst is not dst:
                dst = r.dst
                if dst.namespace:
                    seen[(dst.cluster, dst.namespace)] = t
        if len(seen) > MAX_NAMESPACES:
            self._bound_namespaces(t)

    def _bound_namespaces(self, now_ns: int) -> None:
        seen = self.namespaces
        horizon = now_ns - NAMESPACE_WINDOW_NS
        for key in [k for k, t in seen.items() if t < horizon]:
            del seen[key]
        if len(seen) > MAX_NAMESPACES:
            stalest = sorted(seen, key=seen.__getitem__)[:len(seen) - MAX_NAMESPACES]
            for key in stalest:
                del seen[key]
            self.namespaces_evicted += len(stalest)

    def count_flows(self, n: int, second: int) -> None:
        """Adds n flows to the per-second counters behind flows_rate."""
        i = second % RATE_WINDOW_S
        if self._rate_second[i] != second:
            self._rate_second[i] = second
            self._rate_count[i] = 0
        self._rate_count[i] += n

    def uptime_ns(self) -> int:
        return time.monotonic_ns() - self.started_ns

    def num_flows(self) -> int:
        return len(self.ring)

    def flows_rate(self) -> float:
        """Flows per second over the last minute, from per-second counters: O(60)."""
        now = time.time_ns() // 1_000_000_000
        count = sum(c for c, sec in zip(self._rate_count, self._rate_second)
                    if now - RATE_WINDOW_S < sec <= now)
        window = min(float(RATE_WINDOW_S), self.uptime_ns() / 1e9) or 1.0
        return count / window


class ObserverService(observer_pb2_grpc.ObserverServicer):
    def __init__(self, node: NodeState, wire_cache: FlowWireCache, agent_events: AgentEventLog) -> None:
        self.node = node
        self.wire_cache = wire_cache
        self.agent_events = agent_events
        # The ring alone, or (stores/history/reader.py) the store and the ring as one.
        self.read_flows: Callable[..., AsyncIterator[Any]] = read_flows

    def select(self, request: opb.GetFlowsRequest, idle: bool = False
               ) -> tuple[AsyncIterator[Any], Callable[[Any], bytes]]:
        """The one implementation of GetFlows' selection (number/first/since/until/
        follow, filters, field mask) behind both output shapes: GetFlows sends each
        entry as a message, GetFlowBatches (flow_batches.py, beside this) many per message.

        Returns the reader (FlowRecords, Lost notices and, with idle=True, IDLE
        marks) and the function that gives an entry's GetFlowsResponse bytes.
        Raises FilterError, RequestError or ValueError for a bad request."""
        pred = build_filter(request.whitelist, request.blacklist)
        req = ReadRequest(
            number=request.number, first=request.first, follow=request.follow,
            since_ns=ts_ns(request.since) if request.HasField("since") else None,
            until_ns=ts_ns(request.until) if request.HasField("until") else None)
        validate(req)
        mask = _field_mask(request)
        match = flow_matcher(self.wire_cache, request.whitelist, pred, request.blacklist) \
            if request.whitelist or request.blacklist else None
        return self.read_flows(self.node.ring, req, match, idle=idle), self._encoder(mask)

    def _encoder(self, mask: Any) -> Callable[[Any], bytes]:
        wire_cache = self.wire_cache
        node_name = self.node.node_name
        response = wire_cache.response

        def lost(item: Lost) -> bytes:
            ev = fpb.LostEvent(source=item.source, num_events_lost=item.count)
            if item.cpu >= 0:
                ev.cpu.CopyFrom(Int32Value(value=item.cpu))
            return opb.GetFlowsResponse(lost_events=ev, node_name=node_name,
                                        time=ns_ts(item.time_ns)).SerializeToString()

        if mask is None:
            def encode(item: Any) -> bytes:
                if item.__class__ is Lost:
                    return lost(item)
                return response(item)  # pre-encoded: the same bytes serve every client
            return encode

        def encode_masked(item: Any) -> bytes:
            if item.__class__ is Lost:
                return lost(item)
            flow, out = wire_cache.flow(item), fpb.Flow()
            mask.MergeMessage(flow, out)
            return opb.GetFlowsResponse(flow=out, node_name=node_name,
                                        time=flow.time).SerializeToString()
        return encode_masked

    async def GetFlows(self, request: opb.GetFlowsRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        try:
            items, encode = self.select(request)
        except (FilterError, RequestError, ValueError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return
        try:
            async for item in items:
                yield encode(item)
        finally:
            await items.aclose()  # type: ignore[attr-defined]

    async def ServerStatus(self, request: opb.ServerStatusRequest,
                           context: grpc.aio.ServicerContext) -> opb.ServerStatusResponse:
        n = self.node
        return opb.ServerStatusResponse(
            num_flows=n.num_flows(), max_flows=n.ring.capacity, seen_flows=n.seen(),
            uptime_ns=n.uptime_ns(), version=n.version, flows_rate=n.flows_rate(),
            num_connected_nodes=UInt32Value(value=1), num_unavailable_nodes=UInt32Value(value=0))

    async def GetNodes(self, request: opb.GetNodesRequest,
                       context: grpc.aio.ServicerContext) -> opb.GetNodesResponse:
        n = self.node
        node = opb.Node(name=n.node_name, version=n.version, address=n.address,
                        state=rpb.NODE_CONNECTED, uptime_ns=n.uptime_ns(),
                        num_flows=n.num_flows(), max_flows=n.ring.capacity, seen_flows=n.seen())
        return opb.GetNodesResponse(nodes=[node])

    async def GetNamespaces(self, request: opb.GetNamespacesRequest,
                            context: grpc.aio.ServicerContext) -> opb.GetNamespacesResponse:
        horizon = time.time_ns() - NAMESPACE_WINDOW_NS
        seen = self.node.namespaces
        for key in [k for k, t in seen.items() if t < horizon]:
            del seen[key]
        return opb.GetNamespacesResponse(namespaces=[
            opb.Namespace(cluster=c, namespace=ns) for c, ns in sorted(seen)])

    async def GetAgentEvents(self, request: opb.GetAgentEventsRequest,
                             context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[opb.GetAgentEventsResponse]:
        if request.HasField("since") and request.number:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "number cannot be specified with since")
            return
        since = ts_ns(request.since) if request.HasField("since") else None
        until = ts_ns(request.until) if request.HasField("until") else None
        async for t, ev in self.agent_events.read(request.number, request.follow, since, until):
            yield opb.GetAgentEventsResponse(agent_event=ev, node_name=self.node.node_name,
                                             time=ns_ts(t))

    async def GetDebugEvents(self, request: opb.GetDebugEventsRequest,
                             context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[opb.GetDebugEventsResponse]:
        # webb's datapath emits no debug events (Cilium's come from its datapath's
        # debug mode). Following waits for the client to go away.
        if request.follow:
            await asyncio.Event().wait()  # cancelled when the client goes away
        return
        yield  # pragma: no cover - makes this an async generator


def flow_matcher(wire_cache: FlowWireCache, whitelist: Any, pred: Callable[[Any], bool],
                 blacklist: Any = ()) -> Callable[[Any], bool]:
    """A record's match for a request's filters (pred = build_filter(whitelist,
    blacklist)). A flow is built only for records that pass what the filters say about
    their raw ports/protocol and endpoints (prefilter.py: never rejects a match)."""
    flow_of = wire_cache.flow

    def full(rec: Any) -> bool:
        return pred(flow_of(rec))
    return record_prefilter(whitelist, blacklist, then=full) or full


def _field_mask(request: opb.GetFlowsRequest) -> Any:
    paths: list[str] = list(request.field_mask.paths) if request.HasField("field_mask") else []
    if not paths:
        return None
    mask = field_mask_pb2.FieldMask(paths=paths)
    if not mask.IsValidForDescriptor(fpb.Flow.DESCRIPTOR):
        raise ValueError(f"invalid field mask: {', '.join(paths)}")
    return mask

"""observer.Observer for the whole cluster: GetFlows fans out (fanout.py), and
webb.stream.FlowStream/GetFlowBatches gives the same answer in batches;
ServerStatus, GetNodes and GetNamespaces ask every connected agent and combine
the answers the way Hubble Relay does. GetAgentEvents and GetDebugEvents are
UNIMPLEMENTED, as in Hubble Relay."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Awaitable, Callable, TypeVar

import grpc
from google.protobuf.wrappers_pb2 import UInt32Value

from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc
from webb.api.relay import relay_pb2 as rpb
from webb.api.stream import stream_pb2 as spb
from webb.api.stream import stream_pb2_grpc

from .entries import Columns
from .fanout import FlowsOptions, FlowsSession, UpstreamInvalidArgument
from .pool import Peer, PeerPool
from .request import InvalidRequest, validate

log = logging.getLogger(__name__)

MAX_UNAVAILABLE_REPORTED = 10  # as Hubble: a sample, not an exhaustive list
BATCH_ENTRIES = 1024  # entries per FlowBatch sent to clients


def to_batch(run: Columns, lo: int, hi: int) -> spb.FlowBatch:
    """Entries lo..hi of a run as one FlowBatch, node names as indexes."""
    nodes = run.nodes[lo:hi]
    names = list(dict.fromkeys(nodes))
    if len(names) == 1:
        index = [0] * (hi - lo)
    else:
        pos = {n: i for i, n in enumerate(names)}
        index = [pos[n] for n in nodes]
    return spb.FlowBatch(responses=run.raws[lo:hi], time_ns=run.times[lo:hi],
                         node_index=index, nodes=names)

R = TypeVar("R")


class RelayObserver(observer_pb2_grpc.ObserverServicer, stream_pb2_grpc.FlowStreamServicer):
    """Also webb.stream.FlowStream (GetFlowBatches), registered beside it."""

    def __init__(self, pool: PeerPool, opts: FlowsOptions, version: str,
                 call_timeout: float = 5.0, batch_entries: int = BATCH_ENTRIES) -> None:
        self.pool = pool
        self.opts = opts
        self.version = version
        self.call_timeout = call_timeout
        self.batch_entries = batch_entries
        self.sessions: set[FlowsSession] = set()

    async def _runs(self, request: opb.GetFlowsRequest,
                    context: grpc.aio.ServicerContext) -> AsyncIterator[tuple[FlowsSession, Columns]]:
        """The merged answer as runs of entries; both output shapes read this."""
        try:
            validate(request)
        except InvalidRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return
        session = FlowsSession(self.pool, request, self.opts)
        self.sessions.add(session)
        runs = session.run()
        try:
            async for run in runs:
                yield session, run
        except UpstreamInvalidArgument as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        finally:
            await runs.aclose()
            self.sessions.discard(session)

    async def GetFlows(self, request: opb.GetFlowsRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Hubble's GetFlows: one response per message, the agents' bytes as they are
        (registered with a pass-through serializer, server.py)."""
        clock = time.monotonic
        async for session, run in self._runs(request, context):
            for raw in run.raws:
                session.write_started = clock()
                yield raw
            session.write_started = None

    async def GetFlowBatches(self, request: opb.GetFlowsRequest,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[spb.FlowBatch]:
        """webb.stream.FlowStream: the same entries, many to a message."""
        limit = self.batch_entries
        async for session, run in self._runs(request, context):
            n = len(run)
            for i in range(0, n, limit):
                session.write_started = time.monotonic()
                yield to_batch(run, i, min(n, i + limit))
            session.write_started = None

    async def _each_connected(self, call: Callable[[Peer], Awaitable[R]]
                              ) -> list[tuple[Peer, R | BaseException | None]]:
        """Calls every peer at once; None for unavailable peers, the exception
        for failed calls."""
        peers = self.pool.list()

        async def one(p: Peer) -> R | BaseException | None:
            if not p.connected:
                return None
            try:
                return await call(p)
            except grpc.aio.AioRpcError as e:
                log.warning("node %s: %s", p.name, e.details() or e.code().name)
                return e

        results = await asyncio.gather(*(one(p) for p in peers))
        return list(zip(peers, results))

    async def ServerStatus(self, request: opb.ServerStatusRequest,
                           context: grpc.aio.ServicerContext) -> opb.ServerStatusResponse:
        results = await self._each_connected(
            lambda p: p.observer.ServerStatus(request, timeout=self.call_timeout))
        resp = opb.ServerStatusResponse(version=self.version)
        unavailable: list[str] = []
        for p, st in results:
            if not isinstance(st, opb.ServerStatusResponse):
                unavailable.append(p.name)
                continue
            resp.num_flows += st.num_flows
            resp.max_flows += st.max_flows
            resp.seen_flows += st.seen_flows
            resp.flows_rate += st.flows_rate
            resp.uptime_ns = max(resp.uptime_ns, st.uptime_ns)  # the oldest node's
        resp.num_connected_nodes.CopyFrom(UInt32Value(value=len(results) - len(unavailable)))
        resp.num_unavailable_nodes.CopyFrom(UInt32Value(value=len(unavailable)))
        resp.unavailable_nodes.extend(unavailable[:MAX_UNAVAILABLE_REPORTED])
        return resp

    async def GetNodes(self, request: opb.GetNodesRequest,
                       context: grpc.aio.ServicerContext) -> opb.GetNodesResponse:
        results = await self._each_connected(
            lambda p: p.observer.ServerStatus(opb.ServerStatusRequest(), timeout=self.call_timeout))
        tls = self.pool.opts.tls
        nodes = []
        for p, st in results:
            n = opb.Node(name=p.name, address=p.address,
                         tls=opb.TLS(enabled=tls.enabled,
                                     server_name=tls.server_name or p.tls_server_name))
            if st is None:
                n.state = rpb.NODE_UNAVAILABLE
            elif isinstance(st, opb.ServerStatusResponse):
                n.state = rpb.NODE_CONNECTED
                n.version = st.version
                n.uptime_ns = st.uptime_ns
                n.num_flows = st.num_flows
                n.max_flows = st.max_flows
                n.seen_flows = st.seen_flows
            else:
                n.state = rpb.NODE_ERROR
            nodes.append(n)
        return opb.GetNodesResponse(nodes=nodes)

    async def GetNamespaces(self, request: opb.GetNamespacesRequest,
                            context: grpc.aio.ServicerContext) -> opb.GetNamespacesResponse:
        results = await self._each_connected(
            lambda p: p.observer.GetNamespaces(request, timeout=self.call_timeout))
        seen: set[tuple[str, str]] = set()
        for _, r in results:  # partial answers rather than none, as Hubble
            if isinstance(r, opb.GetNamespacesResponse):
                seen.update((ns.cluster, ns.namespace) for ns in r.namespaces)
        return opb.GetNamespacesResponse(namespaces=[
            opb.Namespace(cluster=c, namespace=n) for c, n in sorted(seen)])

    async def GetAgentEvents(self, request: opb.GetAgentEventsRequest,
                             context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[opb.GetAgentEventsResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "GetAgentEvents is not implemented by the relay")
        yield opb.GetAgentEventsResponse()  # pragma: no cover - makes this a stream

    async def GetDebugEvents(self, request: opb.GetDebugEventsRequest,
                             context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[opb.GetDebugEventsResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "GetDebugEvents is not implemented by the relay")
        yield opb.GetDebugEventsResponse()  # pragma: no cover - makes this a stream

"""The relay in-process against fake agents (gRPC servers in the same loop): the
fan-out, node status, errors, number, slow clients, discovery, TLS and the
aggregated unary calls. No root needed; the e2e tests do the same with real
agents."""
from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import grpc
import pytest
from google.protobuf.wrappers_pb2 import UInt32Value
from grpc_health.v1 import health_pb2, health_pb2_grpc

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc
from webb.api.peer import peer_pb2 as ppb
from webb.api.peer import peer_pb2_grpc
from webb.api.relay import relay_pb2 as rpb
from webb.api.stream import stream_pb2 as spb
from webb.api.stream import stream_pb2_grpc
from webb_relay.discovery import normalize_address
from webb_relay.fanout import FlowsOptions
from webb_relay.main import Relay, RelayConfig, duration, parse_args
from support import until

S = 1_000_000_000
NO_BDP = [("grpc.http2.bdp_probe", 0)]
pytestmark = pytest.mark.timeout(60)


class FakeAgent(observer_pb2_grpc.ObserverServicer, peer_pb2_grpc.PeerServicer):
    """Enough of an agent for the relay: a flow history, live flows, failures
    on demand, ServerStatus/GetNodes/GetNamespaces and peer.Peer/Notify."""

    def __init__(self, name: str, batched: bool = False) -> None:
        self.name = name
        self.batched = batched  # also serve webb.stream.FlowStream (else: UNIMPLEMENTED)
        self.history: list[opb.GetFlowsResponse] = []
        self.followers: set[asyncio.Queue[Any]] = set()
        self.requests: list[opb.GetFlowsRequest] = []
        self.reject: tuple[grpc.StatusCode, str] | None = None
        self.namespaces: list[tuple[str, str]] = []
        self.peers: dict[str, ppb.ChangeNotification] = {}
        self.peer_queues: set[asyncio.Queue[ppb.ChangeNotification]] = set()
        self.server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, creds: grpc.ServerCredentials | None = None, port: int = 0) -> "FakeAgent":
        self.server = grpc.aio.server()
        observer_pb2_grpc.add_ObserverServicer_to_server(self, self.server)
        peer_pb2_grpc.add_PeerServicer_to_server(self, self.server)
        if self.batched:
            stream_pb2_grpc.add_FlowStreamServicer_to_server(FakeBatches(self), self.server)
        addr = f"127.0.0.1:{port or self.port}"
        self.port = (self.server.add_secure_port(addr, creds) if creds
                     else self.server.add_insecure_port(addr))
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None
        self.followers.clear()

    def flow(self, t_ns: int, namespace: str = "demo", pad: int = 0) -> opb.GetFlowsResponse:
        r = opb.GetFlowsResponse(node_name=self.name, flow=fpb.Flow(
            node_name=self.name, source=fpb.Endpoint(namespace=namespace, pod_name="p",
                                                     labels=["x" * pad] if pad else [])))
        r.flow.time.FromNanoseconds(t_ns)
        r.time.FromNanoseconds(t_ns)
        return r

    def add(self, *times_ns: int, pad: int = 0) -> None:
        for t in times_ns:
            r = self.flow(t, pad=pad)
            self.history.append(r)
            for q in self.followers:
                q.put_nowait(r)

    def fail_streams(self, code: grpc.StatusCode, message: str) -> None:
        for q in self.followers:
            q.put_nowait((code, message))

    async def GetFlows(self, req: opb.GetFlowsRequest, ctx: grpc.aio.ServicerContext
                       ) -> AsyncIterator[opb.GetFlowsResponse]:
        async for chunk in self.answer(req, ctx):
            for r in chunk:
                yield r

    async def answer(self, req: opb.GetFlowsRequest, ctx: grpc.aio.ServicerContext
                     ) -> AsyncIterator[list[opb.GetFlowsResponse]]:
        """The history in one chunk, then each live flow as it comes."""
        self.requests.append(req)
        if self.reject:
            await ctx.abort(*self.reject)
        since = req.since.ToNanoseconds() if req.HasField("since") else None
        hist = [r for r in self.history
                if since is None or r.time.ToNanoseconds() >= since]
        if req.number:
            hist = hist[:req.number] if req.first else hist[-req.number:]
        q: asyncio.Queue[Any] = asyncio.Queue()
        if req.follow:
            self.followers.add(q)
        try:
            if hist:
                yield hist
            while req.follow:
                item = await q.get()
                if isinstance(item, tuple):
                    await ctx.abort(*item)
                yield [item]
        finally:
            self.followers.discard(q)

    async def ServerStatus(self, req: opb.ServerStatusRequest, ctx: grpc.aio.ServicerContext
                           ) -> opb.ServerStatusResponse:
        return opb.ServerStatusResponse(
            num_flows=len(self.history), max_flows=4095, seen_flows=len(self.history) + 1,
            uptime_ns=len(self.name) * S, version="fake-1", flows_rate=1.5,
            num_connected_nodes=UInt32Value(value=1), num_unavailable_nodes=UInt32Value(value=0))

    async def GetNodes(self, req: opb.GetNodesRequest, ctx: grpc.aio.ServicerContext
                       ) -> opb.GetNodesResponse:
        return opb.GetNodesResponse(nodes=[opb.Node(name=self.name, version="fake-1",
                                                    state=rpb.NODE_CONNECTED)])

    async def GetNamespaces(self, req: opb.GetNamespacesRequest, ctx: grpc.aio.ServicerContext
                            ) -> opb.GetNamespacesResponse:
        return opb.GetNamespacesResponse(namespaces=[
            opb.Namespace(cluster=c, namespace=n) for c, n in self.namespaces])

    # peer.Peer
    def announce(self, name: str, address: str, kind: int = ppb.PEER_ADDED,
                 server_name: str = "") -> None:
        cn = ppb.ChangeNotification(name=name, address=address, type=kind)
        if server_name:
            cn.tls.server_name = server_name
        if kind == ppb.PEER_DELETED:
            self.peers.pop(name, None)
        else:
            self.peers[name] = cn
        for q in self.peer_queues:
            q.put_nowait(cn)

    async def Notify(self, req: ppb.NotifyRequest, ctx: grpc.aio.ServicerContext
                     ) -> AsyncIterator[ppb.ChangeNotification]:
        q: asyncio.Queue[ppb.ChangeNotification] = asyncio.Queue()
        for cn in self.peers.values():
            q.put_nowait(cn)
        self.peer_queues.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self.peer_queues.discard(q)


class FakeBatches(stream_pb2_grpc.FlowStreamServicer):
    """The fake agent's GetFlows answer in FlowBatches: history 64 to a batch, live
    entries as they come."""

    def __init__(self, agent: FakeAgent) -> None:
        self.agent = agent

    async def GetFlowBatches(self, req: opb.GetFlowsRequest, ctx: grpc.aio.ServicerContext
                             ) -> AsyncIterator[spb.FlowBatch]:
        async for chunk in self.agent.answer(req, ctx):
            for i in range(0, len(chunk), 64):
                part = chunk[i:i + 64]
                yield spb.FlowBatch(responses=[r.SerializeToString() for r in part],
                                    time_ns=[r.time.ToNanoseconds() for r in part],
                                    node_index=[0] * len(part), nodes=[self.agent.name])


class RelayHarness:
    def __init__(self, relay: Relay, channel: grpc.aio.Channel) -> None:
        self.relay = relay
        self.channel = channel
        self.observer = observer_pb2_grpc.ObserverStub(channel)

    async def connected(self, n: int) -> None:
        await until(lambda: sum(p.connected for p in self.relay.pool.list()) == n,
                    what=f"{n} connected peers")

    async def flows(self, timeout: float = 10, **req: Any) -> list[opb.GetFlowsResponse]:
        call = self.observer.GetFlows(opb.GetFlowsRequest(**req), timeout=timeout)
        return [r async for r in call]

    async def batched_flows(self, timeout: float = 10, **req: Any) -> list[opb.GetFlowsResponse]:
        """The relay's GetFlowBatches, entries decoded; checks each batch's columns."""
        call = stream_pb2_grpc.FlowStreamStub(self.channel).GetFlowBatches(
            opb.GetFlowsRequest(**req), timeout=timeout)
        out = []
        async for b in call:
            assert len(b.responses) == len(b.time_ns) == len(b.node_index)
            for raw, t, i in zip(b.responses, b.time_ns, b.node_index):
                r = opb.GetFlowsResponse.FromString(raw)
                assert r.time.ToNanoseconds() == t and b.nodes[i] == r.node_name
                out.append(r)
        return out


async def start_relay(cfg: RelayConfig, creds: grpc.ChannelCredentials | None = None,
                      options: list | None = None) -> RelayHarness:
    # a fixed HTTP/2 window (no BDP probing), so that a client that stops reading
    # stops the relay's writes soon, as a slow client over a real network does
    cfg.listen_address = "127.0.0.1:0"
    relay = Relay(cfg)
    await relay.start()
    addr = f"127.0.0.1:{relay.port}"
    ch = (grpc.aio.secure_channel(addr, creds, options=options) if creds
          else grpc.aio.insecure_channel(addr, options=options or NO_BDP))
    return RelayHarness(relay, ch)


def fast_opts(**kw: Any) -> FlowsOptions:
    base = dict(sort_window=0.2, error_window=0.3, rejoin_min=0.1, rejoin_max=0.5,
                relay_name="relay")
    base.update(kw)
    return FlowsOptions(**base)


@pytest.fixture(params=["batched", "plain"])
async def cluster(request):
    """Three fake agents (n1..n3) and a relay with them as static peers; the agents
    serve webb's batched stream, or only GetFlows (the relay falls back)."""
    agents = [await FakeAgent(f"n{i}", request.param == "batched").start() for i in (1, 2, 3)]
    h = await start_relay(RelayConfig(peers=[a.address for a in agents], flows=fast_opts()))
    await h.connected(3)
    try:
        yield agents, h
    finally:
        await h.channel.close()
        await h.relay.stop()
        for a in agents:
            await a.stop()


def flow_times(rs: list[opb.GetFlowsResponse]) -> list[int]:
    return [r.time.ToNanoseconds() for r in rs if r.HasField("flow")]


def statuses(rs: list[opb.GetFlowsResponse]) -> list[tuple[int, list[str], str]]:
    return [(r.node_status.state_change, sorted(r.node_status.node_names), r.node_status.message)
            for r in rs if r.HasField("node_status")]


# -- GetFlows ----------------------------------------------------------------------

async def test_history_is_merged_in_time_order_after_node_status(cluster):
    agents, h = cluster
    base = time.time_ns() - 60 * S
    for i, a in enumerate(agents):
        a.add(*(base + (3 * k + i) * 1000 for k in range(400)))
    out = await h.flows()
    assert out[0].HasField("node_status")
    assert statuses(out) == [(rpb.NODE_CONNECTED, ["n1", "n2", "n3"], "")]
    assert out[0].node_name == "relay"
    ts = flow_times(out)
    assert len(ts) == 1200 and ts == sorted(ts)
    assert {r.node_name for r in out if r.HasField("flow")} == {"n1", "n2", "n3"}


async def test_agents_lost_events_pass_through_in_time_order(cluster):
    agents, h = cluster
    base = time.time_ns() - 60 * S
    agents[0].add(base + 10, base + 30)
    agents[1].add(base + 20)
    lost = opb.GetFlowsResponse(node_name="n2", lost_events=fpb.LostEvent(
        source=fpb.HUBBLE_RING_BUFFER, num_events_lost=7))
    lost.time.FromNanoseconds(base + 25)
    agents[1].history.append(lost)
    out = [r for r in await h.flows() if not r.HasField("node_status")]
    assert [r.time.ToNanoseconds() for r in out] == [base + 10, base + 20, base + 25, base + 30]
    assert out[2].lost_events.num_events_lost == 7 and out[2].node_name == "n2"
    assert out[2].lost_events.source == fpb.HUBBLE_RING_BUFFER
    # the batched answer: the same entries, byte for byte, the same node status
    both = [await h.flows(), await h.batched_flows()]
    entries = [[r.SerializeToString() for r in x if not r.HasField("node_status")] for x in both]
    assert entries[0] == entries[1] and len(entries[0]) == 4
    assert [statuses(x) for x in both] == [[(rpb.NODE_CONNECTED, ["n1", "n2", "n3"], "")]] * 2


async def test_empty_responses_from_an_agent_are_skipped(cluster):
    agents, h = cluster
    base = time.time_ns() - 60 * S
    agents[0].add(base + 10)
    agents[0].history.append(opb.GetFlowsResponse())  # serializes to no bytes at all
    agents[1].add(base + 20)
    for out in (await h.flows(), await h.batched_flows()):
        assert flow_times(out) == [base + 10, base + 20]
        assert all(r.HasField("flow") or r.HasField("node_status") for r in out)


async def test_batches_and_get_flows_agree_on_number_and_filters(cluster):
    agents, h = cluster
    base = time.time_ns() - 60 * S
    for i, a in enumerate(agents):
        a.add(*(base + (3 * k + i) * 1000 for k in range(300)))
    for req in ({}, {"number": 50}, {"number": 20, "first": True}):
        both = [await h.flows(**req), await h.batched_flows(**req)]
        entries = [[r.SerializeToString() for r in x if r.HasField("flow")] for x in both]
        assert entries[0] == entries[1] and entries[0], req


async def test_number_means_cluster_wide(cluster):
    agents, h = cluster
    base = time.time_ns() - 60 * S
    for i, a in enumerate(agents):
        a.add(*(base + (3 * k + i) for k in range(50)))  # interleaved: 150 flows in all
    ts = flow_times(await h.flows(number=10))
    assert ts == [base + k for k in range(140, 150)]
    assert all(r.number == 10 for a in agents for r in a.requests)  # each node asked for N
    ts = flow_times(await h.flows(number=7, first=True))
    assert ts == [base + k for k in range(7)]


async def test_long_history_with_a_tiny_sort_buffer_completes_in_order():
    """The agents finish sending long before the merge is done with their
    history: the merge must keep going on its own (no wake-up from them)."""
    agents = [await FakeAgent(f"n{i}").start() for i in (1, 2, 3)]
    base = time.time_ns() - 60 * S
    for i, a in enumerate(agents):
        a.add(*(base + 3 * k + i for k in range(600)))
    h = await start_relay(RelayConfig(peers=[a.address for a in agents],
                                      flows=fast_opts(sort_buffer_len=3)))
    try:
        await h.connected(3)
        await asyncio.sleep(0.1)
        assert flow_times(await h.flows(number=500)) == [base + k for k in range(1300, 1800)]
        assert flow_times(await h.flows()) == [base + k for k in range(1800)]
    finally:
        await h.channel.close()
        await h.relay.stop()
        for a in agents:
            await a.stop()


async def test_follow_with_number_then_live_flows(cluster):
    agents, h = cluster
    base = time.time_ns() - 60 * S
    for i, a in enumerate(agents):
        a.add(*(base + (3 * k + i) for k in range(20)))
    call = h.observer.GetFlows(opb.GetFlowsRequest(number=5, follow=True), timeout=10)
    got: list[opb.GetFlowsResponse] = []

    async def read() -> None:
        async for r in call:
            got.append(r)

    reader = asyncio.create_task(read())
    try:
        await until(lambda: len(flow_times(got)) >= 5, what="history")
        assert flow_times(got) == [base + k for k in range(55, 60)]
        now = time.time_ns()
        agents[1].add(now + 2000)
        agents[0].add(now + 1000)
        await until(lambda: len(flow_times(got)) >= 7, what="live flows")
        assert flow_times(got)[5:] == [now + 1000, now + 2000]
    finally:
        call.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_failing_nodes_give_one_coalesced_node_error_and_the_stream_goes_on(cluster):
    agents, h = cluster
    call = h.observer.GetFlows(opb.GetFlowsRequest(follow=True), timeout=15)
    got: list[opb.GetFlowsResponse] = []

    async def read() -> None:
        async for r in call:
            got.append(r)

    reader = asyncio.create_task(read())
    try:
        await until(lambda: len(agents[2].followers) == 1, what="streams open")
        agents[0].fail_streams(grpc.StatusCode.UNAVAILABLE, "node is rebooting")
        agents[1].fail_streams(grpc.StatusCode.UNAVAILABLE, "node is rebooting")
        await until(lambda: any(s[0] == rpb.NODE_ERROR for s in statuses(got)), what="NODE_ERROR")
        errs = [s for s in statuses(got) if s[0] == rpb.NODE_ERROR]
        assert errs == [(rpb.NODE_ERROR, ["n1", "n2"],
                         "rpc error: code = Unavailable desc = node is rebooting")]
        t = time.time_ns()
        agents[2].add(t)
        await until(lambda: t in flow_times(got), what="flows of the healthy node")
        # the failed nodes are still connected: they are asked again, from where they stopped
        await until(lambda: len(agents[0].followers) == 1 and len(agents[1].followers) == 1,
                    what="rejoin")
        await until(lambda: {n for s in statuses(got)[1:] if s[0] == rpb.NODE_CONNECTED
                             for n in s[1]} == {"n1", "n2"}, what="NODE_CONNECTED on rejoin")
        rejoin = agents[0].requests[-1]
        assert rejoin.follow and rejoin.number == 0 and rejoin.HasField("since")
        agents[0].add(t + 5)
        await until(lambda: t + 5 in flow_times(got), what="flows after rejoin")
    finally:
        call.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_unreachable_node_is_reported_and_counted():
    a = await FakeAgent("n1").start()
    gone = await FakeAgent("gone").start()
    dead_addr = gone.address
    await gone.stop()
    h = await start_relay(RelayConfig(peers=[a.address, dead_addr], flows=fast_opts()))
    try:
        await h.connected(1)
        a.add(time.time_ns())
        out = await h.flows()
        assert statuses(out) == [(rpb.NODE_CONNECTED, ["n1"], ""),
                                 (rpb.NODE_UNAVAILABLE, [dead_addr], "")]
        assert len(flow_times(out)) == 1
        st = await h.observer.ServerStatus(opb.ServerStatusRequest(), timeout=5)
        assert st.num_connected_nodes.value == 1 and st.num_unavailable_nodes.value == 1
        assert list(st.unavailable_nodes) == [dead_addr]
        nodes = {n.name: n for n in (await h.observer.GetNodes(opb.GetNodesRequest())).nodes}
        assert nodes["n1"].state == rpb.NODE_CONNECTED
        assert nodes[dead_addr].state == rpb.NODE_UNAVAILABLE
    finally:
        await h.channel.close()
        await h.relay.stop()
        await a.stop()


async def test_agents_invalid_argument_reaches_the_client(cluster):
    agents, h = cluster
    agents[1].reject = (grpc.StatusCode.INVALID_ARGUMENT, "unsupported filter")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await h.flows()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unsupported filter" in e.value.details()


@pytest.mark.parametrize("req", [
    dict(first=True, follow=True),
    dict(number=3, since={"seconds": 5}),
    dict(since={"seconds": 10}, until={"seconds": 5}),
    dict(whitelist=[fpb.FlowFilter(source_ip=["not-an-ip"])]),
    dict(whitelist=[fpb.FlowFilter(source_label=["a in (b"])]),
    dict(field_mask={"paths": ["no_such_field"]}),
])
async def test_bad_requests_are_invalid_argument_before_fanning_out(cluster, req):
    agents, h = cluster
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await h.flows(**req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not any(a.requests for a in agents)


@pytest.mark.parametrize("field,pattern,reason", [
    ("http_path", "(?=x)", "invalid perl operator: (?="),
    ("dns_query", r"(a)\1", r"invalid escape sequence: \1"),
])
async def test_patterns_go_rejects_are_invalid_argument_with_the_reason(cluster, field,
                                                                      pattern, reason):
    agents, h = cluster
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await h.flows(whitelist=[fpb.FlowFilter(**{field: [pattern]})])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"invalid {field} filter" in e.value.details() and reason in e.value.details()
    assert not any(a.requests for a in agents)


@pytest.mark.parametrize("batched", [True, False])
async def test_slow_client_gets_a_lost_event_and_the_relay_stays_bounded(batched):
    a = await FakeAgent("n1", batched).start()
    h = await start_relay(RelayConfig(peers=[a.address], flows=fast_opts(
        queue_size=50, lag_timeout=0.2)))
    try:
        await h.connected(1)
        call = h.observer.GetFlows(opb.GetFlowsRequest(follow=True), timeout=30)
        first = await call.read()  # NODE_CONNECTED; then stop reading
        assert first.HasField("node_status")
        await until(lambda: a.followers, what="stream open")
        session = next(iter(h.relay.observer.sessions))
        t = time.time_ns()
        peak = 0
        for k in range(20_000):  # 10 MB: far more than gRPC's windows hold
            a.add(t + k, pad=500)
            if k % 500 == 0:
                await asyncio.sleep(0.01)
                peak = max(peak, sum(len(u) for u in session._upstreams))
        await asyncio.sleep(0.5)
        peak = max(peak, sum(len(u) for u in session._upstreams))
        assert peak <= 51  # the queue, plus the LostEvent notice
        got, accounted = [], 0
        while accounted < 20_000:  # catch up: every flow arrives or is counted as lost
            r = await asyncio.wait_for(call.read(), 5)
            got.append(r)
            accounted += r.lost_events.num_events_lost if r.HasField("lost_events") else 1
        lost = [x for x in got if x.HasField("lost_events")]
        assert lost[0].lost_events.source == fpb.OBSERVER_EVENTS_QUEUE
        assert lost[0].node_name == "n1"
        ts = flow_times(got)
        assert ts == sorted(ts) and len(ts) < 20_000
        call.cancel()
    finally:
        await h.channel.close()
        await h.relay.stop()
        await a.stop()


@pytest.mark.parametrize("batched", [True, False])
async def test_a_client_that_keeps_reading_slowly_gets_backpressure_not_drops(batched):
    a = await FakeAgent("n1", batched).start()
    # The relay, the fake agent and this reader share one event loop: when the
    # machine stalls the process, the relay's clock sees the stall as the client not
    # reading. A slow reader and a stopped one (the test above, 0.2 s) must be told
    # apart by far more than such a stall, so this one gets the default 1 s and more.
    h = await start_relay(RelayConfig(peers=[a.address], flows=fast_opts(
        queue_size=20, lag_timeout=3.0)))
    try:
        await h.connected(1)
        call = h.observer.GetFlows(opb.GetFlowsRequest(follow=True), timeout=30)
        assert (await call.read()).HasField("node_status")
        await until(lambda: a.followers, what="stream open")
        t = time.time_ns()
        a.add(*(t + k for k in range(3000)), pad=200)  # a burst far beyond the queue
        got = []
        while len(got) < 3000:
            r = await asyncio.wait_for(call.read(), 5)
            assert not r.HasField("lost_events")
            got.append(r)
            if len(got) % 100 == 0:
                await asyncio.sleep(0.02)  # slower than the agent, never stuck
        assert flow_times(got) == [t + k for k in range(3000)]
        call.cancel()
    finally:
        await h.channel.close()
        await h.relay.stop()
        await a.stop()


async def test_peer_service_announcements_join_and_leave_an_open_stream():
    seed = await FakeAgent("n1").start()
    late = await FakeAgent("n2").start()
    seed.announce("n1", seed.address)
    h = await start_relay(RelayConfig(peer_service=seed.address, peer_port=late.port,
                                      flows=fast_opts()))
    try:
        await h.connected(1)
        call = h.observer.GetFlows(opb.GetFlowsRequest(follow=True), timeout=20)
        got: list[opb.GetFlowsResponse] = []

        async def read() -> None:
            async for r in call:
                got.append(r)

        reader = asyncio.create_task(read())
        await until(lambda: statuses(got), what="first status")
        assert statuses(got) == [(rpb.NODE_CONNECTED, ["n1"], "")]
        seed.announce("n2", "127.0.0.1")  # a bare host: --peer-port applies
        await until(lambda: (rpb.NODE_CONNECTED, ["n2"], "") in statuses(got), what="n2 joins")
        assert h.relay.pool.get("n2").address == f"127.0.0.1:{late.port}"
        t = time.time_ns()
        late.add(t)
        await until(lambda: t in flow_times(got), what="n2's flow")
        seed.announce("n2", "", ppb.PEER_DELETED)
        await until(lambda: (rpb.NODE_GONE, ["n2"], "") in statuses(got), what="n2 leaves")
        call.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    finally:
        await h.channel.close()
        await h.relay.stop()
        await seed.stop()
        await late.stop()


class Follower:
    """A follow GetFlows through the relay, read by a task: every response in order."""

    def __init__(self, h: RelayHarness) -> None:
        self.call = h.observer.GetFlows(opb.GetFlowsRequest(follow=True), timeout=30)
        self.got: list[opb.GetFlowsResponse] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for r in self.call:
            self.got.append(r)

    def of(self, node: str) -> list[tuple[int, str]]:
        """(state, message) of each node status naming `node`, in order."""
        return [(s[0], s[2]) for s in statuses(self.got) if node in s[1]]

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_agent_back_within_the_error_window_is_reported_lost_before_connected():
    """An agent restarted in place (a DaemonSet's new pod starts while the old one
    terminates) can serve again long before the error aggregation window ends: the
    old stream's NODE_ERROR must still reach the client before the NODE_CONNECTED of
    the rejoin, not after it."""
    agent = await FakeAgent("n1").start()
    # an error window far beyond the restart
    h = await start_relay(RelayConfig(peers=[agent.address], flows=fast_opts(error_window=30.0)))
    await h.connected(1)
    follow = Follower(h)
    try:
        await until(lambda: len(agent.followers) == 1, what="n1's stream open")
        port = agent.port
        await agent.stop()  # the old agent's server cancels its calls
        await agent.start(port=port)
        await until(lambda: rpb.NODE_CONNECTED in [s for s, _ in follow.of("n1")[1:]],
                    what="n1 connected again")
        assert [s for s, _ in follow.of("n1")] == [
            rpb.NODE_CONNECTED, rpb.NODE_ERROR, rpb.NODE_CONNECTED], follow.of("n1")
        assert follow.of("n1")[1][1], "the error says what happened"
        t = time.time_ns()
        agent.add(t)
        await until(lambda: t in flow_times(follow.got), what="the restarted agent's flows")
    finally:
        await follow.close()
        await h.channel.close()
        await h.relay.stop()
        await agent.stop()


async def peer_service_relay(seed: FakeAgent, **opts: Any) -> RelayHarness:
    h = await start_relay(RelayConfig(peer_service=seed.address, flows=fast_opts(**opts)))
    await h.connected(1)
    return h


async def test_node_at_a_new_address_is_reported_lost_then_connected():
    """The peer service announces a node at a new address (its agent replaced) while
    the old agent's stream is still open: the relay cuts that stream and says so
    (NODE_ERROR) before the node's NODE_CONNECTED from its new address."""
    seed, old, new = [await FakeAgent(n).start() for n in ("seed", "n2", "n2")]
    seed.announce("n2", old.address)
    h = await peer_service_relay(seed)
    follow = Follower(h)
    try:
        await until(lambda: len(old.followers) == 1, what="the old agent's stream open")
        seed.announce("n2", new.address, ppb.PEER_UPDATED)
        await until(lambda: rpb.NODE_CONNECTED in [s for s, _ in follow.of("n2")[1:]],
                    what="n2 connected again")
        assert [s for s, _ in follow.of("n2")] == [
            rpb.NODE_CONNECTED, rpb.NODE_ERROR, rpb.NODE_CONNECTED], follow.of("n2")
        assert new.address in follow.of("n2")[1][1]
        await until(lambda: not old.followers, what="the old stream cut")
        t = time.time_ns()
        new.add(t)
        await until(lambda: t in flow_times(follow.got), what="the new agent's flows")
    finally:
        await follow.close()
        await h.channel.close()
        await h.relay.stop()
        for a in (seed, old, new):
            await a.stop()


@pytest.mark.parametrize("first", ["error", "announcement"])
async def test_old_stream_error_and_new_address_in_any_order_give_error_then_connected(first):
    """The old agent's stream fails and the node is announced at a new address, in
    either order and with no pause between (both in the relay's same turn or not):
    one NODE_ERROR for the node, then its NODE_CONNECTED, never the other way round."""
    seed, old, new = [await FakeAgent(n).start() for n in ("seed", "n2", "n2")]
    seed.announce("n2", old.address)
    h = await peer_service_relay(seed, error_window=30.0)
    follow = Follower(h)
    try:
        await until(lambda: len(old.followers) == 1, what="the old agent's stream open")
        if first == "error":
            old.fail_streams(grpc.StatusCode.UNAVAILABLE, "agent shutting down")
            seed.announce("n2", new.address, ppb.PEER_UPDATED)
        else:
            seed.announce("n2", new.address, ppb.PEER_UPDATED)
            old.fail_streams(grpc.StatusCode.UNAVAILABLE, "agent shutting down")
        await until(lambda: any(s == rpb.NODE_CONNECTED for s, _ in follow.of("n2")[1:]),
                    what="n2 connected again")
        states = [s for s, _ in follow.of("n2")]
        assert states == [rpb.NODE_CONNECTED, rpb.NODE_ERROR, rpb.NODE_CONNECTED], follow.of("n2")
        assert follow.of("n2")[1][1] in (
            "rpc error: code = Unavailable desc = agent shutting down",
            f"connection to the node replaced (now {new.address})")
    finally:
        await follow.close()
        await h.channel.close()
        await h.relay.stop()
        for a in (seed, old, new):
            await a.stop()


@pytest.mark.parametrize("batched", [True, False])
async def test_flows_waiting_for_room_when_the_connection_is_replaced_are_not_lost(batched):
    """The node's connection is replaced (announced at another address that reaches
    the same agent) while its stream waits for room in a full buffer (the client reads
    nothing meanwhile): the entries that stream held but had not buffered are asked
    again from the new connection, not skipped."""
    seed, old, new = [await FakeAgent(n, batched).start() for n in ("seed", "n2", "n2")]
    new.history = old.history  # one agent, two addresses
    seed.announce("n2", old.address)
    h = await peer_service_relay(seed, queue_size=20, lag_timeout=60.0)
    call = h.observer.GetFlows(opb.GetFlowsRequest(follow=True), timeout=60)
    try:
        assert (await call.read()).HasField("node_status")  # then nothing read for a while
        await until(lambda: len(old.followers) == 1, what="the old agent's stream open")
        up = next(iter(h.relay.observer.sessions))._active["n2"]
        t = time.time_ns()
        old.add(*(t + k for k in range(2000)), pad=200)  # far beyond the windows and queue
        await until(lambda: len(up) >= 20 and not up._space.is_set(),
                    what="the old stream waiting for room")
        seed.announce("n2", new.address, ppb.PEER_UPDATED)
        await until(lambda: h.relay.pool.get("n2").address == new.address, what="new address")
        # the relay's request goes on (the old stream is cut) once the client reads
        got: list[opb.GetFlowsResponse] = []
        while not (got and got[-1].HasField("flow") and got[-1].time.ToNanoseconds() == t + 1999):
            got.append(await asyncio.wait_for(call.read(), 10))
        missing = sorted({t + k for k in range(2000)} - set(flow_times(got)))
        assert not missing, f"{len(missing)} flows skipped, from {missing[0] - t}"
        assert flow_times(got) == [t + k for k in range(2000)]
        assert not [r for r in got if r.HasField("lost_events")]
    finally:
        call.cancel()
        await h.channel.close()
        await h.relay.stop()
        for a in (seed, old, new):
            await a.stop()


async def test_relay_reconnects_to_a_restarted_agent(cluster):
    agents, h = cluster
    port = agents[0].port
    await agents[0].stop()
    await until(lambda: not h.relay.pool.get(f"static:127.0.0.1:{port}").connected,
                what="n1 unavailable")
    st = await h.observer.ServerStatus(opb.ServerStatusRequest(), timeout=5)
    assert st.num_unavailable_nodes.value == 1 and list(st.unavailable_nodes) == ["n1"]
    await agents[0].start(port=port)
    await h.connected(3)


# -- unary calls -------------------------------------------------------------------

async def test_server_status_nodes_and_namespaces_are_aggregated(cluster):
    agents, h = cluster
    for i, a in enumerate(agents):
        a.add(*range(i + 1))
    agents[0].namespaces = [("", "demo"), ("", "kube-system")]
    agents[1].namespaces = [("", "demo"), ("c2", "apps")]
    st = await h.observer.ServerStatus(opb.ServerStatusRequest(), timeout=5)
    assert (st.num_flows, st.max_flows, st.seen_flows) == (6, 3 * 4095, 9)
    assert st.flows_rate == pytest.approx(4.5)
    assert st.num_connected_nodes.value == 3 and st.num_unavailable_nodes.value == 0
    assert st.uptime_ns == 2 * S and st.version.endswith("webb-relay")
    nodes = (await h.observer.GetNodes(opb.GetNodesRequest(), timeout=5)).nodes
    assert [n.name for n in nodes] == ["n1", "n2", "n3"]
    assert [n.num_flows for n in nodes] == [1, 2, 3]
    assert all(n.state == rpb.NODE_CONNECTED and n.version == "fake-1" and n.max_flows == 4095
               and n.uptime_ns == 2 * S and n.address.startswith("127.0.0.1:") for n in nodes)
    ns = (await h.observer.GetNamespaces(opb.GetNamespacesRequest(), timeout=5)).namespaces
    assert [(n.cluster, n.namespace) for n in ns] == [("", "demo"), ("", "kube-system"),
                                                      ("c2", "apps")]


async def test_agent_and_debug_events_are_unimplemented_as_in_hubble_relay(cluster):
    _, h = cluster
    for call in (h.observer.GetAgentEvents(opb.GetAgentEventsRequest()),
                 h.observer.GetDebugEvents(opb.GetDebugEventsRequest())):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call.read()
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health_follows_the_agents():
    a = await FakeAgent("n1").start()
    h = await start_relay(RelayConfig(peers=[a.address], flows=fast_opts()))
    health = health_pb2_grpc.HealthStub(h.channel)

    async def status(service: str) -> int:
        r = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return r.status

    try:
        await h.connected(1)
        serving = health_pb2.HealthCheckResponse.SERVING
        await until_async(lambda: status(""), serving)
        # Hubble Relay's names: "" and v1.ObserverServiceName (what `hubble status`
        # asks), plus the service's own gRPC name.
        names = ("", "hubble.server.Observer", "observer.Observer")
        for name in names:
            assert await status(name) == serving, name
        await a.stop()
        for name in names:
            await until_async(lambda: status(name), health_pb2.HealthCheckResponse.NOT_SERVING)
    finally:
        await h.channel.close()
        await h.relay.stop()
        await a.stop()


async def until_async(fn: Callable[[], Any], want: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await fn() == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never became {want}")


# -- TLS ---------------------------------------------------------------------------

def make_pki(d: Path) -> dict[str, Path]:
    """A CA and certificates for the relay, the agents and a client (openssl)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    for name, san in (("relay", "DNS:localhost,IP:127.0.0.1"),
                      ("agent", "DNS:*.default.hubble-grpc.cilium.io"),
                      ("client", "DNS:client")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-out", f"{name}.crt", "-extfile", f"{name}.ext")
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}


async def test_tls_to_clients_and_mtls_to_agents(tmp_path):
    pki = make_pki(tmp_path)
    rd = lambda k: pki[k].read_bytes()  # noqa: E731
    # the agent demands a client certificate from our CA
    agent_creds = grpc.ssl_server_credentials([(rd("agent_key"), rd("agent_crt"))],
                                              root_certificates=rd("ca_crt"),
                                              require_client_auth=True)
    a = await FakeAgent("n1").start(agent_creds)
    a.add(time.time_ns())
    cfg = RelayConfig(peers=[a.address], flows=fast_opts(),
                      tls_cert=str(pki["relay_crt"]), tls_key=str(pki["relay_key"]),
                      tls_client_ca=str(pki["ca_crt"]),
                      agent_tls_ca=str(pki["ca_crt"]), agent_tls_cert=str(pki["client_crt"]),
                      agent_tls_key=str(pki["client_key"]),
                      agent_tls_server_name="n1.default.hubble-grpc.cilium.io")
    client = grpc.ssl_channel_credentials(rd("ca_crt"), rd("client_key"), rd("client_crt"))
    h = await start_relay(cfg, client)
    try:
        await h.connected(1)
        out = await h.flows()
        assert len(flow_times(out)) == 1
        nodes = (await h.observer.GetNodes(opb.GetNodesRequest(), timeout=5)).nodes
        assert nodes[0].tls.enabled
        assert nodes[0].tls.server_name == "n1.default.hubble-grpc.cilium.io"
        # a client without a certificate is turned away
        anon = grpc.aio.secure_channel(f"127.0.0.1:{h.relay.port}",
                                       grpc.ssl_channel_credentials(rd("ca_crt")))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await observer_pb2_grpc.ObserverStub(anon).ServerStatus(opb.ServerStatusRequest(),
                                                                    timeout=3)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        await anon.close()
    finally:
        await h.channel.close()
        await h.relay.stop()
        await a.stop()


async def test_agent_with_a_certificate_for_another_name_stays_unavailable(tmp_path):
    pki = make_pki(tmp_path)
    rd = lambda k: pki[k].read_bytes()  # noqa: E731
    a = await FakeAgent("n1").start(grpc.ssl_server_credentials([(rd("agent_key"), rd("agent_crt"))]))
    h = await start_relay(RelayConfig(peers=[a.address], flows=fast_opts(),
                                      agent_tls_ca=str(pki["ca_crt"]),
                                      agent_tls_server_name="wrong.example"))
    try:
        await asyncio.sleep(1.0)
        assert not h.relay.pool.list()[0].connected
    finally:
        await h.channel.close()
        await h.relay.stop()
        await a.stop()


# -- pieces ------------------------------------------------------------------------

@pytest.mark.parametrize("addr,want", [
    ("10.0.0.1:4244", "10.0.0.1:4244"),
    ("10.0.0.1", "10.0.0.1:4250"),
    ("node-1", "node-1:4250"),
    ("fd00::1", "[fd00::1]:4250"),
    ("[fd00::1]", "[fd00::1]:4250"),
    ("[fd00::1]:4244", "[fd00::1]:4244"),
    ("unix:///var/run/cilium/hubble.sock", "unix:///var/run/cilium/hubble.sock"),
])
def test_peer_addresses_get_the_default_port(addr, want):
    assert normalize_address(addr, 4250) == want


@pytest.mark.parametrize("bad", ["", "host:", "host:port", "fd00::zz"])
def test_bad_peer_addresses(bad):
    with pytest.raises(ValueError):
        normalize_address(bad)


def test_flags_and_durations():
    assert duration("1s") == 1 and duration("500ms") == 0.5 and duration("1m30s") == 90
    assert duration("0.25") == 0.25
    cfg = parse_args(["--peers", "a:1,b:2", "--peers", "c", "--sort-buffer-len-max", "50",
                      "--sort-buffer-drain-timeout", "250ms"])
    assert cfg.peers == ["a:1", "b:2", "c"] and cfg.listen_address == ":4245"
    assert cfg.flows.sort_buffer_len == 50 and cfg.flows.sort_window == 0.25
    with pytest.raises(SystemExit):
        parse_args([])  # no way to find agents
    with pytest.raises(SystemExit):
        parse_args(["--peers", "a:1", "--sort-buffer-drain-timeout", "soon"])

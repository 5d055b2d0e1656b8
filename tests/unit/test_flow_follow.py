"""webb.flow_follow against an in-process gRPC server that serves webb.stream.FlowStream
(batches) and/or observer.Observer (GetFlows) from a list of responses with since/follow:
batches, fallback, resume without gap or duplicate (equal timestamps too), history,
shedding for a slow consumer."""
from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest

from support import free_port, until
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc
from webb.api.stream import stream_pb2 as spb
from webb.api.stream import stream_pb2_grpc
from webb.backoff import Backoff
from webb.flow_follow import Batch, FlowFollower, entry_identity, entry_kind, ns_ts, ts_ns

S = 1_000_000_000


def flow_resp(t_ns: int, node: str = "n1") -> opb.GetFlowsResponse:
    f = fpb.Flow(uuid=str(uuid.uuid4()), node_name=node, verdict=fpb.FORWARDED)
    f.time.CopyFrom(ns_ts(t_ns))
    return opb.GetFlowsResponse(flow=f, node_name=node, time=f.time)


class Store(observer_pb2_grpc.ObserverServicer, stream_pb2_grpc.FlowStreamServicer):
    def __init__(self, batch: int = 50) -> None:
        self.items: list[opb.GetFlowsResponse] = []
        self.requests: list[tuple[str, opb.GetFlowsRequest]] = []
        self.changed = asyncio.Event()
        self.batch = batch
        self.status_time_ns = 0  # a node status first in every stream, stamped so (as a relay)

    def add(self, *resps: opb.GetFlowsResponse) -> None:
        self.items.extend(resps)
        self.changed.set()
        self.changed = asyncio.Event()

    async def _select(self, request):
        since = ts_ns(request.since) if request.HasField("since") else 0
        items = self.items
        if request.number:
            items = [r for r in items if r.HasField("flow")][-request.number:]
        if self.status_time_ns:
            st = opb.GetFlowsResponse(node_name="relay", time=ns_ts(self.status_time_ns))
            st.node_status.node_names.extend(["n0", "n1"])
            yield st
        i = 0
        while True:
            while i < len(items):
                r = items[i]
                i += 1
                if ts_ns(r.time) >= since:
                    yield r
            if not request.follow:
                return
            await self.changed.wait()
            if not request.number:
                items = self.items

    async def GetFlows(self, request, context):
        self.requests.append(("getflows", request))
        async for r in self._select(request):
            yield r

    async def GetFlowBatches(self, request, context):
        self.requests.append(("batches", request))
        fb = spb.FlowBatch()
        nodes: dict[str, int] = {}
        async for r in self._select(request):
            fb.responses.append(r.SerializeToString())
            fb.time_ns.append(ts_ns(r.time))
            if r.node_name not in nodes:
                nodes[r.node_name] = len(nodes)
                fb.nodes.append(r.node_name)
            fb.node_index.append(nodes[r.node_name])
            if len(fb.responses) >= self.batch:
                yield fb
                fb, nodes = spb.FlowBatch(), {}
            # a partly filled batch goes out when nothing more is ready
            if fb.responses and not _ready(self, r):
                yield fb
                fb, nodes = spb.FlowBatch(), {}
        if fb.responses:
            yield fb


def _ready(store: Store, last: opb.GetFlowsResponse) -> bool:
    return store.items and store.items[-1] is not last


class Server:
    def __init__(self, store: Store, batched: bool = True) -> None:
        self.store = store
        self.batched = batched
        self.port = free_port()
        self.server: grpc.aio.Server | None = None

    async def start(self) -> "Server":
        self.server = grpc.aio.server()
        observer_pb2_grpc.add_ObserverServicer_to_server(self.store, self.server)
        if self.batched:
            stream_pb2_grpc.add_FlowStreamServicer_to_server(self.store, self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None


class Consumer:
    def __init__(self, follower: FlowFollower, delay: float = 0.0) -> None:
        self.follower = follower
        self.delay = delay
        self.flows: list[opb.GetFlowsResponse] = []
        self.lost: list[opb.GetFlowsResponse] = []
        self.status: list[opb.GetFlowsResponse] = []
        self.marks: list[tuple[str, int]] = []
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        async for b in self.follower.follow():
            if b.mark:
                self.marks.append((b.mark, len(self.flows)))
            for raw, r, t in zip(b.raw, b.responses(), b.time_ns):
                assert entry_kind(raw) == r.WhichOneof("response_types")
                assert t == ts_ns(r.time)
                {"flow": self.flows, "lost_events": self.lost, "node_status": self.status}[
                    r.WhichOneof("response_types")].append(r)
            if self.delay:
                await asyncio.sleep(self.delay)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def channel_for():
    chans = []

    def make(srv: Server) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}", options=[
            ("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 100)])
        chans.append(ch)
        return ch
    yield make
    for ch in chans:
        await ch.close()


def fast_backoff() -> Backoff:
    return Backoff(0.02, 0.1)


@pytest.mark.parametrize("batched", [True, False], ids=["batches", "getflows-fallback"])
async def test_resume_after_restart_has_no_gap_and_no_duplicate(channel_for, batched):
    now = time.time_ns()
    store = Store()
    store.status_time_ns = now + 100 * S  # newer than every flow: must not end the replay check
    srv = await Server(store, batched).start()
    f = FlowFollower(channel_for(srv), since_ns=now, overlap_s=0.5, backoff=fast_backoff())
    c = Consumer(f)
    try:
        # two nodes, and two flows of the same nanosecond on either side of the restart
        first = [flow_resp(now + i * 50_000_000, f"n{i % 2}") for i in range(20)]
        same_ns = flow_resp(first[-1].flow.time.seconds * S + first[-1].flow.time.nanos, "n1")
        store.add(*first)
        store.add(opb.GetFlowsResponse(lost_events=fpb.LostEvent(
            source=fpb.PERF_EVENT_RING_BUFFER, num_events_lost=4), node_name="n0", time=first[-1].time))
        await until(lambda: len(c.flows) == 20 and len(c.lost) == 1, what="first flows")
        assert f.stats.mode == ("batches" if batched else "getflows")
        await srv.stop()
        await until(lambda: not f.stats.connected, what="disconnect")
        later = [flow_resp(now + S + i * 50_000_000) for i in range(10)]
        store.add(same_ns, *later)
        await srv.start()
        await until(lambda: len(c.flows) == 31, what="resumed flows")
        await asyncio.sleep(0.2)
        uuids = [r.flow.uuid for r in c.flows]
        assert len(uuids) == len(set(uuids)) == 31
        assert set(uuids) == {r.flow.uuid for r in first + [same_ns] + later}
        assert len(c.lost) == 1, "a replayed lost-event notice is not delivered twice"
        assert len(c.status) == 2, "node status comes with every stream"
        kind, req = store.requests[-1]
        assert kind == ("batches" if batched else "getflows")
        assert req.follow and ts_ns(req.since) == ts_ns(first[-1].time) - S // 2
        assert f.stats.duplicates == 11 and f.stats.reconnects == 1  # [-0.5 s, newest] came again
    finally:
        await c.stop()
        await srv.stop()


async def test_history_then_follow_from_it(channel_for):
    now = time.time_ns()
    store = Store(batch=7)
    old = [flow_resp(now - 10 * S + i * S) for i in range(10)]
    store.add(*old)
    srv = await Server(store).start()
    f = FlowFollower(channel_for(srv), opb.GetFlowsRequest(whitelist=[fpb.FlowFilter(node_name=["n1"])]),
                     history=4, backoff=fast_backoff())
    c = Consumer(f)
    try:
        await until(lambda: c.marks, what="history")
        assert c.marks == [("history_done", 4)]
        assert [r.flow.uuid for r in c.flows] == [r.flow.uuid for r in old[-4:]]
        new = flow_resp(now + S)
        store.add(new)
        await until(lambda: len(c.flows) == 5, what="a live flow")
        await asyncio.sleep(0.1)
        assert c.flows[-1].flow.uuid == new.flow.uuid and len(c.flows) == 5
        (_, hist), (_, live) = store.requests
        assert hist.number == 4 and not hist.follow and list(hist.whitelist) == list(live.whitelist)
        # from the newest minus the overlap, never before the oldest shown
        assert live.follow and ts_ns(live.since) == ts_ns(old[-1].time) - 2 * S
    finally:
        await c.stop()
        await srv.stop()


async def test_slow_consumer_sheds_and_reports_what_it_shed(channel_for):
    now = time.time_ns()
    store = Store(batch=100)
    srv = await Server(store).start()
    f = FlowFollower(channel_for(srv), since_ns=now, max_pending=300, shed_after_s=0.05,
                     backoff=fast_backoff(), name="slow-test")
    c = Consumer(f, delay=0.05)
    try:
        await until(lambda: f.stats.connected, what="connected")
        sent = 5000
        for i in range(0, sent, 100):
            store.add(*[flow_resp(now + (i + j) * 1000) for j in range(100)])
            await asyncio.sleep(0)
        await until(lambda: len(c.flows) + f.stats.shed == sent and f.stats.pending == 0
                    and not f._unreported_shed, timeout=20, what="everything delivered or shed")
        assert f.stats.shed > 0
        shed_reported = sum(r.lost_events.num_events_lost for r in c.lost)
        assert shed_reported == f.stats.shed
        assert all(r.lost_events.source == fpb.OBSERVER_EVENTS_QUEUE and r.node_name == "slow-test"
                   for r in c.lost)
        assert f.stats.pending <= 300
    finally:
        await c.stop()
        await srv.stop()


async def test_restart_reconnects_at_once_and_bad_requests_are_errors(channel_for):
    store = Store()
    srv = await Server(store).start()
    states: list[str] = []
    f = FlowFollower(channel_for(srv), backoff=Backoff(0.02, 0.1),
                     on_state=lambda s: states.append(s.state))
    c = Consumer(f)
    try:
        await until(lambda: f.stats.connected, what="connected")
        f.restart()
        await until(lambda: f.stats.connects == 2, what="reconnected")
        assert "retrying" in states and states[-1] == "live"
        # a restart just before the consumer goes away must not keep the reader alive
        f.restart()
        await asyncio.wait_for(c.stop(), 5)
        assert c.task.done()
    finally:
        await c.stop()
        await srv.stop()


def test_entry_kind_reads_the_first_byte_or_parses():
    assert entry_kind(flow_resp(1).SerializeToString()) == "flow"
    assert entry_kind(opb.GetFlowsResponse(lost_events=fpb.LostEvent()).SerializeToString()) == "lost_events"
    ns = opb.GetFlowsResponse(node_name="x")
    ns.node_status.node_names.append("a")
    assert entry_kind(ns.SerializeToString()) == "node_status"
    # node_name first (an encoder that does not order by field number)
    raw = opb.GetFlowsResponse(node_name="x").SerializeToString() + \
        opb.GetFlowsResponse(flow=fpb.Flow()).SerializeToString()
    assert entry_kind(raw) == "flow"
    assert len(Batch([b"\n\x00"], [1], ["n"])) == 1


def test_what_is_remembered_for_resuming_is_bounded():
    from webb.flow_follow import _Delivered
    d = _Delivered(window_ns=10, max_entries=1000)
    for t in range(100):
        d.record(t, {(t, i) for i in range(5)})
    assert d.entries <= 11 * 5  # a window of 10 ns of stream time
    for _ in range(1000):  # stream time standing still (a source repeating its times)
        d.record(99, {object() for _ in range(7)})
    assert d.entries <= 1000
    d.start_replay()
    assert len(d._replay) == d.entries


async def test_what_queued_behind_a_busy_consumer_comes_as_one_batch(channel_for):
    """Batches of one flow each (a server that sends as soon as anything is ready) pile up
    while the consumer is busy; it then takes them in one step, in order, with no loss."""
    now = time.time_ns()
    store = Store(batch=1)
    srv = await Server(store).start()
    f = FlowFollower(channel_for(srv), since_ns=now, backoff=fast_backoff())
    sizes: list[int] = []
    got: list[str] = []
    release = asyncio.Event()

    async def consume() -> None:
        async for b in f.follow():
            sizes.append(len(b))
            got.extend(r.flow.uuid for r in b.responses() if r.HasField("flow"))
            await release.wait()
    task = asyncio.create_task(consume())
    try:
        sent = [flow_resp(now + i * 1000) for i in range(50)]
        await until(lambda: f.stats.connected, what="connected")
        store.add(sent[0])
        await until(lambda: sizes, what="the first batch")
        for r in sent[1:]:
            store.add(r)
            await asyncio.sleep(0)
        await until(lambda: f.stats.pending == 49, what="49 flows queued")
        assert f.stats.batches == 50
        release.set()
        await until(lambda: len(got) == 50, what="all delivered")
        assert sizes == [1, 49]
        assert got == [r.flow.uuid for r in sent]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await srv.stop()


def test_entry_identity_is_the_flows_uuid_wherever_its_bytes_repeat():
    u = str(uuid.uuid4())
    f = fpb.Flow(uuid=u, node_name="n1")
    f.source.labels.append("k8s:x=\x92\x02\x24" + "y" * 40)  # the tag's bytes before the uuid
    raw = opb.GetFlowsResponse(flow=f).SerializeToString()
    assert entry_identity(raw) == u.encode()
    f.Summary = "\x92\x02\x24" + "z" * 40  # and after it (Summary is field 100000)
    raw = opb.GetFlowsResponse(flow=f).SerializeToString()
    assert entry_identity(raw) == u.encode()
    # re-encoded with other node data: the same identity
    g = fpb.Flow(uuid=u, node_name="n2")
    assert entry_identity(opb.GetFlowsResponse(flow=g).SerializeToString()) == u.encode()
    # no uuid: the whole encoding
    h = opb.GetFlowsResponse(flow=fpb.Flow(node_name="n1")).SerializeToString()
    assert entry_identity(h) == hash(h)


class _EndsAtOnce(observer_pb2_grpc.ObserverServicer, stream_pb2_grpc.FlowStreamServicer):
    """A server whose every stream ends at once: the follower backs off between them."""

    def __init__(self) -> None:
        self.requests = 0

    async def GetFlowBatches(self, request, context):
        self.requests += 1
        return
        yield

    async def GetFlows(self, request, context):
        self.requests += 1
        return
        yield


async def test_a_cancel_that_meets_the_end_of_a_wait_stops_the_follower(channel_for):
    # The exporter's stop once hung for good: its follower was cancelled in the loop
    # step where the wait it was in ended (there: the channel became ready), and
    # Python 3.11's asyncio.wait_for returned the result instead of the cancellation,
    # so the reader went on streaming and `cancel(); await` never returned. Here the
    # wait is the back-off pause, ended by wake() in the same step as the cancel.
    store = _EndsAtOnce()
    srv = Server(store)  # type: ignore[arg-type]
    await srv.start()
    f = FlowFollower(channel_for(srv), backoff=Backoff(30, 30))
    c = Consumer(f)
    try:
        await until(lambda: f.stats.state == "retrying", what="backing off after a stream ended")
        asked = store.requests
        f.backoff.wake()
        c.task.cancel()
        done, _ = await asyncio.wait({c.task}, timeout=10)
        assert done, "the follower outlived its cancellation"
        assert store.requests == asked  # and never asked the server again
    finally:
        await c.stop()
        await srv.stop()

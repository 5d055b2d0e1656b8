"""The exporter against an in-process gRPC observer: follow from start, reconnect without
double counting, lost events, agent events driving series GC, /metrics and /healthz."""
from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import grpc
import pytest

from support import free_port, until
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc
from webb.flow_follow import Batch
from webb_metrics.flow_source import FlowSource, FlowSourceConfig, ns_ts, ts_ns
from webb_metrics.main import Config, Exporter
from webb_metrics.config import parse_metrics
from webb_metrics.handlers import PLUGINS
from webb_metrics.pipeline import Pipeline

S = 1_000_000_000


def mkflow(t_ns: int, pod: str = "web-1", uid: str | None = None) -> fpb.Flow:
    f = fpb.Flow(verdict=fpb.FORWARDED, uuid=uid or str(uuid.uuid4()), node_name="n1",
                 traffic_direction=fpb.EGRESS)
    f.time.CopyFrom(ns_ts(t_ns))
    f.event_type.type = 4
    f.IP.source, f.IP.destination, f.IP.ipVersion = "10.0.1.5", "10.0.2.7", fpb.IPv4
    f.l4.TCP.destination_port = 80
    f.l4.TCP.flags.SYN = True
    f.is_reply.value = False
    f.source.namespace, f.source.pod_name = "shop", pod
    f.destination.namespace, f.destination.pod_name = "shop", "db-0"
    return f


class FakeObserver(observer_pb2_grpc.ObserverServicer):
    """Serves a history of GetFlowsResponses (flows, lost events) with since/follow, and
    agent events."""

    def __init__(self) -> None:
        self.history: list[opb.GetFlowsResponse] = []
        self.agent_events: list[opb.GetAgentEventsResponse] = []
        self.requests: list[opb.GetFlowsRequest] = []
        self.changed = asyncio.Event()
        self.agent_events_unimplemented = False

    def add_flow(self, f: fpb.Flow) -> None:
        self.history.append(opb.GetFlowsResponse(flow=f, node_name=f.node_name, time=f.time))
        self._poke()

    def add_lost(self, t_ns: int, source: int, count: int) -> None:
        self.history.append(opb.GetFlowsResponse(
            lost_events=fpb.LostEvent(source=source, num_events_lost=count), node_name="n1",
            time=ns_ts(t_ns)))
        self._poke()

    def add_agent_event(self, ev: fpb.AgentEvent) -> None:
        self.agent_events.append(opb.GetAgentEventsResponse(agent_event=ev, node_name="n1",
                                                            time=ns_ts(time.time_ns())))
        self._poke()

    def _poke(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def GetFlows(self, request, context):
        self.requests.append(request)
        since = ts_ns(request.since) if request.HasField("since") else 0
        i = 0
        while True:
            while i < len(self.history):
                r = self.history[i]
                i += 1
                if r.HasField("flow") and ts_ns(r.flow.time) < since:
                    continue
                yield r
            if not request.follow:
                return
            await self.changed.wait()

    async def GetAgentEvents(self, request, context):
        if self.agent_events_unimplemented:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not on a relay")
        i = 0
        while True:
            while i < len(self.agent_events):
                i += 1
                yield self.agent_events[i - 1]
            await self.changed.wait()


class Server:
    def __init__(self, servicer: FakeObserver, port: int) -> None:
        self.servicer = servicer
        self.port = port
        self.server: grpc.aio.Server | None = None

    async def start(self) -> "Server":
        self.server = grpc.aio.server()
        observer_pb2_grpc.add_ObserverServicer_to_server(self.servicer, self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None


@pytest.fixture
async def fake():
    srv = await Server(FakeObserver(), free_port()).start()
    try:
        yield srv
    finally:
        await srv.stop()


def source_for(srv: Server, start_ns: int, overlap_s: float = 2.0):
    counted: list[fpb.Flow] = []
    lost: list[fpb.LostEvent] = []
    cfg = FlowSourceConfig(f"127.0.0.1:{srv.port}", overlap_s=overlap_s, start_ns=start_ns,
                           backoff_min_s=0.05, backoff_max_s=0.2)
    return FlowSource(cfg, counted.extend, lost.append), counted, lost


async def test_first_connection_counts_only_flows_since_start(fake):
    now = time.time_ns()
    fake.servicer.add_flow(mkflow(now - 10 * S))  # history from before the exporter
    src, counted, _ = source_for(fake, start_ns=now)
    task = asyncio.create_task(src.run())
    try:
        await src.connected_event.wait()
        fake.servicer.add_flow(mkflow(now + 1))
        await until(lambda: len(counted) == 1, what="the new flow")
        req = fake.servicer.requests[0]
        assert req.follow and ts_ns(req.since) == now
        assert src.stats.flows == 1 and src.stats.too_old == 0
    finally:
        task.cancel()


async def test_reconnect_replays_overlap_and_counts_each_flow_once(fake):
    now = time.time_ns()
    src, counted, lost = source_for(fake, start_ns=now, overlap_s=1.0)
    obs = fake.servicer
    task = asyncio.create_task(src.run())
    try:
        ts = [now + i * 100_000_000 for i in range(30)]  # 3 s of flows, 0.1 s apart
        for t in ts[:20]:
            obs.add_flow(mkflow(t))
        obs.add_lost(ts[19], fpb.PERF_EVENT_RING_BUFFER, 5)
        await until(lambda: len(counted) == 20 and len(lost) == 1, what="first 20 flows")
        # The source restarts (a relay restart: the agents' rings still hold everything).
        await fake.stop()
        await until(lambda: not src.stats.connected, what="disconnect")
        for t in ts[20:]:
            obs.add_flow(mkflow(t))
        # A flow of another node that the relay delivers late, inside the overlap.
        late = mkflow(ts[15] + 50_000_000, pod="web-9")
        obs.add_flow(late)
        await fake.start()
        await until(lambda: len(counted) == 31, what="replayed flows")
        await asyncio.sleep(0.3)
        assert len(counted) == 31
        assert len({f.uuid for f in counted}) == 31
        req = obs.requests[-1]
        assert ts_ns(req.since) == ts[19] - S == ts[9]  # newest counted - overlap
        assert src.stats.reconnects == 1
        assert src.stats.duplicates == 11  # ts[9]..ts[19] came again and were skipped
        assert src.stats.mode == "getflows"  # a server without the batched stream
        assert len(lost) == 1, "the replayed lost-event notice must not count again"
    finally:
        task.cancel()


async def test_agent_restart_new_ring_counts_new_flows(fake):
    now = time.time_ns()
    src, counted, _ = source_for(fake, start_ns=now, overlap_s=1.0)
    task = asyncio.create_task(src.run())
    try:
        fake.servicer.add_flow(mkflow(now + S))
        await until(lambda: len(counted) == 1)
        await fake.stop()
        fake.servicer = FakeObserver()  # a restarted agent: empty ring
        fake.servicer.add_flow(mkflow(now + 2 * S))
        await fake.start()
        await until(lambda: len(counted) == 2, what="flow from the new agent")
        assert ts_ns(fake.servicer.requests[0].since) == now  # since: newest - 1 s, floor: start
    finally:
        task.cancel()


def _raw_batch(*resps: opb.GetFlowsResponse) -> Batch:
    raw = [r.SerializeToString() for r in resps]
    return Batch(raw, [ts_ns(r.time) for r in resps], [r.node_name for r in resps])


def test_pipeline_counts_what_the_source_hands_it():
    p = Pipeline(parse_metrics(["flow"], PLUGINS))
    src = FlowSource(FlowSourceConfig("unused:1", start_ns=0), p.process_batch, p.lost_events)
    f = mkflow(5 * S)
    src.handle(_raw_batch(
        opb.GetFlowsResponse(flow=f, time=f.time, node_name="n1"),
        opb.GetFlowsResponse(lost_events=fpb.LostEvent(source=fpb.HUBBLE_RING_BUFFER,
                                                       num_events_lost=3), time=ns_ts(6 * S))))
    assert p.flows == 1 and src.stats.flows == 1
    assert p.lost.counter.get(("hubble_ring_buffer",)) == 3


# -- the whole exporter ---------------------------------------------------------------

async def scrape(port: int, path: str = "/metrics", accept: str = "") -> tuple[int, str, str]:
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.text()


def value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return None


async def test_exporter_serves_metrics_health_and_gcs_deleted_pods(fake):
    cfg = Config(server=f"127.0.0.1:{fake.port}", listen_address="127.0.0.1:0",
                 specs=parse_metrics(["flow:sourceContext=pod,tcp,httpV2:exemplars=true"], PLUGINS),
                 openmetrics=True, grace=0.5, idle_timeout=0)
    ex = Exporter(cfg)
    await ex.start()
    port = ex.server.port
    try:
        await until(lambda: ex.source.stats.connected, what="connected")
        now = time.time_ns()
        fake.servicer.add_flow(mkflow(now, pod="web-1"))
        fake.servicer.add_flow(mkflow(now + 1, pod="web-2"))
        await until(lambda: ex.source.stats.flows == 2, what="two flows")
        status, ctype, text = await scrape(port)
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        assert value(text, 'hubble_flows_processed_total{protocol="TCP",source="shop/web-1",'
                           'subtype="to-endpoint",type="Trace",verdict="FORWARDED"}') == 1
        assert value(text, 'hubble_tcp_flags_total{family="IPv4",flag="SYN"}') == 2
        assert value(text, 'webb_metrics_source_up{server="127.0.0.1:%d"}' % fake.port) == 1
        assert value(text, 'webb_metrics_flows_received_total{outcome="counted"}') == 2
        assert "process_resident_memory_bytes" in text and "python_info" in text
        assert "_created" not in text
        status, ctype, om = await scrape(port, accept="application/openmetrics-text; version=1.0.0")
        assert status == 200 and ctype.startswith("application/openmetrics-text") and om.endswith("# EOF\n")
        status, _, body = await scrape(port, "/healthz")
        assert status == 200 and '"connected": true' in body
        _, _, text = await scrape(port)
        assert value(text, 'hubble_metrics_http_handler_requests_total{code="200"}') >= 2
        # The agent reports web-1 deleted: its series go after the grace period, web-2's stay.
        fake.servicer.add_agent_event(fpb.AgentEvent(
            type=fpb.ENDPOINT_DELETED, endpoint_update=fpb.EndpointUpdateNotification(
                pod_name="web-1", namespace="shop")))
        await until(lambda: ex.events.deleted == 1, what="endpoint event")
        _, _, text = await scrape(port)
        assert 'source="shop/web-1"' in text
        await until(lambda: ex.gc.removed == 1, timeout=5, what="gc")
        _, _, text = await scrape(port)
        assert 'source="shop/web-1"' not in text and 'source="shop/web-2"' in text
        assert value(text, "webb_metrics_series_removed_total") == 1
        # The source goes away: health says so, the exporter keeps serving.
        await fake.stop()
        await until(lambda: not ex.source.stats.connected, what="disconnect")
        status, _, body = await scrape(port, "/healthz")
        assert status == 200 and '"connected": false' in body
        _, _, text = await scrape(port)
        assert value(text, 'webb_metrics_source_up{server="127.0.0.1:%d"}' % fake.port) == 0
    finally:
        await ex.stop()


async def test_without_openmetrics_the_text_format_is_served(fake):
    cfg = Config(server=f"127.0.0.1:{fake.port}", listen_address="127.0.0.1:0",
                 specs=parse_metrics(["flow"], PLUGINS))
    ex = Exporter(cfg)
    await ex.start()
    try:
        status, ctype, _ = await scrape(ex.server.port, accept="application/openmetrics-text")
        assert status == 200 and ctype.startswith("text/plain")
        assert ex.gc is None and ex.events is None  # nothing bound to pods: no GC needed
    finally:
        await ex.stop()


async def test_relay_without_agent_events_falls_back_to_idle_expiry(fake):
    fake.servicer.agent_events_unimplemented = True
    cfg = Config(server=f"127.0.0.1:{fake.port}", listen_address="127.0.0.1:0",
                 specs=parse_metrics(["flow:sourceContext=pod"], PLUGINS))
    ex = Exporter(cfg)
    await ex.start()
    try:
        await until(lambda: ex.events.supported is False, what="UNIMPLEMENTED")
        ok, detail = ex.health()
        assert ok, detail
    finally:
        await ex.stop()


async def test_unreachable_source_is_reported_and_joined_when_it_comes():
    port = free_port()
    # The joining delay is the back-off's ceiling (5 s by default, plus gRPC's own
    # reconnect pause): bound it here so the wait below is about joining, not about
    # where the back-off happened to be when the server came up.
    cfg = FlowSourceConfig(f"127.0.0.1:{port}", start_ns=time.time_ns(), connect_warn_s=0.1,
                           backoff_min_s=0.05, backoff_max_s=0.2)
    got: list = []
    src = FlowSource(cfg, got.extend, lambda e: None)
    task = asyncio.create_task(src.run())
    srv = None
    try:
        await until(lambda: src.stats.last_error.startswith("cannot connect"), what="error")
        assert not src.stats.connected
        srv = await Server(FakeObserver(), port).start()
        await until(lambda: src.stats.connected, what="connected once the server is up")
        srv.servicer.add_flow(mkflow(time.time_ns()))
        await until(lambda: len(got) == 1, what="a flow")
        assert src.stats.last_error == "" and src.stats.reconnects == 0
    finally:
        task.cancel()
        if srv is not None:
            await srv.stop()

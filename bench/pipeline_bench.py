#!/usr/bin/env python3
"""Issue 15's targets, one row function each; ends with one line per row:

    target <short name>: <figure> <unit> (met|MISSED)

Rows (add yours to ROWS):
  merged    3 real agents (rings filled by UDP between namespaces) -> webb-relay -> one
            batched client: the merged history (full rings) and a live burst, flows/s
  ring      one agent's full 65,535-flow ring read with the batched stream, seconds
  latency   live through the relay at 50k flows/s offered (paced UDP): p99 of kernel
            event time -> batched client receive
  getflows  Hubble's GetFlows (relay, agent) vs a bare grpcio server streaming the same
            pre-encoded responses, ABBA in one run: the ratio
  history   1-hour since/until + filter over 10M stored flows (in process;
            --history-flows 10000000, ~3 min; skipped by default)
  exporter  relay -> /metrics with the demo's metric options, flows per CPU-second of
            the exporter (one core): a gRPC server process streams pre-encoded FlowBatches
            (webb.stream.FlowStream, what webb's relay serves) of realistic flows as fast
            as the exporter takes them; webb-metrics' own Exporter (flow_follow, handlers,
            series store, its HTTP server) counts them in this process; /metrics is
            scraped at the end and must hold every flow. The pool is streamed in copies
            with new HTTP latencies each (live traffic never repeats one).
  ui        webb-ui with two views open (all namespaces; one namespace), a source
            streaming batches at 150k flows/s offered (bench/ui_bench.py's server and
            watchers): flows/s the all-namespaces view took, the largest gap between map
            updates, and RSS (start, end, max: bounded = the end not above the middle by
            more than 10 %).

    sudo .venv/bin/python bench/pipeline_bench.py            # every row (root: namespaces)
    .venv/bin/python bench/pipeline_bench.py --rows exporter
The machine is shared and small (2 vCPU): the load average is printed with each row.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


@dataclass
class Target:
    name: str
    figure: float
    unit: str
    met: bool
    note: str = ""

    def line(self) -> str:
        fig = f"{self.figure:,.0f}" if abs(self.figure) >= 100 else f"{self.figure:.2f}"
        note = f"  [{self.note}]" if self.note else ""
        return f"target {self.name}: {fig} {self.unit} ({'met' if self.met else 'MISSED'}){note}"


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


# -- exporter -----------------------------------------------------------------------------

def _serve_batches(port_q: "mp.Queue[int]", batches: list[bytes]) -> None:
    """A bare grpcio server streaming the same pre-encoded FlowBatches over and over."""
    from concurrent import futures

    import grpc

    from webb.api.observer import observer_pb2 as opb

    def get_flow_batches(request, context):
        while context.is_active():
            yield from batches

    handler = grpc.method_handlers_generic_handler("webb.stream.FlowStream", {
        "GetFlowBatches": grpc.unary_stream_rpc_method_handler(
            get_flow_batches, request_deserializer=opb.GetFlowsRequest.FromString,
            response_serializer=lambda b: b)})
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((handler,))
    port_q.put(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    server.wait_for_termination()


def exporter_row(total: int = 200_000) -> list[Target]:
    from metrics_bench import flow_pool  # every kind: L3/L4, drops, DNS, HTTP; 200 pods, random pairs
    from ui_bench import build_pool  # a call graph of 60 services: pairs and ports repeat

    from webb.api.observer import observer_pb2 as opb
    results = []
    for name, pool in (("call graph", [opb.GetFlowsResponse.FromString(b).flow for b in build_pool(20_000)]),
                       ("random pairs", flow_pool(20_000))):
        results.append(_exporter(name, pool, total, copies=(total + WARM) // len(pool) + 1))
    per_cpu, complete = results[0]
    worst, _ = results[1]
    return [Target("exporter relay->/metrics (demo options)", per_cpu, "flows/s per core",
                   per_cpu >= 100_000 and complete,
                   f"random pairs (no repetition): {worst:,.0f}")]


WARM = 20_000  # flows counted before the measurement (every series exists)


def _exporter(pool_name: str, pool: list, total: int, copies: int = 1) -> tuple[float, bool]:
    """``copies`` of the pool are streamed in turn, each with other HTTP latencies (by a
    nanosecond): live traffic never repeats a latency, and the exporter counts flows
    that agree on everything its handlers read once (webb_metrics.digest), so a pool
    replayed as it is would be cheaper to count than live traffic."""
    from webb.api.observer import observer_pb2 as opb
    from webb.api.stream import stream_pb2 as spb
    from webb_metrics.config import parse_metrics
    from webb_metrics.handlers import PLUGINS
    from webb_metrics.main import Config, Exporter
    from webb_metrics.presets import DASHBOARDS

    batches = []
    for copy in range(copies):
        for i in range(0, len(pool), 1000):
            fb = spb.FlowBatch(nodes=["n1"])
            for f in pool[i:i + 1000]:
                lat = f.l7.latency_ns
                if lat:
                    f.l7.latency_ns = lat + copy
                fb.responses.append(opb.GetFlowsResponse(flow=f, node_name="n1", time=f.time).SerializeToString())
                if lat:
                    f.l7.latency_ns = lat
                fb.time_ns.append(f.time.seconds * 10**9 + f.time.nanos)
                fb.node_index.append(0)
            batches.append(fb.SerializeToString())
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_serve_batches, args=(q, batches), daemon=True)
    proc.start()
    port = q.get(timeout=60)

    async def run() -> tuple[float, float, float, str, bool]:
        cfg = Config(server=f"127.0.0.1:{port}", listen_address="127.0.0.1:0", openmetrics=True,
                     specs=parse_metrics(list(DASHBOARDS), PLUGINS))
        ex = Exporter(cfg)
        ex.source.config.start_ns = 0  # the pool's flows are older than this run
        await ex.start()
        try:
            while ex.pipeline.flows < WARM:  # warm: every series exists
                await asyncio.sleep(0.05)
            n0, t0, c0 = ex.pipeline.flows, time.perf_counter(), cpu_s()
            while ex.pipeline.flows - n0 < total:
                await asyncio.sleep(0.05)
            n, dt, dc = ex.pipeline.flows - n0, time.perf_counter() - t0, cpu_s() - c0
            mode = ex.source.stats.mode
            url = f"http://127.0.0.1:{ex.server.port}/metrics"
            before = ex.pipeline.flows
            body = await asyncio.get_running_loop().run_in_executor(
                None, lambda: urllib.request.urlopen(url, timeout=30).read().decode())
            processed = sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                            if line.startswith("hubble_flows_processed_total{"))
            # the stream goes on during the scrape: the scrape holds what came before it
            complete = before <= processed <= ex.pipeline.flows
            d = getattr(ex.pipeline, "digest_stats", None)
            how = "" if d is None else (
                f"; {d['distinct'] / max(d['batches'] - d['flow_by_flow'], 1):,.0f} distinct digests "
                f"per batch, {d['recorded']:,} recorded, {d['flow_by_flow']} of {d['batches']} "
                f"batches flow by flow")
            return n / dc, n / dt, dc / n * 1e6, mode, complete, how
        finally:
            await ex.stop()
    try:
        per_cpu, wall, us, mode, complete, how = asyncio.run(run())
    finally:
        proc.kill()
        proc.join(5)
    print(f"exporter ({mode}, demo options, {pool_name} flows, {total:,}): {per_cpu:,.0f} flows per "
          f"CPU-second ({us:.1f} µs/flow, all of the exporter's threads), {wall:,.0f} flows/s wall; "
          f"/metrics holds every flow: {complete}{how}; {load()}")
    return per_cpu, complete


# -- UI -------------------------------------------------------------------------------------

def ui_row(rate: float = 150_000, seconds: float = 20.0) -> list[Target]:
    import ui_bench

    out = ROOT / "test-results" / "pipeline-bench"
    out.mkdir(parents=True, exist_ok=True)
    r = ui_bench.run_phase(rate, seconds, out, batched=True)
    bounded = r["rss1"] <= r["rss_half"] * 1.10
    taken = r["ingest_all"] + r["ingest_ns"]
    per_cpu = taken / (r["cpu"] / 100) if r["cpu"] else 0.0
    print(f"ui ({', '.join(r['streams'])}, two views, {rate:,.0f} flows/s offered, {r['seconds']} s): "
          f"all-namespaces view took {r['ingest_all']:,.0f} flows/s, namespace view {r['ingest_ns']:,.0f}/s, "
          f"shed {r['shed']:,} (reported as lost events); UI CPU {r['cpu']:.0f}% = {per_cpu:,.0f} flows "
          f"(both views) per CPU-second, {1e6 / per_cpu if per_cpu else 0:.1f} µs/flow; map updates "
          f"{r['map_updates_s']:.1f}/s, largest gap {r['map_gap']:.2f} s; RSS MB "
          f"{r['rss0']:.0f} → {r['rss_half']:.0f} → {r['rss1']:.0f} (max {r['rss_max']:.0f}); {load()}")
    return [Target("ui two views, flows taken", r["ingest_all"], "flows/s", r["ingest_all"] >= 100_000),
            Target("ui map update gap", r["map_gap"], "s", r["map_gap"] <= 2.0),
            Target("ui RSS bounded (max)", r["rss_max"], "MB", bounded)]



# -- the agent and relay rows: real agents fed by real traffic between network
# namespaces (bench/relay_bench.py's lab), webb-relay merging them ---------------------------

import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from typing import Any  # noqa: E402

import grpc  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from abba import write_framed  # noqa: E402
from relay_bench import (PAIRS, Relay, cpu_seconds, now_ts, pct, settle,  # noqa: E402
                         total_flows)
from support import (NO_BDP, TRAFFIC, AgentProc, free_port, pod_endpoint,  # noqa: E402
                     write_endpoints)
from webb.api.observer import observer_pb2 as opb  # noqa: E402
from webb.api.stream import stream_pb2_grpc  # noqa: E402
from webb.netlab import NetLab  # noqa: E402

FLOW = 0x0A  # first byte of a GetFlowsResponse that carries a flow
GET_FLOWS = "/observer.Observer/GetFlows"
RING = 65535
# Options of these rows (main() sets them from the command line).
OPTS = argparse.Namespace(fill_per_pair=33000, live_per_pair=20000, offered=50000,
                          latency_seconds=6.0, ratio_flows=20000, abba_rounds=5,
                          history_flows=0)
_PIPELINE: "Pipeline | None" = None


def pipeline() -> "Pipeline":
    """Three agents and a relay, started by the first row that needs them."""
    global _PIPELINE
    if _PIPELINE is None:
        if os.geteuid() != 0:
            raise SystemExit("the agent and relay rows need root")
        p = Pipeline("wpb" + os.environ.get("WEBB_TEST_PREFIX_TAG", "")[:2],
                     Path(tempfile.mkdtemp(prefix="webb-pipeline-bench-")))
        _PIPELINE = p
        p.start()
    return _PIPELINE


# -- clients (raw bytes: the client's decoding is not what is measured) ---------------------

def raw_get_flows(channel: grpc.Channel) -> Callable[..., Any]:
    return channel.unary_stream(GET_FLOWS, request_serializer=opb.GetFlowsRequest.SerializeToString,
                                response_deserializer=None)


def read_batches(channel: grpc.Channel, **req: Any) -> tuple[int, float]:
    """(flows, seconds) of a batched history read."""
    stub = stream_pb2_grpc.FlowStreamStub(channel)
    t = time.perf_counter()
    n = 0
    for b in stub.GetFlowBatches(opb.GetFlowsRequest(**req), timeout=600):
        n += sum(1 for r in b.responses if r[0] == FLOW)
    return n, time.perf_counter() - t


def read_get_flows(channel: grpc.Channel, **req: Any) -> tuple[int, float]:
    """(messages, seconds) of a GetFlows history read."""
    call = raw_get_flows(channel)
    t = time.perf_counter()
    n = sum(1 for _ in call(opb.GetFlowsRequest(**req), timeout=600))
    return n, time.perf_counter() - t


class BatchRecorder:
    """A batched follow stream read in a thread: (receive ns, flow ns) per flow."""

    def __init__(self, channel: grpc.Channel, **req: Any) -> None:
        self.call = stream_pb2_grpc.FlowStreamStub(channel).GetFlowBatches(
            opb.GetFlowsRequest(follow=True, **req), timeout=900)
        self.samples: list[tuple[int, int]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for b in self.call:
                now = time.time_ns()
                self.samples.extend((now, t) for r, t in zip(b.responses, b.time_ns)
                                    if r[0] == FLOW)
        except grpc.RpcError:
            pass

    def stop(self) -> None:
        self.call.cancel()
        self.thread.join(5)


# -- the pipeline ------------------------------------------------------------------------

class Pipeline:
    """Three agents (n1..n3, a client and a server pod each), one relay."""

    def __init__(self, prefix: str, workdir: Path) -> None:
        self.lab = NetLab(prefix)
        self.lab.cleanup()
        self.workdir = workdir
        self.agents: list[AgentProc] = []
        self.relay: Relay | None = None
        self.filled = 0
        self.udpgen: str | None = None
        self.tuple = 0  # next unused udpgen churn 5-tuple

    def start(self) -> None:
        eps = []
        for i in (1, 2, 3):
            node = self.lab.add_node(f"n{i}", i)
            eps.append(pod_endpoint(self.lab.add_pod(node, f"c{i}", 10), f"client{i}"))
            eps.append(pod_endpoint(self.lab.add_pod(node, f"s{i}", 11), f"server{i}"))
        path = self.workdir / "endpoints.yaml"
        write_endpoints(path, eps)
        self.agents = [AgentProc(self.workdir, f"n{i}", self.lab.nodes[f"n{i}"].netns, path,
                                 ring=RING) for i in (1, 2, 3)]
        threads = [threading.Thread(target=a.start) for a in self.agents]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, a in enumerate(self.agents, start=1):
            a.wait_attached([f"c{i}", f"s{i}"])
        self.relay = Relay(self.workdir, [a.address for a in self.agents], "1s")

    def fill(self) -> int:
        """Fills the rings once (the rows that read history share it)."""
        if not self.filled:
            self.filled, _ = self.feed(OPTS.fill_per_pair)
            print(f"rings filled: {self.filled:,} flows recorded by 3 agents ({load()})")
        return self.filled

    def feed(self, per_pair: int, pace: float = 0.0) -> tuple[int, float]:
        """Datagrams to new ports on every pair; (flows the agents recorded, seconds)."""
        before = total_flows(self.agents)
        if per_pair > 60000:
            raise ValueError("at most 60000 datagrams per pair (one port each)")
        t = time.monotonic()
        # a new socket (new source port) per run: ports used before are new flows again
        procs = [self.lab.popen(self.lab.pods[f"c{x}"].netns, sys.executable, TRAFFIC,
                                "udp-send", self.lab.pods[f"s{y}"].ip4, "2000", "--count",
                                str(per_pair), "--ports", str(per_pair), "--pace", str(pace))
                 for x, y in PAIRS]
        for proc in procs:
            proc.wait(600)
        dur = time.monotonic() - t
        return settle(self.agents, before + 2 * len(PAIRS) * per_pair) - before, dur

    def churn(self, rate_per_pair: float, count: int) -> tuple[int, float]:
        """Paced new flows from bench/udpgen.c (C: Python cannot pace 10k datagrams/s
        per sender here; rate 0: as fast as it can), `count` datagrams per pair, every
        pair at once; (flows recorded, seconds)."""
        if self.udpgen is None:
            self.udpgen = str(self.workdir / "udpgen")
            subprocess.run(["gcc", "-O2", "-Wall", "-o", self.udpgen,
                            str(ROOT / "bench" / "udpgen.c")], check=True)
        before = total_flows(self.agents)
        t = time.monotonic()
        procs = [self.lab.popen(self.lab.pods[f"c{x}"].netns, self.udpgen, "churn",
                                self.lab.pods[f"s{y}"].ip4, "--src", self.lab.pods[f"c{x}"].ip4,
                                "--first", str(self.tuple), "--dport-lo", "5000", "--dports",
                                "256", "--rate", str(int(rate_per_pair)), "--count", str(count),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for x, y in PAIRS]
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"udpgen: {err.strip()}")
        self.tuple += count
        dur = time.monotonic() - t
        return settle(self.agents, before + 2 * len(PAIRS) * count) - before, dur

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop()
        for a in self.agents:
            a.stop()
        self.lab.cleanup()


# -- rows --------------------------------------------------------------------------------

def merged_row() -> list[Target]:
    """3 agents -> relay -> one batched client, history (full rings) and live."""
    p, a = pipeline(), OPTS
    assert p.relay is not None
    p.fill()
    c0 = cpu_seconds(p.relay.proc.pid)
    n, dt = read_batches(p.relay.channel)
    cpu = (cpu_seconds(p.relay.proc.pid) - c0) / max(n, 1) * 1e6
    hist = n / dt
    print(f"history through the relay, batched: {n:,} flows in {dt:.2f}s = {hist:,.0f} flows/s "
          f"(relay CPU {cpu:.1f} us/flow; {load()})")
    rec = BatchRecorder(p.relay.channel, since=now_ts())
    time.sleep(0.5)
    c_relay = cpu_seconds(p.relay.proc.pid)
    c_agents = sum(cpu_seconds(ag.proc.pid) for ag in p.agents)
    produced, dur = p.churn(0, a.live_per_pair)  # C: the generator leaves the CPU to webb
    deadline = time.monotonic() + 30
    while len(rec.samples) < produced and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.2)  # the sort window
    rec.stop()
    c_relay = cpu_seconds(p.relay.proc.pid) - c_relay
    c_agents = sum(cpu_seconds(ag.proc.pid) for ag in p.agents) - c_agents
    print(f"  CPU during the burst: relay {c_relay:.2f}s ({c_relay / max(produced, 1) * 1e6:.1f} "
          f"us/flow), 3 agents {c_agents:.2f}s ({c_agents / max(produced, 1) * 1e6:.1f} us/flow: "
          f"eBPF events, ingest, batches)")
    s = rec.samples
    # first to 99th percentile receive time: a straggler (a late report of some
    # connection) must not stretch the span
    recv = sorted(r for r, _ in s)
    k = int(0.99 * len(recv))
    span = (recv[k] - recv[0]) / 1e9 if k else 0
    live = k / span if span else 0.0
    print(f"live burst through the relay, batched: {len(s):,}/{produced:,} flows at "
          f"{live:,.0f} flows/s (traffic took {dur:.1f}s; {load()})")
    return [Target("3 agents->relay->batched client, history", hist, "flows/s", hist >= 100_000),
            Target("3 agents->relay->batched client, live", live, "flows/s", live >= 100_000)]


def latency_row() -> list[Target]:
    """Live through the relay at ~50k flows/s offered: p99 of kernel event -> client."""
    p, a = pipeline(), OPTS
    assert p.relay is not None
    rec = BatchRecorder(p.relay.channel, since=now_ts())
    time.sleep(0.5)
    # each datagram is a new flow on the client's and on the server's node
    rate = a.offered / (2 * len(PAIRS))
    produced, dur = p.churn(rate, int(rate * a.latency_seconds))
    deadline = time.monotonic() + 30
    while len(rec.samples) < produced and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.2)
    rec.stop()
    lat = [(r - t) / 1e9 for r, t in rec.samples]
    offered = produced / dur if dur else 0
    p99 = pct(lat, 99)
    print(f"live paced: {produced:,} flows offered at {offered:,.0f} flows/s (asked "
          f"{a.offered:,}), {len(lat):,} received; latency p50 {pct(lat, 50):.3f}s "
          f"p99 {p99:.3f}s ({load()})")
    return [Target(f"live via relay at {offered / 1000:.0f}k flows/s offered, p99 latency",
                   p99, "s", p99 <= 1.5 and offered >= 0.9 * a.offered)]


def ring_row() -> list[Target]:
    """One agent's full ring with the batched stream."""
    p = pipeline()
    p.fill()
    ag = p.agents[0]
    held = ag.observer.ServerStatus(opb.ServerStatusRequest(), timeout=5).num_flows
    best = None
    for _ in range(3):
        n, dt = read_batches(ag.channel)
        best = dt if best is None else min(best, dt)
    print(f"ring read (batched) from {ag.node}: {n:,} flows of {held:,} held, best of 3 "
          f"{best:.3f}s ({load()})")
    assert best is not None
    return [Target(f"full {RING}-flow ring read, batched", best, "s",
                   best <= 0.5 and held >= RING)]


BARE_SERVER = r'''
import asyncio, sys, grpc
sys.path.insert(0, sys.argv[3])
from abba import add_bare_getflows, read_framed
async def main():
    s = grpc.aio.server()
    add_bare_getflows(s, read_framed(sys.argv[2]))
    s.add_insecure_port("127.0.0.1:" + sys.argv[1]); await s.start(); print("ready", flush=True)
    await s.wait_for_termination()
asyncio.run(main())
'''


def getflows_row() -> list[Target]:
    """Hubble's GetFlows (relay and agent) vs a bare grpcio server streaming the same
    pre-encoded responses, ABBA in one run."""
    p, a = pipeline(), OPTS
    p.fill()
    assert p.relay is not None
    out = []
    pids = {"relay": p.relay.proc.pid, "agent": p.agents[0].proc.pid}
    for label, channel in (("relay", p.relay.channel), ("agent", p.agents[0].channel)):
        # A time window holding about --ratio-flows flows: what the relay reads from
        # the agents is what it sends (with `number` it would read N per agent).
        newest = [opb.GetFlowsResponse.FromString(m) for m in raw_get_flows(channel)(
            opb.GetFlowsRequest(number=a.ratio_flows), timeout=600)]
        times = [r.time for r in newest if r.HasField("flow")]
        req = {"since": times[0], "until": times[-1]}
        msgs = list(raw_get_flows(channel)(opb.GetFlowsRequest(**req), timeout=600))
        with tempfile.NamedTemporaryFile(delete=False) as f:
            pass
        write_framed(f.name, msgs)
        port = free_port()
        srv = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(port), f.name,
                                str(ROOT / "bench")],
                               stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
            bare = grpc.insecure_channel(f"127.0.0.1:{port}", options=NO_BDP)
            server_pid = {"webb": pids[label], "bare": srv.pid}
            ratios: list[float] = []
            rates: dict[str, list[float]] = {"webb": [], "bare": []}
            # server CPU per message (the relay's includes reading the agents; the agent's
            # whatever else it does meanwhile): less noisy than rates on a shared machine
            cpu_us: dict[str, list[float]] = {"webb": [], "bare": []}
            # the relay's answer also costs its agents CPU on the same cores (reading
            # their rings, encoding, sending): the bare server has no such helpers
            agents_us: list[float] = []
            agent_pids = [ag.proc.pid for ag in p.agents] if label == "relay" else []
            for _ in range(a.abba_rounds):
                r: dict[str, list[float]] = {"webb": [], "bare": []}
                for who in ("webb", "bare", "bare", "webb"):  # ABBA
                    c0 = cpu_seconds(server_pid[who])
                    a0 = sum(cpu_seconds(pid) for pid in agent_pids) if who == "webb" else 0
                    n, dt = read_get_flows(channel if who == "webb" else bare, **req)
                    cpu_us[who].append((cpu_seconds(server_pid[who]) - c0) / n * 1e6)
                    if who == "webb" and agent_pids:
                        agents_us.append((sum(cpu_seconds(pid) for pid in agent_pids) - a0)
                                         / n * 1e6)
                    r[who].append(n / dt)
                ratios.append(sum(r["webb"]) / sum(r["bare"]))
                rates["webb"] += r["webb"]
                rates["bare"] += r["bare"]
            bare.close()
        finally:
            srv.kill()
            srv.wait()
            os.unlink(f.name)
        w, b = statistics.median(rates["webb"]), statistics.median(rates["bare"])
        ratio = statistics.median(ratios)
        cw, cb = statistics.median(cpu_us["webb"]), statistics.median(cpu_us["bare"])
        helpers = (f"; the agents' CPU meanwhile {statistics.median(agents_us):.1f} us/message"
                   if agents_us else "")
        print(f"GetFlows, {label} vs bare grpcio with the same {len(msgs):,} responses, "
              f"{a.abba_rounds} ABBA rounds: median {w:,.0f} vs {b:,.0f} messages/s; ratio per "
              f"round {', '.join(f'{x:.2f}' for x in ratios)}: median {ratio:.2f}, spread "
              f"{min(ratios):.2f}-{max(ratios):.2f}; server CPU per message (median) "
              f"{cw:.1f} vs {cb:.1f} us{helpers} ({load()})")
        out.append(Target(f"Hubble GetFlows ({label}) / bare grpcio", ratio, "ratio",
                          ratio >= 0.9))
    return out


def history_row() -> list[Target]:
    """1-hour since/until + filter over a store of --history-flows flows (in process,
    bench/history_bench.py's store and query)."""
    a = OPTS
    if not a.history_flows:
        print("history query: skipped (--history-flows 10000000 measures it, ~3 min)")
        return [Target("1h since/until + filter over 10M stored flows", 0, "s", False,
                       "not measured: --history-flows 10000000")]
    import shutil

    from history_bench import HOUR, fill, query, raw_event
    from webb.api.flow import flow_pb2 as fpb
    base = tempfile.mkdtemp(prefix="webb-pipeline-history-")
    try:
        raws = [raw_event(i) for i in range(8192)]
        span = 24 * HOUR
        t_fill, written = fill(base, a.history_flows, span, raws)
        t0 = time.time_ns() - span
        lat = []
        for k in range(3):
            since = t0 + (11 + k) * HOUR
            r = asyncio.run(query(base, since, since + HOUR,
                                  [fpb.FlowFilter(source_pod=["default/reviews"],
                                                  destination_port=["9080"])]))
            lat.append(r["latency_s"])
        best = sorted(lat)[1]
        print(f"history: {written:,} flows stored in {t_fill:.0f}s; 1h query + filter median "
              f"{best:.2f}s ({load()})")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return [Target(f"1h since/until + filter over {written / 1e6:.0f}M stored flows", best, "s",
                   best <= 2.0 and written >= 10_000_000)]



ROWS: dict[str, Callable[[], list[Target]]] = {
    "merged": merged_row,
    "ring": ring_row,
    "latency": latency_row,
    "getflows": getflows_row,
    "history": history_row,
    "exporter": exporter_row,
    "ui": ui_row,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    p.add_argument("--fill-per-pair", type=int, default=OPTS.fill_per_pair,
                   help="merged: datagrams per client/server pair filling the rings (2 flows each)")
    p.add_argument("--live-per-pair", type=int, default=OPTS.live_per_pair)
    p.add_argument("--offered", type=int, default=OPTS.offered,
                   help="latency: flows/s offered")
    p.add_argument("--latency-seconds", type=float, default=OPTS.latency_seconds)
    p.add_argument("--ratio-flows", type=int, default=OPTS.ratio_flows)
    p.add_argument("--abba-rounds", type=int, default=OPTS.abba_rounds)
    p.add_argument("--history-flows", type=int, default=OPTS.history_flows,
                   help="history: stored flows (10000000 for the target; ~3 min; 0 skips)")
    a = p.parse_args()
    for k in vars(OPTS):
        setattr(OPTS, k, getattr(a, k))
    print(f"pipeline bench · {platform.node()} · {os.cpu_count()} CPUs · Python "
          f"{platform.python_version()} · {load()}")
    targets: list[Target] = []
    try:
        for name in a.rows.split(","):
            print(f"\n-- {name.strip()}", flush=True)
            targets += ROWS[name.strip()]()
    finally:
        if _PIPELINE is not None:
            _PIPELINE.stop()
    print()
    for t in targets:
        print(t.line())


if __name__ == "__main__":
    main()

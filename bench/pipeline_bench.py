#!/usr/bin/env python3
"""Issue 15's targets, one row function each; ends with one line per row:

    target <short name>: <figure> <unit> (met|MISSED)

Rows (add yours to ROWS):
  exporter  relay -> /metrics with the demo's metric options, flows per CPU-second of
            the exporter (one core): a gRPC server process streams pre-encoded FlowBatches
            (webb.stream.FlowStream, what webb's relay serves) of realistic flows as fast
            as the exporter takes them; webb-metrics' own Exporter (flow_follow, handlers,
            series store, its HTTP server) counts them in this process; /metrics is
            scraped at the end and must hold every flow.
  ui        webb-ui with two views open (all namespaces; one namespace), a source
            streaming batches at 150k flows/s offered (bench/ui_bench.py's server and
            watchers): flows/s the all-namespaces view took, the largest gap between map
            updates, and RSS (start, end, max: bounded = the end not above the middle by
            more than 10 %).

    .venv/bin/python bench/pipeline_bench.py                 # every row
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
        results.append(_exporter(name, pool, total))
    per_cpu, complete = results[0]
    worst, _ = results[1]
    return [Target("exporter relay->/metrics (demo options)", per_cpu, "flows/s per core",
                   per_cpu >= 100_000 and complete,
                   f"random pairs (no repetition): {worst:,.0f}")]


def _exporter(pool_name: str, pool: list, total: int) -> tuple[float, bool]:
    from webb.api.observer import observer_pb2 as opb
    from webb.api.stream import stream_pb2 as spb
    from webb_metrics.config import parse_metrics
    from webb_metrics.handlers import PLUGINS
    from webb_metrics.main import Config, Exporter
    from webb_metrics.presets import DASHBOARDS

    batches = []
    for i in range(0, len(pool), 1000):
        fb = spb.FlowBatch(nodes=["n1"])
        for f in pool[i:i + 1000]:
            fb.responses.append(opb.GetFlowsResponse(flow=f, node_name="n1", time=f.time).SerializeToString())
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
            while ex.pipeline.flows < 20_000:  # warm: every series exists
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
            return n / dc, n / dt, dc / n * 1e6, mode, complete
        finally:
            await ex.stop()
    try:
        per_cpu, wall, us, mode, complete = asyncio.run(run())
    finally:
        proc.kill()
        proc.join(5)
    print(f"exporter ({mode}, demo options, {pool_name} flows, {total:,}): {per_cpu:,.0f} flows per "
          f"CPU-second ({us:.1f} µs/flow, all of the exporter's threads), {wall:,.0f} flows/s wall; "
          f"/metrics holds every flow: {complete}; {load()}")
    return per_cpu, complete


# -- UI -------------------------------------------------------------------------------------

def ui_row(rate: float = 150_000, seconds: float = 20.0) -> list[Target]:
    import ui_bench

    out = ROOT / "test-results" / "pipeline-bench"
    out.mkdir(parents=True, exist_ok=True)
    r = ui_bench.run_phase(rate, seconds, out, batched=True)
    bounded = r["rss1"] <= r["rss_half"] * 1.10
    print(f"ui ({', '.join(r['streams'])}, two views, {rate:,.0f} flows/s offered, {r['seconds']} s): "
          f"all-namespaces view took {r['ingest_all']:,.0f} flows/s, namespace view {r['ingest_ns']:,.0f}/s, "
          f"shed {r['shed']:,} (reported as lost events); UI CPU {r['cpu']:.0f}%; map updates "
          f"{r['map_updates_s']:.1f}/s, largest gap {r['map_gap']:.2f} s; RSS MB "
          f"{r['rss0']:.0f} → {r['rss_half']:.0f} → {r['rss1']:.0f} (max {r['rss_max']:.0f}); {load()}")
    return [Target("ui two views, flows taken", r["ingest_all"], "flows/s", r["ingest_all"] >= 100_000),
            Target("ui map update gap", r["map_gap"], "s", r["map_gap"] <= 2.0),
            Target("ui RSS bounded (max)", r["rss_max"], "MB", bounded)]


ROWS: dict[str, Callable[[], list[Target]]] = {
    "exporter": exporter_row,
    "ui": ui_row,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    a = p.parse_args()
    print(f"pipeline bench · {platform.node()} · {os.cpu_count()} CPUs · Python "
          f"{platform.python_version()} · {load()}")
    targets: list[Target] = []
    for name in a.rows.split(","):
        targets += ROWS[name.strip()]()
    for t in targets:
        print(t.line())


if __name__ == "__main__":
    main()

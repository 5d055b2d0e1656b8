#!/usr/bin/env python3
"""webb-metrics benchmark: flows/s with the full handler set, and memory with 10k label sets.
Prints figures; asserts nothing. Needs no root.   .venv/bin/python bench/metrics_bench.py

Handler set: the demo's (webb_metrics.presets.DASHBOARDS: dns, drop, tcp, flow,
port-distribution, icmp, httpV2 with exemplars and labelsContext) plus flows-to-world and
policy with workload contexts -- every family. The flows are hand-built and
realistic: a mix of L3/L4 traces (TCP with flags, UDP, ICMP), drops, policy verdicts,
DNS and HTTP L7 flows between 200 pods in 10 namespaces; the same pool is cycled.

(1) In process: Pipeline.process(flow) on decoded Flow messages, through the handler
    interface only (no gRPC, no parsing).
(2) End to end over gRPC: a real observer.Observer server in a separate process streams
    pre-serialized GetFlowsResponse messages as fast as it can; the exporter's own
    FlowSource (the code webb-metrics runs: grpc.aio follow stream, replay dedupe,
    protobuf parsing) feeds the pipeline in this process. flows/s and this process's CPU.
(3) Memory: RSS and Python heap (tracemalloc) of the series store after 10,000 distinct
    label sets in hubble_flows_processed_total (10k source pods with sourceContext=pod,
    plus the other families they create), and the time one /metrics scrape takes then.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import os
import platform
import random
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client import generate_latest  # noqa: E402
from prometheus_client.registry import CollectorRegistry  # noqa: E402

from webb.api.flow import flow_pb2 as fpb  # noqa: E402
from webb.api.observer import observer_pb2 as opb  # noqa: E402
from webb_metrics.config import parse_metrics  # noqa: E402
from webb_metrics.flow_source import FlowSource, FlowSourceConfig, ns_ts  # noqa: E402
from webb_metrics.handlers import PLUGINS  # noqa: E402
from webb_metrics.pipeline import Pipeline  # noqa: E402
from webb_metrics.presets import DASHBOARDS  # noqa: E402

FULL = DASHBOARDS + ("flows-to-world:port;labelsContext=source_namespace,source_workload",
                     "policy:sourceContext=workload-name|reserved-identity;"
                     "destinationContext=workload-name|reserved-identity")


# -- hand-built flows ---------------------------------------------------------------------

def endpoint(i: int) -> fpb.Endpoint:
    ns = f"ns{i % 10}"
    app = f"app{i % 40}"
    ep = fpb.Endpoint(ID=i, identity=1000 + i % 40, namespace=ns, pod_name=f"{app}-7d9c8b6f4-{i:05d}",
                      labels=[f"k8s:app={app}", f"k8s:io.kubernetes.pod.namespace={ns}"])
    ep.workloads.add(name=app, kind="Deployment")
    return ep


WORLD = fpb.Endpoint(identity=2, labels=["reserved:world"])


def make_flow(rng: random.Random, pods: int, t_ns: int) -> fpb.Flow:
    a, b = rng.randrange(pods), rng.randrange(pods)
    f = fpb.Flow(verdict=fpb.FORWARDED, uuid=str(uuid.UUID(int=rng.getrandbits(128))), node_name="n1",
                 traffic_direction=rng.choice((fpb.EGRESS, fpb.INGRESS)), Type=fpb.L3_L4)
    f.time.CopyFrom(ns_ts(t_ns))
    f.source.CopyFrom(endpoint(a))
    f.destination.CopyFrom(WORLD if rng.random() < 0.05 else endpoint(b))
    f.IP.source, f.IP.destination = f"10.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}", f"10.1.{b >> 8 & 255}.{b & 255}"
    f.IP.ipVersion = fpb.IPv4
    reply = rng.random() < 0.4
    f.is_reply.value = reply
    f.event_type.type, f.event_type.sub_type = 4, rng.choice((0, 5))
    kind = rng.random()
    if kind < 0.55:
        f.l4.TCP.source_port, f.l4.TCP.destination_port = 40000 + a % 20000, rng.choice((80, 443, 8080, 9080, 5432))
        fl = f.l4.TCP.flags
        fl.ACK = True
        r = rng.random()
        fl.SYN, fl.FIN, fl.RST = r < 0.3, 0.3 <= r < 0.6, r > 0.97
    elif kind < 0.65:
        f.l4.UDP.source_port, f.l4.UDP.destination_port = 50000 + a % 10000, rng.choice((53, 5353, 123))
    elif kind < 0.70:
        f.l4.ICMPv4.type = rng.choice((0, 8))
    elif kind < 0.75:
        f.verdict = fpb.DROPPED
        f.event_type.type, f.event_type.sub_type = 1, 133
        f.drop_reason_desc = rng.choice((fpb.POLICY_DENIED, fpb.CT_NO_MAP_FOUND))
        f.l4.TCP.destination_port = 8080
        f.l4.TCP.flags.SYN = True
    elif kind < 0.80:
        f.event_type.type = 5
        f.policy_match_type = rng.choice((1, 2, 4))
        f.l4.TCP.destination_port = 9080
    elif kind < 0.90:
        f.Type = fpb.L7
        f.event_type.type = 129
        f.l4.UDP.destination_port = 53
        f.l7.type = fpb.RESPONSE if reply else fpb.REQUEST
        d = f.l7.dns
        d.query = f"svc{b % 50}.ns{b % 10}.svc.cluster.local."
        d.qtypes.append(rng.choice(("A", "AAAA")))
        if reply:
            d.ips.append(f.IP.destination)
            d.rrtypes.append("A")
            d.rcode = 0 if rng.random() < 0.9 else 3
    else:
        f.Type = fpb.L7
        f.event_type.type = 129
        f.l4.TCP.destination_port = 9080
        f.l7.type = fpb.RESPONSE if reply else fpb.REQUEST
        f.l7.latency_ns = int(rng.expovariate(1 / 20e6)) if reply else 0
        h = f.l7.http
        h.method, h.protocol, h.url = rng.choice(("GET", "POST")), "HTTP/1.1", "http://reviews:9080/r"
        h.code = 200 if rng.random() < 0.95 else 503
        f.trace_context.parent.trace_id = f"{rng.getrandbits(128):032x}"
    return f


def flow_pool(n: int, pods: int = 200, seed: int = 1) -> list[fpb.Flow]:
    rng = random.Random(seed)
    t0 = time.time_ns()
    return [make_flow(rng, pods, t0 + i * 1000) for i in range(n)]


# -- measurements -------------------------------------------------------------------------

def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def in_process(flows: list[fpb.Flow], seconds: float) -> None:
    p = Pipeline(parse_metrics(FULL, PLUGINS))
    for f in flows:  # warm: create the series
        p.process(f)
    n, start, c0 = 0, time.perf_counter(), cpu_s()
    while time.perf_counter() - start < seconds:
        for f in flows:
            p.process(f)
        n += len(flows)
    dt, dc = time.perf_counter() - start, cpu_s() - c0
    print(f"(1) in process, {len(p.handlers)} handlers, {p.store.series_count()} series: "
          f"{n / dt:,.0f} flows/s wall, {dc / n * 1e6:.1f} µs CPU/flow "
          f"= {n / dc:,.0f} flows/s per core of CPU time")
    # Each family alone, to see where the time goes.
    parts = []
    for spec in parse_metrics(FULL, PLUGINS):
        q = Pipeline([spec])
        for f in flows:
            q.process(f)
        t = time.perf_counter()
        for f in flows:
            q.process(f)
        parts.append(f"{spec.name} {(time.perf_counter() - t) / len(flows) * 1e6:.2f}")
    print("    µs per flow, one handler alone: " + ", ".join(parts))


def serve(port_q: mp.Queue, payloads: list[bytes], total: int) -> None:
    """The gRPC server process: streams `total` pre-serialized responses per GetFlows."""
    import grpc
    from concurrent import futures

    def get_flows(request, context):
        n = 0
        while n < total:
            for b in payloads:
                yield b
            n += len(payloads)

    handler = grpc.method_handlers_generic_handler("observer.Observer", {
        "GetFlows": grpc.unary_stream_rpc_method_handler(
            get_flows, request_deserializer=opb.GetFlowsRequest.FromString,
            response_serializer=lambda b: b)})
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_q.put(port)
    server.wait_for_termination()


async def over_grpc(flows: list[fpb.Flow], total: int) -> None:
    payloads = [opb.GetFlowsResponse(flow=f, node_name="n1", time=f.time).SerializeToString() for f in flows]
    q: mp.Queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=serve, args=(q, payloads, total), daemon=True)
    proc.start()
    port = q.get(timeout=30)
    try:
        p = Pipeline(parse_metrics(FULL, PLUGINS))
        done = asyncio.Event()
        count = 0

        def on_flows(fs: list[fpb.Flow]) -> None:
            nonlocal count
            p.process_batch(fs)
            count += len(fs)
            if count >= total:
                done.set()

        src = FlowSource(FlowSourceConfig(f"127.0.0.1:{port}", start_ns=0), on_flows, p.lost_events)
        task = asyncio.create_task(src.run())
        t0, c0 = time.perf_counter(), cpu_s()
        await asyncio.wait_for(done.wait(), 600)
        dt, dc = time.perf_counter() - t0, cpu_s() - c0
        task.cancel()
        print(f"(2) over gRPC (server in another process), {total:,} flows: {total / dt:,.0f} flows/s wall, "
              f"{dc / total * 1e6:.1f} µs exporter CPU/flow (all its threads) "
              f"= {total / dc:,.0f} flows/s per core of CPU time")
        # The stream without handlers: what gRPC + parsing + dedupe alone cost.
        count = 0
        done.clear()
        p2 = Pipeline(parse_metrics(["flow"], PLUGINS))
        src2 = FlowSource(FlowSourceConfig(f"127.0.0.1:{port}", start_ns=0),
                          lambda fs: on_flow_bare(len(fs)), p2.lost_events)

        def on_flow_bare(n: int) -> None:
            nonlocal count
            count += n
            if count >= total:
                done.set()
        task = asyncio.create_task(src2.run())
        t0, c0 = time.perf_counter(), cpu_s()
        await asyncio.wait_for(done.wait(), 600)
        dt, dc = time.perf_counter() - t0, cpu_s() - c0
        task.cancel()
        print(f"    the stream alone (gRPC, parse, dedupe; no handlers): {total / dt:,.0f} flows/s wall, "
              f"{dc / total * 1e6:.1f} µs CPU/flow")
    finally:
        proc.kill()
        proc.join(5)


def memory(label_sets: int) -> None:
    gc.collect()
    rss0 = rss_mb()
    tracemalloc.start()
    h0 = tracemalloc.get_traced_memory()[0]
    p = Pipeline(parse_metrics(["flow:sourceContext=pod"] + list(FULL[1:3]) + list(FULL[4:]), PLUGINS))
    rng = random.Random(7)
    t0 = time.time_ns()
    for i in range(label_sets):
        f = make_flow(rng, 200, t0 + i)
        f.source.CopyFrom(endpoint(i))  # 10k distinct source pods
        f.source.namespace = f"ns{i % 10}"
        f.event_type.type, f.event_type.sub_type, f.verdict = 4, 5, fpb.FORWARDED
        f.ClearField("l7")
        f.Type = fpb.L3_L4
        f.l4.TCP.destination_port = 80
        f.l4.TCP.flags.SYN = True
        p.process(f)
    flow_series = len(next(v for v in p.store.vecs if v.name == "hubble_flows_processed_total"))
    total = p.store.series_count()
    gc.collect()
    heap = (tracemalloc.get_traced_memory()[0] - h0) / 2**20
    tracemalloc.stop()
    rss = rss_mb() - rss0
    reg = CollectorRegistry(auto_describe=False)
    reg.register(p.store)
    t = time.perf_counter()
    body = generate_latest(reg)
    scrape = time.perf_counter() - t
    print(f"(3) memory: {flow_series:,} label sets in hubble_flows_processed_total, {total:,} series in all "
          f"families: +{heap:.1f} MiB Python heap, +{rss:.1f} MiB RSS "
          f"({heap * 2**20 / total:,.0f} B/series); one /metrics scrape: {scrape * 1000:.0f} ms, "
          f"{len(body) / 2**20:.1f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of (1)")
    ap.add_argument("--grpc-flows", type=int, default=300_000, help="flows streamed in (2)")
    ap.add_argument("--label-sets", type=int, default=10_000, help="distinct label sets in (3)")
    a = ap.parse_args()
    t_start = time.perf_counter()
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}, "
          f"Python {platform.python_version()}; load {os.getloadavg()[0]:.2f} (wall rates suffer "
          f"when the load exceeds the CPUs; CPU time per flow much less)")
    flows = flow_pool(20_000)
    memory(a.label_sets)
    in_process(flows, a.seconds)
    asyncio.run(over_grpc(flows, a.grpc_flows))
    print(f"done in {time.perf_counter() - t_start:.0f} s; load now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

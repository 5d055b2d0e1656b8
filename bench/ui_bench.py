"""webb-ui backend under a high flow rate.

A real gRPC observer.Observer server (in its own process) streams hand-built,
pre-serialised flows at a set rate: ~60 services in 6 namespaces, 5 % drops, HTTP
request/response pairs with latency, DNS. A real `webb-ui` process reads them; a
browser-like client follows /api/events (server-sent events) for the all-namespaces
view and for one namespace. Printed per rate: flows/s the UI took in, its CPU and
memory (RSS, start and end of the phase), how often the table and the map updated
(largest gap between updates), and what the page was sent.

    .venv/bin/python bench/ui_bench.py                       # 5k, 10k, 20k flows/s, 20 s each
    .venv/bin/python bench/ui_bench.py --rates 20000 --seconds 120
    .venv/bin/python bench/ui_bench.py --micro                # in-process costs only
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from google.protobuf.wrappers_pb2 import BoolValue, UInt32Value  # noqa: E402

from webb.api.flow import flow_pb2 as fpb  # noqa: E402
from webb.api.observer import observer_pb2 as opb  # noqa: E402

NAMESPACES = ["shop", "pay", "auth", "search", "media", "kube-system"]
APPS = [f"svc{i:02d}" for i in range(60)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- hand-built flows ---------------------------------------------------------------------

def _ep(i: int) -> fpb.Endpoint:
    if i < 0:
        return fpb.Endpoint(identity=2, labels=["reserved:world"])
    ns = NAMESPACES[i % len(NAMESPACES)]
    app = APPS[i]
    return fpb.Endpoint(identity=1000 + i, namespace=ns, pod_name=f"{app}-6d9f-{i:05d}",
                        labels=[f"k8s:app={app}", f"k8s:version=v{i % 3}",
                                f"k8s:io.kubernetes.pod.namespace={ns}"],
                        workloads=[fpb.Workload(name=app, kind="Deployment")])


def build_pool(n: int, seed: int = 1, t0: int | None = None, uuid_prefix: str = "b0000000") -> list[bytes]:
    """n serialised GetFlowsResponses: a call graph of layered services."""
    rng = random.Random(seed)
    edges = []
    for i in range(len(APPS)):
        for _ in range(rng.randint(1, 3)):
            j = rng.randint(i + 1, len(APPS)) if i + 1 < len(APPS) else None
            if j is not None and j < len(APPS):
                edges.append((i, j, rng.choice([80, 8080, 9080, 443])))
    edges += [(-1, 0, 443), (-1, 1, 443), (5, len(APPS) - 1, 53)]
    out = []
    t0 = time.time_ns() if t0 is None else t0
    for k in range(n):
        s, d, port = rng.choice(edges)
        f = fpb.Flow(node_name=f"n{k % 4}", uuid=f"{uuid_prefix}-0000-4000-8000-{k:012d}",
                     source=_ep(s), destination=_ep(d), traffic_direction=fpb.EGRESS,
                     emitter=fpb.Emitter(name="ui-bench"))
        f.time.FromNanoseconds(t0 + k * 1000)
        f.IP.source, f.IP.destination = f"10.0.{s % 250}.{s % 200 + 1}", f"10.0.{d % 250}.{d % 200 + 1}"
        kind = rng.random()
        reply = kind < 0.3
        f.is_reply.CopyFrom(BoolValue(value=reply))
        if port == 53:  # a reply comes from the server's port, as for TCP below
            f.l4.UDP.source_port, f.l4.UDP.destination_port = (53, 40000 + k % 20000) if reply else (40000 + k % 20000, 53)
        else:
            f.l4.TCP.source_port, f.l4.TCP.destination_port = (port, 40000 + k % 20000) if reply else (40000 + k % 20000, port)
            f.l4.TCP.flags.ACK = True
            f.l4.TCP.flags.SYN = kind > 0.9
        f.verdict = fpb.DROPPED if rng.random() < 0.05 else fpb.FORWARDED
        if f.verdict == fpb.DROPPED:
            f.drop_reason_desc = fpb.POLICY_DENIED
        if port in (80, 8080, 9080) and 0.5 < kind < 0.7:
            f.Type = fpb.L7
            resp = kind > 0.6
            f.l7.type = fpb.RESPONSE if resp else fpb.REQUEST
            f.l7.http.method = rng.choice(["GET", "GET", "POST"])
            f.l7.http.url = f"http://{APPS[d]}/api/{rng.randint(0, 30)}"
            if resp:  # from the server back to the client, as everything else about it
                f.is_reply.value = True
                f.source.CopyFrom(_ep(d))
                f.destination.CopyFrom(_ep(s))
                f.IP.source, f.IP.destination = f.IP.destination, f.IP.source
                f.l4.TCP.source_port, f.l4.TCP.destination_port = port, 40000 + k % 20000
                f.l7.http.code = rng.choice([200, 200, 200, 201, 404, 503])
                f.l7.latency_ns = int(rng.expovariate(1 / 5e6))
        else:
            f.Type = fpb.L3_L4
        f.Summary = "ui-bench"
        out.append(opb.GetFlowsResponse(flow=f, node_name=f.node_name, time=f.time).SerializeToString())
    return out


# --- the flow server (child process) ----------------------------------------------------------

def serve_flows(port: int, rate: float, stats_path: str, batched: bool = False) -> None:
    import grpc

    from webb.api.stream import stream_pb2 as spb
    from webb.filters import build_filter

    everything = build_pool(8192)
    parsed = [opb.GetFlowsResponse.FromString(b).flow for b in everything]
    # history answers come from an hour before, with their own uuids (as a ring would)
    history = build_pool(8192, t0=time.time_ns() - 3600 * 10**9, uuid_prefix="a0000000")
    sent = {"n": 0}

    def batch_of(entries: list[bytes]) -> bytes:
        fb = spb.FlowBatch(responses=entries, nodes=["n0"])
        for e in entries:
            r = opb.GetFlowsResponse.FromString(e)
            fb.time_ns.append(r.time.seconds * 10**9 + r.time.nanos)
        fb.node_index.extend([0] * len(entries))
        return fb.SerializeToString()

    async def get_flow_batches(req: opb.GetFlowsRequest, ctx: Any):
        match = build_filter(req.whitelist, req.blacklist)
        if not req.follow:
            hist = [b for b in history if match(opb.GetFlowsResponse.FromString(b).flow)]
            yield batch_of(hist[-(req.number or 100):])
            return
        pool = [b for b, f in zip(everything, parsed) if match(f)] or [everything[0]]
        chunk = 256
        parts = [pool[i:i + chunk] for i in range(0, len(pool), chunk)]
        batches = [batch_of(part) for part in parts]
        sizes = [len(part) for part in parts]
        tick = 0.01
        per_tick = rate * tick * len(pool) / len(everything) / (len(pool) / len(parts))  # batches
        budget = 0.0
        i = 0
        nxt = time.monotonic()
        while True:
            nxt += tick
            budget += per_tick
            n = int(budget)
            budget -= n
            for _ in range(n):
                yield batches[i]
                sent["n"] += sizes[i]
                i = (i + 1) % len(batches)
            delay = nxt - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                nxt = time.monotonic()

    async def get_flows(req: opb.GetFlowsRequest, ctx: Any):
        # like a relay: the request's FlowFilters decide what this stream carries
        match = build_filter(req.whitelist, req.blacklist)
        pool = [b for b, f in zip(everything, parsed) if match(f)] or [everything[0]]
        if not req.follow:
            hist = [b for b in history if match(opb.GetFlowsResponse.FromString(b).flow)]
            for b in hist[-(req.number or 100):]:
                yield b
            return
        # the cluster makes `rate` flows/s; this stream carries the share that matches
        tick = 0.01
        per_tick = rate * tick * len(pool) / len(everything)
        budget = 0.0
        i = 0
        nxt = time.monotonic()
        while True:
            nxt += tick
            budget += per_tick
            n = int(budget)
            budget -= n
            for _ in range(n):
                yield pool[i]
                i = (i + 1) % len(pool)
            sent["n"] += n
            delay = nxt - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                nxt = time.monotonic()  # we cannot keep up (the client is slow): do not burst

    async def status(req: Any, ctx: Any) -> opb.ServerStatusResponse:
        return opb.ServerStatusResponse(num_flows=len(everything), max_flows=len(everything), seen_flows=sent["n"],
                                        version="ui-bench", flows_rate=rate,
                                        num_connected_nodes=UInt32Value(value=4),
                                        num_unavailable_nodes=UInt32Value(value=0))

    async def nodes(req: Any, ctx: Any) -> opb.GetNodesResponse:
        return opb.GetNodesResponse(nodes=[opb.Node(name=f"n{i}", state=1) for i in range(4)])

    async def namespaces(req: Any, ctx: Any) -> opb.GetNamespacesResponse:
        return opb.GetNamespacesResponse(namespaces=[opb.Namespace(namespace=n) for n in NAMESPACES])

    async def report() -> None:
        while True:
            await asyncio.sleep(0.5)
            # whole or not at all: the bench reads it meanwhile
            tmp = Path(stats_path + ".tmp")
            tmp.write_text(json.dumps({"sent": sent["n"], "t": time.monotonic()}))
            os.replace(tmp, stats_path)

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler("observer.Observer", {
            "GetFlows": grpc.unary_stream_rpc_method_handler(
                get_flows, request_deserializer=opb.GetFlowsRequest.FromString),
            "ServerStatus": grpc.unary_unary_rpc_method_handler(
                status, request_deserializer=opb.ServerStatusRequest.FromString,
                response_serializer=opb.ServerStatusResponse.SerializeToString),
            "GetNodes": grpc.unary_unary_rpc_method_handler(
                nodes, request_deserializer=opb.GetNodesRequest.FromString,
                response_serializer=opb.GetNodesResponse.SerializeToString),
            "GetNamespaces": grpc.unary_unary_rpc_method_handler(
                namespaces, request_deserializer=opb.GetNamespacesRequest.FromString,
                response_serializer=opb.GetNamespacesResponse.SerializeToString),
        })
        server.add_generic_rpc_handlers((handler,))
        if batched:
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("webb.stream.FlowStream", {
                "GetFlowBatches": grpc.unary_stream_rpc_method_handler(
                    get_flow_batches, request_deserializer=opb.GetFlowsRequest.FromString)}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        asyncio.create_task(report())
        await server.wait_for_termination()

    asyncio.run(main())


# --- measuring ---------------------------------------------------------------------------

def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MB, CPU seconds) of a process."""
    rss = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu


class SSEWatcher(threading.Thread):
    """Follows /api/events like the page does and times the updates."""

    def __init__(self, port: int, query: str) -> None:
        super().__init__(daemon=True)
        self.port, self.query = port, query
        self.flows_events: list[float] = []
        self.map_events: list[float] = []
        self.rows = 0
        self.skipped = 0
        self.bytes = 0
        self.last_map: dict[str, Any] = {}
        self.stop = False

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/api/events" + self.query)
        resp = conn.getresponse()
        event = ""
        while not self.stop:
            line = resp.fp.readline()
            if not line:
                return
            self.bytes += len(line)
            if line.startswith(b"event:"):
                event = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                now = time.monotonic()
                if event == "flows":
                    d = json.loads(line[5:])
                    if not d.get("initial"):
                        self.flows_events.append(now)
                        self.rows += len(d["rows"])
                        self.skipped += d["skipped"]
                elif event == "map":
                    self.map_events.append(now)
                    d = json.loads(line[5:])
                    self.last_map = {"cards": len(d["cards"]), "arrows": len(d["arrows"]),
                                     "flows_seen": d["flows_seen"]}

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        def gaps(ts: list[float]) -> float:
            ts = [t for t in ts if t0 <= t <= t1]
            if len(ts) < 2:
                return float("inf")
            return max([ts[0] - t0] + [b - a for a, b in zip(ts, ts[1:])] + [t1 - ts[-1]])
        return {"flows_updates": sum(t0 <= t <= t1 for t in self.flows_events),
                "flows_gap": gaps(self.flows_events), "map_updates": sum(t0 <= t <= t1 for t in self.map_events),
                "map_gap": gaps(self.map_events)}


def get(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())


def run_phase(rate: float, seconds: float, out: Path, batched: bool = False) -> dict[str, Any]:
    gport, uport = free_port(), free_port()
    stats = out / f"server-{int(rate)}.json"
    srv = subprocess.Popen([sys.executable, __file__, "--serve", str(gport), "--rate", str(rate),
                            "--stats", str(stats), *(["--batched"] if batched else [])],
                           stdout=subprocess.PIPE, text=True)
    assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
    ui = subprocess.Popen([str(BIN / "webb-ui"), "--listen-address", f"127.0.0.1:{uport}",
                           "--server", f"127.0.0.1:{gport}", "--log-level", "warning"],
                          stdout=open(out / f"ui-{int(rate)}.log", "wb"), stderr=subprocess.STDOUT)
    watchers: list[SSEWatcher] = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                get(uport, "/healthz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        watchers = [SSEWatcher(uport, ""), SSEWatcher(uport, "?namespace=shop")]
        for w in watchers:
            w.start()
        time.sleep(3)  # warm up: history, first maps
        rss0, cpu0 = proc_stats(ui.pid)
        srv_cpu0 = proc_stats(srv.pid)[1]
        sent0 = json.loads(stats.read_text())["sent"] if stats.exists() else 0
        seen0 = {v["key"]: v["flows_seen"] for v in get(uport, "/api/status")["views"]}
        t0 = time.monotonic()
        rss_max = rss0
        samples = []
        while time.monotonic() - t0 < seconds:
            time.sleep(1)
            rss, _ = proc_stats(ui.pid)
            rss_max = max(rss_max, rss)
            samples.append(rss)
        t1 = time.monotonic()
        rss1, cpu1 = proc_stats(ui.pid)
        srv_cpu1 = proc_stats(srv.pid)[1]
        time.sleep(0.6)
        sent1 = json.loads(stats.read_text())["sent"] if stats.exists() else 0
        st = get(uport, "/api/status")
        seen1 = {v["key"]: v["flows_seen"] for v in st["views"]}
        shed = sum(v.get("shed", 0) for v in st["views"])
        all_view = seen1.get("|", 0) - seen0.get("|", 0)
        shop = seen1.get("shop|", 0) - seen0.get("shop|", 0)
        w_all, w_ns = watchers[0].window(t0, t1), watchers[1].window(t0, t1)
        return {
            "rate": rate, "seconds": round(t1 - t0, 1),
            "sent": (sent1 - sent0) / (t1 - t0 + 0.6), "srv_cpu": (srv_cpu1 - srv_cpu0) / (t1 - t0) * 100,
            "ingest_all": all_view / (t1 - t0), "ingest_ns": shop / (t1 - t0),
            "cpu": (cpu1 - cpu0) / (t1 - t0) * 100,
            "rss0": rss0, "rss1": rss1, "rss_max": rss_max,
            "rss_half": samples[len(samples) // 2] if samples else rss0,
            "table_updates_s": w_all["flows_updates"] / (t1 - t0), "table_gap": w_all["flows_gap"],
            "map_updates_s": w_all["map_updates"] / (t1 - t0), "map_gap": w_all["map_gap"],
            "ns_table_gap": w_ns["flows_gap"], "ns_map_gap": w_ns["map_gap"],
            "rows_s": watchers[0].rows / max(1e-9, (t1 - t0 + 3)),
            "sse_kb_s": watchers[0].bytes / 1024 / (t1 - t0 + 3),
            "map": watchers[0].last_map, "window": max(v["window"] for v in st["views"]),
            "shed": shed, "streams": sorted({v.get("stream", "") for v in st["views"]}),
        }
    finally:
        for w in watchers:
            w.stop = True
        ui.send_signal(signal.SIGTERM)
        srv.send_signal(signal.SIGTERM)
        for p in (ui, srv):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def micro() -> None:
    """In-process costs of the per-flow work and of one map snapshot."""
    from webb_ui.flow_row import to_row
    from webb_ui.layout import layout
    from webb_ui.service_map import ServiceMap
    from webb_ui.view import _pair_labels

    pool = [opb.GetFlowsResponse.FromString(b).flow for b in build_pool(8192)]
    m = ServiceMap()
    # CPU time, as add_batch's row below: the two are read side by side, and wall time
    # on this shared machine includes other jobs' turns
    t = time.process_time()
    n = 0
    for _ in range(25):
        for f in pool:
            m.add(f, 1.0)
            n += 1
    dt = time.process_time() - t
    print(f"  ServiceMap.add        {dt / n * 1e6:6.2f} µs/flow  ({n / dt:,.0f} flows/s per core; "
          "decoded flows one by one, CPU time)")
    enc = build_pool(8192)
    batches = [enc[i:i + 256] for i in range(0, len(enc), 256)]
    mb = ServiceMap()
    for b in batches:  # the digests' Routes remembered, as in a running view
        mb.add_batch(b, 1.0)
    t = time.process_time()
    for _ in range(5):
        for b in batches:
            mb.add_batch(b, 1.0)
    dt = time.process_time() - t
    print(f"  ServiceMap.add_batch  {dt / (5 * len(enc)) * 1e6:6.2f} µs/flow  (a view's path: encoded flows "
          "by digest, 256 a batch, CPU time)")
    t = time.perf_counter()
    for f in pool[:4000]:
        to_row(f)
    dt = time.perf_counter() - t
    print(f"  table row (to_row)    {dt / 4000 * 1e6:6.2f} µs/flow  (only for rows sent: ≤500 per 0.5 s per client)")
    raw = build_pool(8192)
    t = time.perf_counter()
    for b in raw:
        opb.GetFlowsResponse.FromString(b)
    dt = time.perf_counter() - t
    print(f"  protobuf decode       {dt / len(raw) * 1e6:6.2f} µs/flow")
    t = time.perf_counter()
    cards, arrows = m.cards_json(), m.arrows_json()
    _pair_labels(arrows)
    box = layout(cards, arrows)
    dt = time.perf_counter() - t
    print(f"  map snapshot+layout   {dt * 1e3:6.1f} ms for {len(cards)} cards, {len(arrows)} arrows, "
          f"{box['columns']} columns (at most once a second per view)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="5000,10000,20000")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--micro", action="store_true", help="only the in-process costs")
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    p.add_argument("--stats", help=argparse.SUPPRESS)
    p.add_argument("--batched", action="store_true",
                   help="the source also serves webb.stream.FlowStream (batches), as webb's relay")
    a = p.parse_args()
    if a.serve:
        serve_flows(a.serve, a.rate, a.stats, a.batched)
        return
    print(f"webb-ui bench · {platform.node()} · {os.cpu_count()} CPUs · {platform.platform()} · "
          f"Python {platform.python_version()} · load average {os.getloadavg()[0]:.1f}")
    print("in-process:")
    micro()
    if a.micro:
        return
    out = ROOT / "test-results" / "ui-bench"
    out.mkdir(parents=True, exist_ok=True)
    print(f"\nreal webb-ui process, flows from a gRPC server process, {a.seconds:.0f} s per rate, "
          "two live clients (all namespaces; namespace 'shop'):")
    print("  offered = the cluster's flow rate; sent/s = what the source streamed to both views (it\n"
          "  cannot send faster than the UI reads: gRPC flow control); taken/s = the all-namespaces view")
    hdr = (f"{'offered':>8} {'sent/s':>7} {'src CPU':>7} {'taken/s':>8} {'ns view/s':>9} {'UI CPU':>7} {'RSS MB start→mid→end (max)':>28} "
           f"{'table upd/s':>11} {'max gap':>7} {'map upd/s':>9} {'max gap':>7} {'rows/s sent':>11} {'SSE KB/s':>8}")
    print(hdr)
    for rate in [float(r) for r in a.rates.split(",")]:
        r = run_phase(rate, a.seconds, out, a.batched)
        print(f"{r['rate']:>8,.0f} {r['sent']:>7,.0f} {r['srv_cpu']:>6.0f}% {r['ingest_all']:>8,.0f} {r['ingest_ns']:>9,.0f} {r['cpu']:>6.0f}% "
              f"{r['rss0']:>9.0f} → {r['rss_half']:.0f} → {r['rss1']:.0f} ({r['rss_max']:.0f}) "
              f"{r['table_updates_s']:>11.1f} {r['table_gap']:>6.2f}s {r['map_updates_s']:>9.1f} "
              f"{r['map_gap']:>6.2f}s {r['rows_s']:>11.0f} {r['sse_kb_s']:>8.0f}")
        print(f"{'':>8} map: {r['map']}; namespace view gaps: table {r['ns_table_gap']:.2f}s, "
              f"map {r['ns_map_gap']:.2f}s; flows window {r['window']}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

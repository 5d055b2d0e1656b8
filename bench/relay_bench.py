"""Relay benchmark: merged flows/s from three agents through webb-relay to one client,
and the latency the relay adds (kernel event time in flow.time -> client receive time,
through the relay vs straight from the agents). Prints figures; asserts nothing.

Needs root (network namespaces, eBPF). Run: .venv/bin/python bench/relay_bench.py
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from abba import cpu_seconds  # noqa: E402  (bench/ is this script's directory)
from support import (BIN, NO_BDP, TRAFFIC, AgentProc, free_port, pod_endpoint,  # noqa: E402
                     wait_for, write_endpoints)
from webb.api.observer import observer_pb2 as opb  # noqa: E402
from webb.api.observer import observer_pb2_grpc  # noqa: E402
from webb.netlab import NetLab  # noqa: E402

PAIRS = [(1, 2), (2, 3), (3, 1)]  # client on node a -> server on node b: seen on both nodes


def ts_ns(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def now_ts() -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(time.time_ns())
    return t


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def machine() -> str:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} vCPU {cpu}, kernel {platform.release()}, Python {platform.python_version()}"


class Relay:
    def __init__(self, workdir: Path, peers: list[str], window: str) -> None:
        self.port = free_port()
        self.log = workdir / f"relay-{self.port}.log"
        self.proc = subprocess.Popen(
            [str(BIN / "webb-relay"), "--listen-address", f"127.0.0.1:{self.port}",
             "--peers", ",".join(peers), "--sort-buffer-drain-timeout", window,
             "--log-level", "warning"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=NO_BDP)
        self.observer = observer_pb2_grpc.ObserverStub(self.channel)

        def ready() -> bool:
            nodes = self.observer.GetNodes(opb.GetNodesRequest(), timeout=2).nodes
            return len(nodes) == len(peers) and all(n.state == 1 for n in nodes)
        wait_for(ready, 20, 0.1, "relay connected")

    def stop(self) -> None:
        self.channel.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Recorder:
    """Reads a follow stream in a thread; keeps (receive ns, flow ns) per flow."""

    def __init__(self, stub: observer_pb2_grpc.ObserverStub, **req: Any) -> None:
        self.call = stub.GetFlows(opb.GetFlowsRequest(follow=True, **req), timeout=600)
        self.samples: list[tuple[int, int]] = []
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for r in self.call:
                self.started.set()
                if r.HasField("flow"):
                    self.samples.append((time.time_ns(), ts_ns(r.flow.time)))
        except grpc.RpcError:
            pass

    def stop(self) -> None:
        self.call.cancel()
        self.thread.join(5)


def traffic(lab: NetLab, per_pair: int, base_port: int, pace: float,
            pairs: list[tuple[int, int]] = PAIRS) -> float:
    """UDP to `per_pair` distinct ports on each pair, all pairs at once: every
    datagram is a new flow on the client's and on the server's node."""
    t = time.monotonic()
    procs = [lab.popen(lab.pods[f"c{a}"].netns, sys.executable, TRAFFIC, "udp-send",
                       lab.pods[f"s{b}"].ip4, str(base_port), "--count", str(per_pair),
                       "--ports", str(per_pair), "--pace", str(pace))
             for a, b in pairs]
    for p in procs:
        p.wait(300)
    return time.monotonic() - t


def total_flows(agents: list[AgentProc]) -> int:
    return sum(a.observer.ServerStatus(opb.ServerStatusRequest(), timeout=5).seen_flows
               for a in agents)


def settle(agents: list[AgentProc], want: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    n = total_flows(agents)
    while n < want and time.monotonic() < deadline:
        time.sleep(0.2)
        n = total_flows(agents)
    return n


def history_rate(stub: observer_pb2_grpc.ObserverStub, **req: Any) -> tuple[int, float]:
    t = time.perf_counter()
    n = sum(1 for r in stub.GetFlows(opb.GetFlowsRequest(**req), timeout=300) if r.HasField("flow"))
    return n, n / (time.perf_counter() - t)


def live(stubs: list[observer_pb2_grpc.ObserverStub], lab: NetLab, per_pair: int, port: int,
         pace: float, agents: list[AgentProc],
         pairs: list[tuple[int, int]] = PAIRS) -> dict[str, float]:
    before = total_flows(agents)
    recs = [Recorder(s, since=now_ts()) for s in stubs]
    time.sleep(0.5)
    dur = traffic(lab, per_pair, port, pace, pairs)
    produced = settle(agents, before + 2 * len(pairs) * per_pair) - before
    time.sleep(1.5)  # the sorting window and the agents' drain
    last, quiet = -1, time.monotonic()
    while time.monotonic() - quiet < 3:  # until the stream has caught up
        n = sum(len(r.samples) for r in recs)
        if n >= produced:
            break
        if n != last:
            last, quiet = n, time.monotonic()
        time.sleep(0.2)
    for r in recs:
        r.stop()
    samples = [s for r in recs for s in r.samples]
    lat = [(recv - t) / 1e6 for recv, t in samples]
    got = len(samples)
    span = (max(r for r, _ in samples) - min(r for r, _ in samples)) / 1e9 if samples else 0
    return {"produced": produced, "received": got, "traffic_s": dur,
            "rate": got / span if span else 0.0, "p50": pct(lat, 50), "p99": pct(lat, 99),
            "mean": statistics.fmean(lat) if lat else float("nan")}


# -- synthetic agents: the relay's own cost, without eBPF agents sharing the CPU ----------

def serve_synthetic(port: int, name: str, count: int, offset: int) -> None:
    """A stand-in agent process serving `count` prebuilt flows (history only)."""
    import asyncio

    from webb.api.flow import flow_pb2 as fpb

    base = time.time_ns() - 3600 * 10**9
    msgs = []
    for k in range(count):
        f = fpb.Flow(node_name=name, Summary="UDP",
                     source=fpb.Endpoint(namespace="demo", pod_name=f"client-{k % 7}",
                                         labels=["k8s:app=client", "k8s:version=v1"]),
                     destination=fpb.Endpoint(namespace="demo", pod_name="server",
                                              labels=["k8s:app=server", "k8s:version=v1"]))
        f.time.FromNanoseconds(base + 3 * k + offset)
        r = opb.GetFlowsResponse(flow=f, node_name=name)
        r.time.CopyFrom(f.time)
        msgs.append(r)

    class Synthetic(observer_pb2_grpc.ObserverServicer):
        async def GetFlows(self, req, ctx):  # type: ignore[no-untyped-def]
            for m in (msgs[-req.number:] if req.number else msgs):
                yield m

        async def GetNodes(self, req, ctx):  # type: ignore[no-untyped-def]
            return opb.GetNodesResponse(nodes=[opb.Node(name=name, state=1)])

        async def ServerStatus(self, req, ctx):  # type: ignore[no-untyped-def]
            return opb.ServerStatusResponse(num_flows=count, max_flows=count)

    async def run() -> None:
        server = grpc.aio.server()
        observer_pb2_grpc.add_ObserverServicer_to_server(Synthetic(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    asyncio.run(run())


def synthetic(workdir: Path, count: int, window: str) -> None:
    procs, relay = [], None
    try:
        ports = [free_port() for _ in range(3)]
        for i, port in enumerate(ports):
            p = subprocess.Popen([sys.executable, __file__, "--serve-synthetic", str(port),
                                  f"s{i + 1}", str(count), str(i)], stdout=subprocess.PIPE,
                                 text=True)
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        addrs = [f"127.0.0.1:{p}" for p in ports]
        ch = grpc.insecure_channel(addrs[0], options=NO_BDP)
        n1, r1 = history_rate(observer_pb2_grpc.ObserverStub(ch))
        ch.close()
        relay = Relay(workdir, addrs, window)
        c0 = cpu_seconds(relay.proc.pid)
        n, r = history_rate(relay.observer)
        cpu_us = (cpu_seconds(relay.proc.pid) - c0) / max(1, n) * 1e6
        print(f"\nsynthetic agents (prebuilt flows, no eBPF), {count} flows each:")
        print(f"  direct from one: {n1} flows at {r1:,.0f} flows/s")
        print(f"  through the relay, 3 merged: {n} flows at {r:,.0f} flows/s "
              f"(relay CPU {cpu_us:.0f} us per flow)")
    finally:
        if relay is not None:
            relay.stop()
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--serve-synthetic":
        serve_synthetic(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--history-per-pair", type=int, default=5000,
                    help="datagrams (new flows) per client/server pair for the history test")
    ap.add_argument("--live-per-pair", type=int, default=1500)
    ap.add_argument("--pace", type=float, default=0.004, help="seconds between datagrams (live)")
    ap.add_argument("--window", default="1s", help="relay --sort-buffer-drain-timeout")
    ap.add_argument("--synthetic", type=int, default=20000,
                    help="flows per synthetic agent (0: skip that part)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root")
    lab = NetLab("wrb")
    lab.cleanup()
    workdir = Path("/tmp/webb-relay-bench")
    workdir.mkdir(exist_ok=True)
    agents: list[AgentProc] = []
    relay: Relay | None = None
    try:
        eps = []
        for i in (1, 2, 3):
            node = lab.add_node(f"n{i}", i)
            eps.append(pod_endpoint(lab.add_pod(node, f"c{i}", 10), f"client{i}"))
            eps.append(pod_endpoint(lab.add_pod(node, f"s{i}", 11), f"server{i}"))
        path = workdir / "endpoints.yaml"
        write_endpoints(path, eps)
        agents = [AgentProc(workdir, f"n{i}", lab.nodes[f"n{i}"].netns, path, ring=65535)
                  for i in (1, 2, 3)]
        threads = [threading.Thread(target=ag.start) for ag in agents]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, ag in enumerate(agents, start=1):
            ag.wait_attached([f"c{i}", f"s{i}"])
        relay = Relay(workdir, [ag.address for ag in agents], a.window)
        print(f"machine: {machine()}")
        print(f"relay: --sort-buffer-drain-timeout {a.window}, --sort-buffer-len-max 100")

        # -- history: everything the rings hold, merged ------------------------------
        before = total_flows(agents)
        traffic(lab, a.history_per_pair, 20000, 0)
        held = settle(agents, before + 2 * 3 * a.history_per_pair) - before
        direct = [history_rate(ag.observer) for ag in agents]
        c0 = cpu_seconds(relay.proc.pid)
        n_relay, r_relay = history_rate(relay.observer)
        cpu_us = (cpu_seconds(relay.proc.pid) - c0) / max(1, n_relay) * 1e6
        print(f"\nhistory: {held} flows recorded by 3 agents")
        for ag, (n, r) in zip(agents, direct):
            print(f"  direct {ag.node}: {n} flows at {r:,.0f} flows/s")
        print(f"  through the relay, merged: {n_relay} flows at {r_relay:,.0f} flows/s "
              f"(relay CPU {cpu_us:.0f} us per flow)")
        n_last, r_last = history_rate(relay.observer, number=1000)
        print(f"  through the relay, number=1000 (cluster-wide newest): {n_last} flows "
              f"at {r_last:,.0f} flows/s")

        # -- live: latency from kernel event to client ---------------------------------
        d = live([ag.observer for ag in agents], lab, a.live_per_pair, 40000, a.pace, agents)
        r = live([relay.observer], lab, a.live_per_pair, 45000, a.pace, agents)
        print(f"\nlive (follow), {3 * a.live_per_pair} datagrams paced {a.pace}s per pair:")
        for name, x in (("direct from 3 agents", d), ("through the relay   ", r)):
            print(f"  {name}: {x['received']}/{x['produced']} flows, {x['rate']:,.0f} flows/s; "
                  f"latency p50 {x['p50']:.1f} ms, p99 {x['p99']:.1f} ms")
        print(f"  added by the relay: p50 {r['p50'] - d['p50']:+.1f} ms, "
              f"p99 {r['p99'] - d['p99']:+.1f} ms")

        # -- live with an idle node: the sorting window holds flows back ----------------
        i = live([relay.observer], lab, a.live_per_pair, 47000, a.pace, agents, pairs=[(1, 2)])
        print(f"\nlive, traffic only between n1 and n2 (n3 idle), through the relay: "
              f"{i['received']}/{i['produced']} flows; latency p50 {i['p50']:.1f} ms, "
              f"p99 {i['p99']:.1f} ms (the sorting window: {a.window})")

        # -- live at full speed: merged throughput ---------------------------------------
        b = live([relay.observer], lab, a.live_per_pair * 4, 50000, 0, agents)
        print(f"\nlive burst (unpaced), through the relay: {b['received']}/{b['produced']} flows "
              f"at {b['rate']:,.0f} flows/s to one client; latency p50 {b['p50']:.1f} ms, "
              f"p99 {b['p99']:.1f} ms")
        relay.stop()
        relay = None
        for ag in agents:
            ag.stop()
        if a.synthetic:
            synthetic(workdir, a.synthetic, a.window)
    finally:
        if relay is not None:
            relay.stop()
        for ag in agents:
            ag.stop()
        lab.cleanup()


if __name__ == "__main__":
    main()

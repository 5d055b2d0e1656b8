#!/usr/bin/env python3
"""The agent's Hubble GetFlows servicer alone vs a bare grpcio server streaming the same
bytes: where the agent's per-message time goes, without eBPF, traffic or the rest of an
agent competing for the CPU.

Two server processes hold the same ring of N flow records (tests/unit/history_support:
a varied mix, encoded once by the agent's FlowWireCache):
  webb  the agent's ObserverService (api/observer.py) registered as the agent does
        (webb/grpc_bytes.py pass-through serializer), reading the Ring
        (pipeline/selection.py)
  bare  one async generator yielding the same pre-encoded responses
One client reads GetFlows (a history read of the whole ring, raw bytes) from each, ABBA,
--rounds times; printed per side: messages/s and server CPU per message (from
/proc/PID/stat), the ratio per round, its median and spread. --profile runs the webb
server under cProfile and prints where its time goes.

    .venv/bin/python bench/getflows_servicer_bench.py [--flows 20000] [--rounds 5] [--profile]
        [--gc agent|default] [--cli]

--cli also times the `webb` CLI reading the whole ring (`webb observe --all -o jsonpb`)
from each server: from webb's it reads GetFlowBatches, from the bare one (GetFlows only)
it falls back to GetFlows.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from abba import abba_rounds, add_bare_getflows, cpu_seconds, run_profiled  # noqa: E402

GET_FLOWS = "/observer.Observer/GetFlows"


def _ring(n: int):  # type: ignore[no-untyped-def]
    from history_support import ingest, records, wire_cache
    from webb_agent.stores.ring import Ring
    cap = 1
    while cap < n + 1:
        cap = cap * 2 + 1
    ring = Ring(cap, 0)
    cache = wire_cache()
    for b in range(0, n, 1000):
        ingest(ring, records(b, min(1000, n - b)))
    return ring, cache


def serve(mode: str, n: int, profile: str, gc_mode: str) -> None:
    import asyncio

    import grpc

    ring, cache = _ring(n)
    if gc_mode == "agent":  # the agent's collector settings (memory.py), on both sides
        from webb_agent.memory import tune_gc
        tune_gc()

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        if mode == "webb":
            from webb_agent.api.agent_events import AgentEventLog
            from webb_agent.api.observer import NodeState, ObserverService
            from webb_agent.api.server import add_observer
            from webb.api.stream import stream_pb2_grpc
            from webb_agent.api.flow_batches import FlowStreamService
            node = NodeState("node-h", "test", "", ring, lambda: 0)
            observer = ObserverService(node, cache, AgentEventLog())
            add_observer(observer, server)
            # the batched stream too (for --cli; GetFlows' figures do not use it)
            stream_pb2_grpc.add_FlowStreamServicer_to_server(FlowStreamService(observer), server)
        else:
            add_bare_getflows(server, [cache.response(ring.get(s))
                                       for s in range(ring.oldest_seq, ring.next_seq)])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await server.stop(None)

    run_profiled(main, profile)


def cli(a: argparse.Namespace, ports: dict[str, int], rounds: int) -> None:
    """`webb observe --all -o jsonpb` (output to /dev/null): wall time and the CLI's CPU."""
    webb = str(Path(sys.executable).parent / "webb")
    got: dict[str, list[tuple[float, float]]] = {"webb": [], "bare": []}
    for _ in range(rounds):
        for mode in ("webb", "bare", "bare", "webb"):
            before = os.times()
            t0 = time.perf_counter()
            subprocess.run([webb, "observe", "--server", f"127.0.0.1:{ports[mode]}", "--all",
                            "-o", "jsonpb"], stdout=subprocess.DEVNULL, check=True)
            wall = time.perf_counter() - t0
            after = os.times()
            cpu = (after.children_user - before.children_user
                   + after.children_system - before.children_system)
            got[mode].append((wall, cpu))
    med = statistics.median
    for mode, what in (("webb", "GetFlowBatches"), ("bare", "GetFlows (fallback)")):
        print(f"  webb observe --all -o jsonpb, {a.flows:,} flows, {what}: "
              f"{med(w for w, _ in got[mode]):.2f} s, CLI CPU {med(c for _, c in got[mode]):.2f} s "
              f"(median of {rounds * 2})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flows", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--cli", action="store_true",
                   help="also time `webb observe --all -o jsonpb` against both servers: webb's "
                        "(the CLI reads GetFlowBatches) and bare (GetFlows only: the CLI's "
                        "fallback), ABBA")
    p.add_argument("--gc", choices=["agent", "default"], default="agent",
                   help="garbage collector of both servers: the agent's settings "
                        "(webb_agent.memory.tune_gc: frozen start-up objects, gen-0 threshold "
                        "50,000) or CPython's defaults")
    p.add_argument("--serve", default="", help=argparse.SUPPRESS)
    p.add_argument("--profile-out", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        serve(a.serve, a.flows, a.profile_out, a.gc)
        return

    import grpc

    from webb.api.observer import observer_pb2 as opb

    prof_out = f"/tmp/getflows-servicer-{os.getpid()}.prof.txt" if a.profile else ""
    servers, channels = {}, {}
    for mode in ("webb", "bare"):
        cmd = [sys.executable, __file__, "--serve", mode, "--flows", str(a.flows), "--gc", a.gc]
        if mode == "webb" and prof_out:
            cmd += ["--profile-out", prof_out]
        servers[mode] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True)
    try:
        channels_ports: dict[str, int] = {}
        for mode, srv in servers.items():
            port = channels_ports[mode] = int(srv.stdout.readline())  # type: ignore[union-attr]
            channels[mode] = grpc.insecure_channel(f"127.0.0.1:{port}",
                                                   options=[("grpc.http2.bdp_probe", 0)])

        def read(mode: str) -> tuple[float, float]:
            call = channels[mode].unary_stream(
                GET_FLOWS, request_serializer=opb.GetFlowsRequest.SerializeToString,
                response_deserializer=None)
            c0, t0 = cpu_seconds(servers[mode].pid), time.perf_counter()
            n = sum(1 for _ in call(opb.GetFlowsRequest(), timeout=600))
            dt, cpu = time.perf_counter() - t0, cpu_seconds(servers[mode].pid) - c0
            assert n == a.flows, (mode, n)
            return n / dt, cpu / n * 1e6

        ratios, rate, cpu = abba_rounds(read, a.rounds)
        if a.cli:
            cli(a, channels_ports, a.rounds)
        load = os.getloadavg()[0]
        med = statistics.median
        print(f"GetFlows of {a.flows:,} flows, {a.rounds} ABBA rounds, {a.gc} GC settings "
              f"(load {load:.1f}):")
        print(f"  webb servicer  {med(rate['webb']):8,.0f} messages/s, server CPU "
              f"{med(cpu['webb']):5.1f} us/message (median)")
        print(f"  bare grpcio    {med(rate['bare']):8,.0f} messages/s, server CPU "
              f"{med(cpu['bare']):5.1f} us/message (median)")
        print(f"  ratio per round {', '.join(f'{x:.2f}' for x in ratios)}: median "
              f"{med(ratios):.2f}, spread {min(ratios):.2f}-{max(ratios):.2f}; CPU ratio "
              f"bare/webb {med(cpu['bare']) / med(cpu['webb']):.2f}")
    finally:
        for ch in channels.values():
            ch.close()
        for srv in servers.values():
            try:
                srv.stdin.write("\n")  # type: ignore[union-attr]
                srv.stdin.flush()  # type: ignore[union-attr]
                srv.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                srv.kill()
                srv.wait()
    if prof_out:
        print(Path(prof_out).read_text())
        os.unlink(prof_out)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The relay's Hubble GetFlows alone vs a bare grpcio server streaming the same bytes:
where the relay's per-message time goes, without eBPF, traffic or agents competing
for the CPU (pipeline_bench.py's getflows row measures the same with real agents).

Processes:
  agents  --agents grpc.aio servers, each streaming webb.stream.FlowStream/GetFlowBatches
          of --flows/--agents pre-encoded responses (ui_bench.build_pool: ~600-byte
          flows), 1,000 a batch, their times interleaved with the other agents'
  webb    the relay (services/relay/main.py's Relay, in process, static --peers)
  bare    one async generator yielding the relay's merged answer (read once first)
One client reads GetFlows (raw bytes) from the relay and from the bare server, ABBA,
--rounds times; printed per side: messages/s and server CPU per message (from
/proc/PID/stat; the relay's includes reading its agents, the agents' own CPU is not
counted), the ratio per round, its median and spread; then the relay's CPU per entry
for the same answer read with GetFlowBatches (reading the agents and merging, with
few messages out) and its garbage collections. --profile runs the relay and the bare
server under cProfile and prints where their time goes. --busy-agents makes the agents decode and
encode every response per read (they then compete for the CPU as real agents do);
--gc tuned gives the relay the agent's collector settings.

    .venv/bin/python bench/relay_getflows_bench.py [--flows 30000] [--agents 3] [--rounds 5]
        [--profile] [--busy-agents] [--gc default|tuned]
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

from abba import abba_rounds, add_bare_getflows, cpu_seconds, read_framed, run_profiled, write_framed  # noqa: E402

GET_FLOWS = "/observer.Observer/GetFlows"
BATCH = 1000


def serve_agent(index: int, agents: int, n: int, busy: bool) -> None:
    import asyncio

    import grpc

    from ui_bench import build_pool
    from webb.api.observer import observer_pb2 as opb
    from webb.api.stream import stream_pb2 as spb

    t0 = 1_700_000_000 * 10**9
    pool = build_pool(n, seed=index + 1, t0=t0)
    times = [t0 + k * agents * 1000 + index for k in range(n)]  # interleaved with the others
    batches = [spb.FlowBatch(responses=pool[i:i + BATCH], time_ns=times[i:i + BATCH],
                             node_index=[0] * len(pool[i:i + BATCH]),
                             nodes=[f"node-{index}"]).SerializeToString()
               for i in range(0, n, BATCH)]

    async def get_flow_batches(req, ctx):  # type: ignore[no-untyped-def]
        if not busy:
            for b in batches:
                yield b
            return
        # as busy as a real agent while the relay reads: each response decoded and
        # encoded again (a few us of Python per entry, about what an agent's read costs)
        for i in range(0, n, BATCH):
            rs = [opb.GetFlowsResponse.FromString(r).SerializeToString()
                  for r in pool[i:i + BATCH]]
            yield spb.FlowBatch(responses=rs, time_ns=times[i:i + BATCH],
                                node_index=[0] * len(rs),
                                nodes=[f"node-{index}"]).SerializeToString()

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        h = grpc.unary_stream_rpc_method_handler(get_flow_batches,
                                                 request_deserializer=lambda b: b,
                                                 response_serializer=lambda b: b)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "webb.stream.FlowStream", {"GetFlowBatches": h}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await server.stop(None)

    asyncio.run(main())


def serve_relay(peers: str, profile: str, gc_mode: str) -> None:
    import asyncio
    import gc

    from webb_relay.main import Relay, parse_args

    # what the collector costs the relay during the reads (printed when it stops)
    spent = [0.0, 0.0, 0.0]
    counts = [0, 0, 0]
    began = [0.0]

    def on_gc(phase: str, info: dict) -> None:  # type: ignore[type-arg]
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            spent[info["generation"]] += time.perf_counter() - began[0]
            counts[info["generation"]] += 1
    gc.callbacks.append(on_gc)
    if gc_mode == "tuned":
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)

    async def main() -> None:
        relay = Relay(parse_args(["--peers", peers, "--listen-address", "127.0.0.1:0",
                                  "--log-level", "warning"]))
        await relay.start()
        print(relay.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await relay.stop()
        print(f"  relay's garbage collections by generation {counts}, taking "
              f"{[round(x, 3) for x in spent]} s ({gc_mode} settings)", file=sys.stderr)

    run_profiled(main, profile)


def serve_bare(path: str, profile: str) -> None:
    import asyncio

    import grpc
    msgs = read_framed(path)

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        add_bare_getflows(server, msgs)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await server.stop(None)

    run_profiled(main, profile)


def start(args: list[str]) -> tuple[subprocess.Popen[str], int]:
    p = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    return p, int(p.stdout.readline())  # type: ignore[union-attr]


def stop(p: subprocess.Popen[str]) -> None:
    try:
        p.stdin.write("\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
        p.wait(30)
    except (OSError, subprocess.TimeoutExpired):
        p.kill()
        p.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flows", type=int, default=30000)
    p.add_argument("--agents", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--busy-agents", action="store_true",
                   help="the agents decode and encode every response per read (CPU the "
                        "real agents spend beside the relay) instead of streaming batches "
                        "encoded once")
    p.add_argument("--gc", choices=["default", "tuned"], default="default",
                   help="the relay's collector: CPython's defaults (as webb-relay runs) or "
                        "the agent's settings (freeze, gen-0 threshold 50,000)")
    p.add_argument("--serve", default="", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--peers", default="", help=argparse.SUPPRESS)
    p.add_argument("--data", default="", help=argparse.SUPPRESS)
    p.add_argument("--profile-out", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    per_agent = a.flows // a.agents
    if a.serve == "agent":
        return serve_agent(a.index, a.agents, per_agent, a.busy_agents)
    if a.serve == "relay":
        return serve_relay(a.peers, a.profile_out, a.gc)
    if a.serve == "bare":
        return serve_bare(a.data, a.profile_out)

    import tempfile

    import grpc

    from webb.api.observer import observer_pb2 as opb
    from webb.api.stream import stream_pb2_grpc

    prof_out = {m: f"/tmp/relay-getflows-{os.getpid()}-{m}.prof.txt" if a.profile else ""
                for m in ("relay", "bare")}
    procs: list[subprocess.Popen[str]] = []
    channels: dict[str, grpc.Channel] = {}
    data = tempfile.NamedTemporaryFile(delete=False)
    data.close()
    try:
        ports = []
        for i in range(a.agents):
            proc, port = start(["--serve", "agent", "--index", str(i), "--agents", str(a.agents),
                                "--flows", str(a.flows)] + (["--busy-agents"] if a.busy_agents else []))
            procs.append(proc)
            ports.append(port)
        relay_args = ["--serve", "relay", "--gc", a.gc, "--peers", ",".join(f"127.0.0.1:{p}" for p in ports)]
        if a.profile:
            relay_args += ["--profile-out", prof_out["relay"]]
        relay, relay_port = start(relay_args)
        procs.append(relay)
        channels["webb"] = grpc.insecure_channel(f"127.0.0.1:{relay_port}",
                                                 options=[("grpc.http2.bdp_probe", 0)])

        def call(mode: str):  # type: ignore[no-untyped-def]
            return channels[mode].unary_stream(
                GET_FLOWS, request_serializer=opb.GetFlowsRequest.SerializeToString,
                response_deserializer=None)(opb.GetFlowsRequest(), timeout=600)

        deadline = time.monotonic() + 30
        while True:  # until the relay has connected every agent
            msgs = list(call("webb"))
            first = opb.GetFlowsResponse.FromString(msgs[0])
            if len(first.node_status.node_names) == a.agents or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(msgs) == per_agent * a.agents + 1, len(msgs)
        write_framed(data.name, msgs)
        bare, bare_port = start(["--serve", "bare", "--data", data.name]
                                + (["--profile-out", prof_out["bare"]] if a.profile else []))
        procs.append(bare)
        channels["bare"] = grpc.insecure_channel(f"127.0.0.1:{bare_port}",
                                                 options=[("grpc.http2.bdp_probe", 0)])
        pids = {"webb": relay.pid, "bare": bare.pid}

        def read(mode: str) -> tuple[float, float]:
            c0, t0 = cpu_seconds(pids[mode]), time.perf_counter()
            n = sum(1 for _ in call(mode))
            dt, cpu = time.perf_counter() - t0, cpu_seconds(pids[mode]) - c0
            assert n == len(msgs), (mode, n)
            return n / dt, cpu / n * 1e6

        ratios, rate, cpu = abba_rounds(read, a.rounds)
        med = statistics.median
        # the relay's cost of reading its agents and merging, with the batched output
        # (one message per 1,024 entries): what GetFlows pays besides gRPC's per message
        bcpu = []
        for _ in range(3):
            c0 = cpu_seconds(relay.pid)
            nb = sum(len(b.responses) for b in stream_pb2_grpc.FlowStreamStub(
                channels["webb"]).GetFlowBatches(opb.GetFlowsRequest(), timeout=600))
            bcpu.append((cpu_seconds(relay.pid) - c0) / nb * 1e6)
        print(f"relay GetFlows of {len(msgs):,} messages from {a.agents} "
              f"{'busy ' if a.busy_agents else ''}agents, {a.rounds} ABBA rounds (load {os.getloadavg()[0]:.1f}):")
        print(f"  relay        {med(rate['webb']):8,.0f} messages/s, server CPU "
              f"{med(cpu['webb']):5.1f} us/message (median)")
        print(f"  bare grpcio  {med(rate['bare']):8,.0f} messages/s, server CPU "
              f"{med(cpu['bare']):5.1f} us/message (median)")
        # one Python client bounds both servers' rates: the CPU ratio is the figure
        print(f"  CPU ratio bare/relay {med(cpu['bare']) / med(cpu['webb']):.2f}; rate ratio "
              f"per round (client-bound, indicative only) {', '.join(f'{x:.2f}' for x in ratios)}: "
              f"median {med(ratios):.2f}, spread {min(ratios):.2f}-{max(ratios):.2f}")
        print(f"  relay GetFlowBatches (agents read and merged, 1,024 entries a message): "
              f"server CPU {med(bcpu):.1f} us/entry (median of 3)")
    finally:
        for ch in channels.values():
            ch.close()
        for proc in reversed(procs):
            stop(proc)
        os.unlink(data.name)
    for mode, path in prof_out.items():
        if path:
            print(f"-- {mode} server under cProfile")
            print(Path(path).read_text())
            os.unlink(path)


if __name__ == "__main__":
    main()

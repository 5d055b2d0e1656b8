#!/usr/bin/env python3
"""L7 policy benchmark: what going through the agent's HTTP proxy costs, against the
same server under an L4-only policy, in the same run. Prints figures and ratios with
the machine and its load noted; asserts nothing.

Run as root from the repository:  .venv/bin/python bench/l7_policy_bench.py  (~2 min;
--rounds, --seconds, --rate, --placements)

Placement (--placements, default split,same): on a 2-vCPU VM the rate of one ping-pong
connection depends mostly on where the scheduler puts the client and the server: on
different CPUs every request pays cross-CPU wake-ups of a halted vCPU, on the same CPU
none, and the rate doubles. Left to the scheduler, an L4 run lands on either, so a ratio
of two unpinned runs compares a coin toss with a coin toss. So the client and the
server are pinned (sched_setaffinity) the same way in both modes, and each placement is
its own ABBA series with its own ratio:
  split - the client on the first CPU, the server on the second;
  same  - both on the first CPU;
  free  - not pinned (what the bench did before; bimodal).
The agent is never pinned: in production it runs where the scheduler puts it.

Modes, interleaved ABBA (L4 L7 relay relay L7 L4, --rounds times per placement),
medians reported:
  L4 - the server's policy allows the client on 8080/TCP: the kernel checks the first
       packet, the connection goes straight to the server;
  L7 - the same rule with `rules.http: [{method: GET, path: "/api/.*"}]`: the
       connection goes through the proxy, every request is matched and forwarded;
  relay - the ceiling of any proxy in user space (--no-relay to skip): the client
       connects to a bare byte relay in the node's namespace (bench/relay.c, built
       with gcc at start: two threads, each a recv/send loop, no parsing, no policy;
       not pinned, like the agent) that connects on to the server. It pays the hop every proxy adds (two more socket
       legs, two wake-ups per request) and nothing else, so relay/L4 bounds what L7/L4
       can reach on this machine and placement, and L7/relay is the proxy's own cost.
Per run, on ONE keep-alive connection (client: blocking socket, TCP_NODELAY):
  (a) requests/s back to back for --seconds;
  (b) latency p50/p99 of requests paced at --rate requests/s for --seconds.
The server answers a fixed 200 (asyncio, pipelining-safe). Lab prefix "wpb" (+
WEBB_TEST_PREFIX_TAG), removed at the end, also on failure or Ctrl-C.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

PORT = 8080
REQUEST = (b"GET /api/v1/items/42 HTTP/1.1\r\nHost: srv:8080\r\n"
           b"User-Agent: webb-l7-policy-bench/1\r\nAccept: application/json\r\n\r\n")
BODY = b'{"id": 42, "name": "item"}\n'
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"\r\n" % len(BODY)) + BODY

POLICY = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: srv, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
"""
L7_RULES = """      rules:
        http:
        - {method: GET, path: "/api/.*"}
"""


# -- traffic, run inside the pods' namespaces ------------------------------------------------
class _Server(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            self.t.write(RESPONSE * n)  # type: ignore[attr-defined]


def _exit_with_stdin() -> None:
    """The server lives as long as the bench (its stdin, a pipe from the bench, ends
    when the bench does, however it ends): a run of many rounds outlasts any fixed
    timeout, and a killed bench leaves no server behind."""
    def watch() -> None:
        sys.stdin.read()
        os._exit(0)
    threading.Thread(target=watch, daemon=True).start()


async def _serve() -> None:
    await asyncio.get_running_loop().create_server(_Server, "0.0.0.0", PORT)
    print("ready", flush=True)
    _exit_with_stdin()
    await asyncio.Event().wait()


def _serve_stdlib() -> None:
    """The same answer from Python's http.server (a typical slow backend)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else head and body wait for delayed ACKs

        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

    srv = ThreadingHTTPServer(("0.0.0.0", PORT), H)
    srv.daemon_threads = True
    print("ready", flush=True)
    _exit_with_stdin()
    srv.serve_forever()


RELAY_PORT = 18080


def _client(host: str, port: int, seconds: float, rate: float, cpu: int) -> None:
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    c = socket.create_connection((host, port), timeout=10)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    want = len(RESPONSE)
    lat: list[float] = []
    c0 = time.process_time()
    t0 = time.monotonic()
    deadline = t0 + seconds
    n = 0
    while time.monotonic() < deadline and n < 10_000_000:
        if rate > 0:
            ahead = t0 + n / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        s = time.perf_counter()
        c.sendall(REQUEST)
        got = 0
        while got < want:
            chunk = c.recv(65536)
            if not chunk:
                raise SystemExit("server closed the connection")
            got += len(chunk)
        lat.append(time.perf_counter() - s)
        n += 1
    dt = time.monotonic() - t0
    cpu = time.process_time() - c0
    c.close()
    lat.sort()
    print(json.dumps({"requests": n, "seconds": dt, "client_cpu_us": cpu * 1e6 / max(n, 1),
                      "p50_ms": lat[len(lat) // 2] * 1e3 if lat else 0,
                      "p99_ms": lat[int(len(lat) * 0.99)] * 1e3 if lat else 0}), flush=True)


# -- the bench -------------------------------------------------------------------------------
def wakeups(pid: int) -> int:
    """Voluntary context switches of the process's main thread (the agent's event loop):
    each is a sleep in epoll, i.e. one wake-up later."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="ABBA rounds (default 2)")
    ap.add_argument("--seconds", type=float, default=3.0, help="per run (default 3)")
    ap.add_argument("--rate", type=float, default=1000.0, help="paced rate for latency")
    ap.add_argument("--backend", choices=["asyncio", "http.server"], default="asyncio",
                    help="the server: a minimal asyncio protocol (default, the hardest "
                         "baseline) or Python's http.server (a typical slow backend)")
    ap.add_argument("--event-loop", choices=["uvloop", "asyncio"], default="uvloop",
                    help="the agent's event loop (webb-agent --event-loop; default uvloop)")
    ap.add_argument("--placements", default="split,same",
                    help="comma-separated: split (client and server on different CPUs), "
                         "same (one CPU), free (not pinned); default split,same")
    ap.add_argument("--no-relay", dest="relay", action="store_false",
                    help="skip the relay mode (the ceiling of a user-space proxy)")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=PORT, help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--host", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.mode == "serve":
        if a.backend == "http.server":
            _serve_stdlib()
        else:
            asyncio.run(_serve())
        return
    if a.mode == "client":
        _client(a.host, a.port, a.seconds, a.rate, a.cpu)
        return

    from agent_bench import Agent, machine, proc_times, write_bench_endpoints
    from webb.api.admin import admin_pb2
    from webb.netlab import NetLab

    prefix = "wpb" + os.environ.get("WEBB_TEST_PREFIX_TAG", "")[:2]
    lab = NetLab(prefix)
    lab.cleanup()
    tmp = Path(tempfile.mkdtemp(prefix="webb-l7pb-"))
    procs: list[subprocess.Popen] = []
    agent = None
    try:
        n1 = lab.add_node("n1", 1)
        cli, srv = lab.add_pod(n1, "cli", 10), lab.add_pod(n1, "srv", 11)
        eps = tmp / "endpoints.yaml"
        write_bench_endpoints(eps, (cli, srv))
        server = lab.popen(srv.netns, sys.executable, __file__, "--mode", "serve",
                           "--backend", a.backend, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
        procs.append(server)  # `ip netns exec` execs: server.pid is the server's own
        assert server.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        relay = None
        if a.relay:
            exe = tmp / "relay"
            subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(HERE / "relay.c"),
                            "-lpthread"], check=True)
            relay = lab.popen(n1.netns, str(exe), str(RELAY_PORT), srv.ip4, str(PORT),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs.append(relay)
            assert relay.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        agent = Agent(tmp, n1.netns, eps, ["--event-loop", a.event_loop])
        agent.start()
        deadline = time.monotonic() + 30
        while {e.name for e in agent.admin.ListEndpoints(
                admin_pb2.ListEndpointsRequest(), timeout=5).endpoints if e.attached} != {"cli", "srv"}:
            if time.monotonic() > deadline:
                raise SystemExit("the agent did not attach")
            time.sleep(0.2)

        def apply(l7: bool) -> None:
            text = POLICY + (L7_RULES if l7 else "")
            agent.admin.ApplyPolicies(admin_pb2.ApplyPoliciesRequest(documents=text), timeout=10)

        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("the placements need two CPUs")
        # (client CPU, server CPU); -1: not pinned
        where = {"split": (cpus[0], cpus[1]), "same": (cpus[0], cpus[0]), "free": (-1, -1)}
        placements = [x.strip() for x in a.placements.split(",") if x.strip()]
        for pl in placements:
            if pl not in where:
                raise SystemExit(f"unknown placement {pl!r} (split, same, free)")

        def run(mode: str, rate: float, pl: str) -> dict:
            apply(mode == "L7")
            host, port = (n1.ip, RELAY_PORT) if mode == "relay" else (srv.ip4, PORT)
            ccpu, scpu = where[pl]
            os.sched_setaffinity(server.pid, {scpu} if scpu >= 0 else set(cpus))
            u0, s0 = proc_times(agent.pid)
            w0 = wakeups(agent.pid)
            v0 = sum(proc_times(server.pid))
            x0 = sum(proc_times(relay.pid)) if relay is not None else 0.0
            out = lab.exec(cli.netns, sys.executable, __file__, "--mode", "client", "--host",
                           host, "--port", str(port), "--seconds", str(a.seconds), "--rate",
                           str(rate), "--cpu", str(ccpu), timeout=a.seconds + 60)
            r = json.loads(out.stdout)
            u1, s1 = proc_times(agent.pid)
            w1 = wakeups(agent.pid)
            v1 = sum(proc_times(server.pid))
            x1 = sum(proc_times(relay.pid)) if relay is not None else 0.0
            n = max(r["requests"], 1)
            r["relay_cpu_us"] = (x1 - x0) * 1e6 / n
            r["server_cpu_us"] = (v1 - v0) * 1e6 / n
            r["agent_cpu_us"] = (u1 - u0 + s1 - s0) * 1e6 / n
            r["agent_sys_us"] = (s1 - s0) * 1e6 / n
            r["agent_wakeups"] = (w1 - w0) / n
            return r

        load0 = os.getloadavg()
        keys = ("rps", "p50", "p99", "cpu", "sys", "wake", "client", "server", "relay")
        modes = ("L4", "L7", "relay") if relay is not None else ("L4", "L7")
        order = (*modes, *reversed(modes))  # ABBA: L4 L7 relay relay L7 L4
        res = {pl: {m: {k: [] for k in keys} for m in modes} for pl in placements}
        for _ in range(a.rounds):
            for pl in placements:  # the placements interleaved too: a drift hits all alike
                for mode in order:
                    d = res[pl][mode]
                    r = run(mode, 0, pl)
                    d["rps"].append(r["requests"] / r["seconds"])
                    d["cpu"].append(r["agent_cpu_us"])
                    d["sys"].append(r["agent_sys_us"])
                    d["wake"].append(r["agent_wakeups"])
                    d["client"].append(r["client_cpu_us"])
                    d["server"].append(r["server_cpu_us"])
                    d["relay"].append(r["relay_cpu_us"])
                    p = run(mode, a.rate, pl)
                    d["p50"].append(p["p50_ms"])
                    d["p99"].append(p["p99_ms"])
        load1 = os.getloadavg()
        print(f"machine: {machine()}")
        print(f"load average before/after: {load0[0]:.2f} / {load1[0]:.2f}")
        print(f"{a.rounds} ABBA rounds of {a.seconds:g} s runs per placement, one keep-alive "
              f"connection each, backend {a.backend}, agent on {a.event_loop}, not pinned")
        for pl in placements:
            ccpu, scpu = where[pl]
            print(f"placement {pl}: " + ("client and server not pinned" if ccpu < 0 else
                                         f"client on CPU {ccpu}, server on CPU {scpu}"))
            med = {m: {k: statistics.median(v) for k, v in d.items()} for m, d in res[pl].items()}
            for m in modes:
                d = med[m]
                own = (f"relay CPU {d['relay']:.1f}" if m == "relay" else
                       f"agent CPU {d['cpu']:.1f} us/request ({d['sys']:.1f} in the kernel, "
                       f"{d['wake']:.2f} wake-ups)")
                print(f"  {m}: {d['rps']:8.0f} req/s back to back; at {a.rate:g} req/s "
                      f"p50 {d['p50']:.3f} ms, p99 {d['p99']:.3f} ms; {own}; client "
                      f"{d['client']:.1f}, server {d['server']:.1f} us/request   "
                      f"(runs: {', '.join(f'{x:.0f}' for x in res[pl][m]['rps'])} req/s)")
            l4 = med["L4"]
            print(f"  L4 round trip {1e6 / l4['rps']:.1f} us: the client's CPU {l4['client']:.1f} "
                  f"and the server's {l4['server']:.1f} us of it (the rest: wake-ups, the "
                  f"kernel's softirq work, waiting for a CPU)")
            rps = {m: res[pl][m]["rps"] for m in modes}

            def per_round(m: str, base: str) -> list[float]:
                # Each mode's two runs of a round (A B .. B A): a drift within it cancels.
                return [sum(rps[m][2 * i:2 * i + 2]) / sum(rps[base][2 * i:2 * i + 2])
                        for i in range(a.rounds)]
            rounds = per_round("L7", "L4")
            print(f"  L7/L4 requests/s: {med['L7']['rps'] / l4['rps']:.2f} of the medians, per "
                  f"round {', '.join(f'{x:.2f}' for x in rounds)} (target >= 0.50)")
            checks = [("L7/L4", rounds, 1.0, "a proxy adds a hop")]
            if "relay" in modes:
                ceiling, share = per_round("relay", "L4"), per_round("L7", "relay")
                print(f"  relay/L4 (the ceiling of any user-space proxy here): "
                      f"{med['relay']['rps'] / l4['rps']:.2f} of the medians, per round "
                      f"{', '.join(f'{x:.2f}' for x in ceiling)}")
                print(f"  L7/relay (the proxy against a bare relay on the same hop): "
                      f"{med['L7']['rps'] / med['relay']['rps']:.2f} of the medians, per round "
                      f"{', '.join(f'{x:.2f}' for x in share)}")
                checks += [("relay/L4", ceiling, 1.0, "a relay adds a hop"),
                           ("L7/relay", share, 1.05, "the proxy does the relay's work and more")]
            # Faster than what it adds to cannot be true; a round whose runs spread by
            # more than 1.5x had the machine change under it.
            for i in range(a.rounds):
                for name, xs, limit, why in checks:
                    if xs[i] >= limit:
                        print(f"  !! round {i + 1}: {name} {xs[i]:.2f} cannot be true ({why}): "
                              f"the placement did not hold or the load changed")
                spread = [max(rps[m][2 * i:2 * i + 2]) / max(min(rps[m][2 * i:2 * i + 2]), 1)
                          for m in modes]
                if max(spread) > 1.5:
                    runs = [x for m in modes for x in rps[m][2 * i:2 * i + 2]]
                    print(f"  !! round {i + 1}: runs of one mode differ {max(spread):.1f}x "
                          f"({', '.join(f'{x:.0f}' for x in runs)} req/s): noisy, "
                          f"do not trust its ratios")
            print(f"  added latency at {a.rate:g} req/s: p50 "
                  f"{med['L7']['p50'] - med['L4']['p50']:+.3f} ms, p99 "
                  f"{med['L7']['p99'] - med['L4']['p99']:+.3f} ms (target p99 <= +1 ms)")
    finally:
        if agent is not None:
            agent.stop()
        for p in procs:
            p.kill()
            p.wait()
        lab.cleanup()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""L7 visibility benchmark: what reading HTTP/DNS from packets costs. Prints figures
and ratios with the machine noted; asserts nothing.

Run as root from the repository:  .venv/bin/python bench/l7_bench.py   (~1-2 min;
--help for options, e.g. --skip http,kernel to run only the in-process part)

(a) HTTP requests/s through the datapath, the same server, port and connection kind in
    both modes, ABBA in the same run (--rounds rounds of A B B A, --seconds each,
    medians reported):
      off - the agent attached to both pods, port 8080 not selected for L7 (the server
            endpoint has no proxy-visibility annotation): per-connection aggregation
            only, a keep-alive connection costs a few events in total;
      L7  - the same, with the annotation <Ingress/8080/TCP/HTTP>: every request and
            response head goes to the agent and becomes a flow.
    A third mode, "L7 paused" (--no-paused drops it): selected, but the agent is
    stopped (SIGSTOP) for the run and resumed after it, so the run pays the datapath's
    capture (TC programs, ring buffer writes) and none of the agent's user-space work: L7
    paused/off is the datapath's share of the cost, L7/L7 paused the agent's. With
    --follow a batched GetFlows follow (this process) reads every flow during the
    runs, as the relay does on a cluster's agents, so the agent also encodes each one.
    Each switch is waited on, not slept over: a probe of a few requests must give ~2 L7
    events per request (L7) or none (off) before a run counts, and each run reports
    its own L7 events and lost events per request, so a run whose selection was not in
    effect, or whose events were lost, shows as such instead of as a speed-up. The
    ratio L7/off is the figure (goal >= 0.95), per CPU placement of client and server
    (--placements: "same" both on CPU 0, "split" client on CPU 0 and server on CPU 1,
    "free" unpinned; the agent is never pinned): on a 2-vCPU machine a ping-pong's rate
    depends on placement more than on the agent (cross-CPU wake-ups of halted vCPUs vs
    context switches, ~2.5x), and unpinned the scheduler chose differently with a busy
    agent, so L7 came out twice as fast as off. A ratio above 1.05 is printed as a
    broken run. Each placement runs once per CPU weighting (--weights, each its own
    series): "equal" - agent, client and server are tasks of one CPU group, as plain
    processes; "chart" - as a kubelet weights pods by their CPU requests (cgroup
    cpu.shares / cpu.weight, bench/cpu_shares.py): the agent's group at the chart's
    100m, the client's and server's at --workload-millicpu (default 1000m). Under
    contention a workload task that wakes then preempts the agent instead of queueing
    behind its drain. The agent gets --l7-perf-pages 16384 (an L7 ring buffer of 16384
    pages per CPU, 128 MiB on 2 CPUs: lossless runs; a paused run is bounded to what the
    ring holds). One client process (blocking socket,
    keep-alive, TCP_NODELAY) sends GETs back to back to an asyncio server (both this
    script, run with `ip netns exec`); every run is bounded in time and count. Also
    printed: the agent's CPU per request and the flows it produced per request.
(b) L7 events/s decoded by the agent's code in this process: L7Tracker.process (record
    decode, stream and seq tracking, HTTP/DNS parsing, pairing) and L7Encoder.encode
    (Flow wire bytes) on synthesized l7_events records (HTTP request+response pairs on
    many keep-alive connections; DNS query+answer pairs), in batches like the ingest's.
(d) --compare-agent DIR: the agent's CPU per L7 request of two agent code versions, at
    a paced rate both keep up with (--compare-rate), alternating agents in ABBA order:
    A runs with PYTHONPATH=DIR (a copy of another revision's services/agent named
    webb_agent, e.g. `git archive REV services/agent | tar -x -C DIR` then
    `mv DIR/services/agent DIR/webb_agent`), B is this checkout's; both load this
    checkout's bpf/. With --follow a batched follower reads every flow of both.
(c) Kernel-side cost (bpf_stats: the kernel's run-time accounting of BPF programs, on
    host-wide through an fd only for these runs): time inside the agent's TC programs
    per request and per program run, L4 (unselected port) vs L7 (selected port).

The lab (prefix "wlb", removed at the end, also on failure or Ctrl-C): node wlb-n1,
pods wlb-cli 10.244.1.10 and wlb-srv 10.244.1.11, one webb-agent with default flags.
WEBB_TEST_PREFIX_TAG=x gives the namespaces a tag (wlbx-...).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

L7_PORT, L4_PORT = 8080, 8081
# Where the client and the server run (CPU lists; empty: unpinned). On a machine with few
# CPUs a one-connection ping-pong's rate depends on this more than on anything measured:
# on one CPU a request is two context switches; on two, two cross-CPU wake-ups of a
# halted vCPU. The agent is never pinned.
PLACEMENTS = {"same": ("0", "0"), "split": ("0", "1"), "free": ("", "")}
# A ratio to "off" above this is noise at best, a placement change at worst: flagged.
IMPOSSIBLE = 1.05
ANNOTATION = "policy.cilium.io/proxy-visibility"
REQUEST = (b"GET /api/v1/items/42?page=1 HTTP/1.1\r\nHost: srv:%d\r\n"
           b"User-Agent: webb-l7-bench/1\r\nAccept: application/json\r\n\r\n")
BODY = b'{"id": 42, "name": "item"}\n'
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"\r\n" % len(BODY)) + BODY


# -- the traffic, run inside the pods' namespaces -----------------------------------------
class _Server(asyncio.Protocol):
    """Answers each complete GET head with RESPONSE (keep-alive, pipelining-safe)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            self.t.write(RESPONSE * n)  # type: ignore[attr-defined]


async def _serve(ports: list[int], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(_Server, "0.0.0.0", p) for p in ports]
    print("ready", flush=True)
    await asyncio.sleep(timeout)  # bounded: the bench kills it long before
    for s in servers:
        s.close()


def _client(host: str, port: int, seconds: float, max_requests: int, rate: float,
            cpus: str = "") -> None:
    """Back-to-back GETs on one connection, or paced at `rate` requests/s (0: as fast
    as the server answers); pinned to `cpus` ("0,1"; empty: where the scheduler likes)."""
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    req = REQUEST % port
    c = socket.create_connection((host, port), timeout=10)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    want = len(RESPONSE)
    n = 0
    t0 = time.monotonic()
    cpu0 = time.process_time()
    deadline = t0 + seconds
    while n < max_requests and time.monotonic() < deadline:
        if rate > 0:
            ahead = t0 + n / rate - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)
        c.sendall(req)
        got = 0
        while got < want:  # the server's answers have a fixed size
            chunk = c.recv(65536)
            if not chunk:
                raise SystemExit("server closed the connection")
            got += len(chunk)
        n += 1
    dt = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    c.close()
    print(json.dumps({"requests": n, "seconds": dt, "cpu": cpu}), flush=True)


# -- (b) in-process decode ------------------------------------------------------------------
def _frame(src: str, dst: str, sport: int, dport: int, proto: int, seq: int,
           payload: bytes) -> bytes:
    l4 = (struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x18, 65535, 0, 0)
          if proto == 6 else struct.pack("!HHHH", sport, dport, 8 + len(payload), 0))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4) + len(payload), 0, 0, 64, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + l4


def synthesize(kind: str, pairs: int, conns: int = 256) -> list[bytes]:
    """l7_events records as the kernel writes them: `pairs` request/answer pairs spread
    over `conns` connections (HTTP keep-alive, sequence numbers advancing) or sockets
    (DNS, distinct query ids), in time order."""
    from webb_agent.datapath.event import (L7_DNS, L7_HTTP, L7_RESPONSE_SIDE,
                                           POINT_FROM_ENDPOINT, POINT_TO_ENDPOINT, L7Event,
                                           pack_l7)
    from webb_agent.stores.endpoints import packed_ip

    cli, srv = "10.244.1.10", "10.244.1.11"
    seqs = [[1000, 5000] for _ in range(conns)]
    out = []
    ts = 1_000_000
    for i in range(pairs):
        c = i % conns
        sport = 20000 + c
        if kind == "http":
            msgs = ((REQUEST % L7_PORT, cli, srv, sport, L7_PORT, False),
                    (RESPONSE, srv, cli, L7_PORT, sport, True))
            proto, l7, point_req = 6, L7_HTTP, POINT_TO_ENDPOINT
        else:
            qid = i & 0xFFFF
            name = b"".join(bytes([len(p)]) + p for p in (b"svc%d" % (i % 500), b"ns", b"test"))
            q = struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + name + b"\0\0\x01\0\x01"
            a = (struct.pack("!6H", qid, 0x8180, 1, 1, 0, 0) + name + b"\0\0\x01\0\x01"
                 + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + bytes([10, 96, i % 250, 1]))
            msgs = ((q, cli, "10.96.0.10", sport, 53, False),
                    (a, "10.96.0.10", cli, 53, sport, True))
            proto, l7, point_req = 17, L7_DNS, POINT_FROM_ENDPOINT
        for j, (payload, s, d, sp, dp, answer) in enumerate(msgs):
            seq = seqs[c][j]
            seqs[c][j] += len(payload)
            hdr = _frame(s, d, sp, dp, proto, seq, payload)
            ev = L7Event(ts=ts, saddr=packed_ip(s), daddr=packed_ip(d), sport=sp, dport=dp,
                         ifindex=5, seq=seq if proto == 6 else 0, payload_len=len(payload),
                         payload_off=len(hdr), cap_len=len(hdr) + len(payload), family=4,
                         proto=proto, point=point_req if not answer else 1 - point_req,
                         l7=l7 | (L7_RESPONSE_SIDE if answer else 0), is_reply=int(answer),
                         tcp_flags=0x18 if proto == 6 else 0)
            out.append(pack_l7(ev, hdr + payload))
            ts += 20_000
    return out


def part_decode(pairs: int, batch: int) -> dict[str, float]:
    from webb_agent.stores.endpoints import Endpoint
    from webb_agent.pipeline.l7.encode import L7Encoder
    from webb_agent.pipeline.l7.fqdn import FQDNCache
    from webb_agent.pipeline.l7.tracker import L7Tracker

    print(f"\n== (b) L7 events decoded in-process ({pairs:,} pairs = {2 * pairs:,} events per "
          f"kind, batches of {batch}) ==")
    src = Endpoint("cli", "bench", (("app", "client"),), ("10.244.1.10",)).with_wire().wire
    dst = Endpoint("srv", "bench", (("app", "server"),), ("10.244.1.11",)).with_wire().wire
    res: dict[str, float] = {}
    for kind in ("http", "dns"):
        records = synthesize(kind, pairs)
        best: dict[str, float] = {}
        for _ in range(3):  # best of 3: the machine is shared
            fq = FQDNCache()
            tracker, enc = L7Tracker(fq), L7Encoder("n1", "bench", fqdn=fq)
            msgs = []
            t0 = time.perf_counter()
            for i in range(0, len(records), batch):
                msgs.extend(tracker.process(records[i:i + batch], 0))
            t1 = time.perf_counter()
            for k, m in enumerate(msgs):
                enc.encode(m, m.time_ns, f"u{k}", src, dst)
            t2 = time.perf_counter()
            if len(msgs) != len(records):
                raise RuntimeError(f"{kind}: {len(msgs)} messages from {len(records)} records: "
                                   f"{dict(tracker.counters)}")
            for key, v in (("process", t1 - t0), ("encode", t2 - t1), ("total", t2 - t0)):
                best[key] = min(best.get(key, v), v)
        n = len(records)
        print(f"{kind.upper():4}: tracker.process {1e6 * best['process'] / n:.1f} us/event, "
              f"encode {1e6 * best['encode'] / n:.1f} us/event; together "
              f"{n / best['total'] / 1000:.1f}k events/s = {1e6 * best['total'] / n:.1f} us/event "
              f"(one core, best of 3)")
        res[f"{kind}_us"] = 1e6 * best["total"] / n
        res[f"{kind}_rate"] = n / best["total"]
    return res


# -- the lab ----------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import agent_bench as ab
        from webb.netlab import NetLab

        self.ab = ab
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="webb-l7-bench-"))
        self.lab = NetLab("wlb" + os.environ.get("WEBB_TEST_PREFIX_TAG", "")[:2])
        self.agent = None
        self.server: subprocess.Popen | None = None
        self.selected = True  # the endpoints file as set-up writes it: port 8080 selected
        self.results: dict[str, object] = {}
        self.placement, self.client_cpus = "free", ""
        self.weights = "equal"
        self.shares = None
        if args.weights != ["none"]:
            from cpu_shares import CpuShares

            self.shares = CpuShares("l7" + os.environ.get("WEBB_TEST_PREFIX_TAG", "")[:2],
                                    args.workload_millicpu)
        # Lossless runs need a buffer that holds what arrives while the agent is not
        # reading (a paused run, a drain delayed by the client and server): the bench
        # gives the agent --l7-perf-pages unless --agent-arg names it.
        self.l7_pages = args.l7_perf_pages
        if "--l7-perf-pages" in args.agent_arg:
            self.l7_pages = int(args.agent_arg[args.agent_arg.index("--l7-perf-pages") + 1])
        else:
            args.agent_arg = [*args.agent_arg, "--l7-perf-pages", str(self.l7_pages)]

    def start_follower(self) -> None:
        """--follow: a batched GetFlows follow of every flow during the runs, as the relay
        keeps on each agent of a cluster (the agent then also encodes each L7 flow).
        It runs in this process, like a relay beside the agent on the node's CPUs."""
        import threading

        import grpc

        from webb.api.observer import observer_pb2
        from webb.api.stream import stream_pb2_grpc

        assert self.agent is not None
        self.followed = 0
        ch = grpc.insecure_channel(f"127.0.0.1:{self.agent.port}")
        self._follow_call = stream_pb2_grpc.FlowStreamStub(ch).GetFlowBatches(
            observer_pb2.GetFlowsRequest(follow=True))

        def read() -> None:
            try:
                for b in self._follow_call:
                    self.followed += len(b.responses)
            except grpc.RpcError:
                pass  # cancelled at teardown
        self._follow_thread = threading.Thread(target=read, daemon=True)
        self._follow_thread.start()

    def setup(self) -> None:
        lab = self.lab
        lab.cleanup()  # what a crashed earlier run left
        if self.shares is not None:
            self.shares.setup()  # before the server starts: it is the workload
        node = self.node = lab.add_node("n1", 1)
        self.cli = lab.add_pod(node, "cli", 10)
        self.srv = lab.add_pod(node, "srv", 11)
        self.server = lab.popen(self.srv.netns, sys.executable, __file__, "_server",
                                str(L7_PORT), str(L4_PORT), stdout=subprocess.PIPE, text=True)
        if self.server.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
            raise RuntimeError("the bench's HTTP server did not start")
        self.endpoints = self.tmp / "endpoints.yaml"
        self.write_endpoints(True)
        self.agent = self.ab.Agent(self.tmp, node.netns, self.endpoints, self.args.agent_arg)
        t = self.agent.start()
        self.wait_attached(True)
        print(f"agent pid {self.agent.pid} healthy after {t:.1f} s; attached to "
              f"{self.cli.host_if}, {self.srv.host_if}; server {self.srv.ip4} ports "
              f"{L7_PORT} (L7-visible) and {L4_PORT} (not selected)")
        if self.args.follow:
            self.start_follower()
            print("a batched follower reads every flow during the runs (--follow)")
        if self.args.spin:
            self.start_spinners()
            print("a SCHED_IDLE spinner on each CPU during every run (--spin): no vCPU halts")

    def start_spinners(self) -> None:
        """--spin: a SCHED_IDLE busy loop on each CPU for the whole run (every mode alike):
        a vCPU with nothing else to run spins instead of halting, so a cross-CPU wake-up
        costs the same whether or not the agent happens to keep the other CPU busy.
        SCHED_IDLE runs only when nothing else wants the CPU."""
        def idle_on(cpu: int) -> Callable[[], None]:
            def pre() -> None:
                os.sched_setaffinity(0, {cpu})
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return pre
        self.spinners = [subprocess.Popen(["sh", "-c", "while :; do :; done"],
                                          preexec_fn=idle_on(c))
                         for c in range(os.cpu_count() or 1)]

    def teardown(self) -> None:
        for sp in getattr(self, "spinners", []):
            sp.kill()
            sp.wait(5)
        if getattr(self, "_follow_call", None) is not None:
            self._follow_call.cancel()
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait(5)
        if self.agent is not None:
            try:
                self.agent.stop()
            except Exception as e:  # keep tearing down
                print(f"stopping agent: {e}", file=sys.stderr)
        self.lab.cleanup()
        if self.shares is not None:
            self.shares.teardown()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write_endpoints(self, attached: bool, selected: bool = True) -> None:
        import agent_bench as ab

        ab.write_bench_endpoints(
            self.endpoints, (self.cli, self.srv) if attached else (),
            {self.srv.name: {ANNOTATION: f"<Ingress/{L7_PORT}/TCP/HTTP>"}} if selected else {})

    def tc_filters(self) -> int:
        import agent_bench as ab

        return ab.tc_filter_count(self.lab, (self.cli, self.srv))

    def wait_attached(self, want: bool, timeout: float = 20) -> None:
        assert self.agent is not None
        names = {self.cli.name, self.srv.name}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            att = self.agent.attached()
            if ((names <= att) if want else not (names & att)) and \
                    self.tc_filters() == (4 if want else 0):
                return
            time.sleep(0.1)
        raise RuntimeError(f"agent did not {'attach' if want else 'detach'} in {timeout} s")

    def set_mode(self, mode: str) -> None:
        """L7 selection of the server's port on ("L7") or off ("off"), both attached;
        returns once a probe shows the selection in effect (readiness, not a sleep)."""
        want = mode == "L7"
        if self.selected == want:
            return
        self.write_endpoints(True, selected=want)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = self.client_run(L7_PORT, 0.2, max_requests=50)
            per_req = r["l7_events"] / max(r["requests"], 1)
            if (per_req >= 1.5) if want else (per_req == 0):
                self.selected = want
                return
        raise RuntimeError(f"the agent did not turn L7 selection {'on' if want else 'off'}")

    def settle(self, timeout: float = 30.0) -> None:
        """Waits until the agent has drained what the last run made it read, so that
        one run's backlog is not counted in the next: its flow count unchanged and its
        CPU below 10 % over a quarter second (a paused run's backlog is processed in
        long drains during which the count does not move)."""
        assert self.agent is not None
        ab = self.ab
        last, deadline = self.agent.progress(), time.monotonic() + timeout
        cpu = ab.proc_cpu_s(self.agent.pid)
        while time.monotonic() < deadline:
            time.sleep(0.25)
            cur, cpu1 = self.agent.progress(), ab.proc_cpu_s(self.agent.pid)
            if cur == last and cpu1 - cpu < 0.025:
                return
            last, cpu = cur, cpu1

    def counters(self) -> dict[str, int]:
        from webb.api.admin import admin_pb2

        assert self.agent is not None
        return dict(self.agent.admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=5).counters)

    def client_run(self, port: int, seconds: float, rate: float = 0,
                   max_requests: int = 0, paused: bool = False) -> dict[str, float]:
        """One client run. paused: the agent is stopped (SIGSTOP) for the run and resumed
        after it, so the run pays the datapath's capture (TC programs, ring writes) but
        none of the agent's user-space work, which happens after the run."""
        assert self.agent is not None
        ab = self.ab
        self.settle()
        seen0, c0 = self.agent.progress(), self.counters()
        assert self.server is not None
        cpu0, busy0 = ab.proc_cpu_s(self.agent.pid), ab.busy_s()
        srv0 = ab.proc_cpu_s(self.server.pid)
        if paused:
            os.kill(self.agent.pid, signal.SIGSTOP)
        try:
            out = self.lab.exec(self.cli.netns, sys.executable, __file__, "_client",
                                self.srv.ip4, str(port), str(seconds),
                                str(max_requests or self.args.max_requests), str(rate),
                                self.client_cpus, timeout=seconds + 30).stdout
        finally:
            if paused:
                os.kill(self.agent.pid, signal.SIGCONT)
        r = json.loads(out)
        busy = ab.busy_s() - busy0
        r["server_cpu"] = ab.proc_cpu_s(self.server.pid) - srv0
        self.settle()  # the agent's CPU for this run includes draining its backlog
        c1 = self.counters()
        r["agent_cpu"] = ab.proc_cpu_s(self.agent.pid) - cpu0
        r["busy"] = busy
        r["flows"] = self.agent.progress() - seen0
        r["rate"] = r["requests"] / r["seconds"]
        r["lost"] = c1.get("datapath.lost_events", 0) - c0.get("datapath.lost_events", 0)
        r["l7_events"] = c1.get("datapath.l7_events", 0) - c0.get("datapath.l7_events", 0)
        return r

    def pin(self, placement: str) -> None:
        """Pins the client (the next runs) and the server (now, every thread) to the
        placement's CPUs; the agent is never pinned, as in production."""
        cli, srv = PLACEMENTS[placement]
        self.placement, self.client_cpus = placement, cli
        assert self.server is not None
        cpus = {int(c) for c in srv.split(",")} if srv else set(range(os.cpu_count() or 1))
        for tid in os.listdir(f"/proc/{self.server.pid}/task"):
            os.sched_setaffinity(int(tid), cpus)

    def part_http(self) -> None:
        for weights in self.args.weights:
            if self.shares is not None:
                assert self.agent is not None
                self.shares.place_agent(self.agent.pid, weights)
                print(f"\n== CPU weights {weights!r}: {self.shares.describe(weights)} ==")
            self.weights = weights
            for placement in self.args.placements:
                self.pin(placement)
                self.http_placement(placement)
        self.pin("free")
        if self.shares is not None and self.agent is not None:
            self.shares.place_agent(self.agent.pid, "equal")  # the other parts as before

    def http_placement(self, placement: str) -> None:
        a = self.args
        cli, srv = PLACEMENTS[placement]
        where = ("unpinned: wherever the scheduler puts them" if not cli else
                 f"client on CPU {cli}, server on CPU {srv}")
        print(f"\n== (a) placement {placement!r} ({where}; the agent unpinned): HTTP "
              f"requests/s, one keep-alive connection to port {L7_PORT}, L7 selection off vs "
              f"on, {a.seconds:g} s runs, {a.rounds} rounds of ABBA ==")
        # "L7 paused": selected, but the agent is stopped during the run (it drains after
        # it): what the datapath's capture costs the client, without the agent's CPU.
        modes = ("off", "L7", "L7 paused") if a.paused else ("off", "L7")
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        self.client_run(L7_PORT, 0.5)  # warm-up: server, page cache, the agent's first flows
        for r in range(a.rounds):
            # A B B A, then B A A B: each mode runs first and last equally often.
            ab_order = modes if r % 2 == 0 else modes[::-1]
            for m in (*ab_order, *ab_order[::-1]):
                self.set_mode("off" if m == "off" else "L7")
                paused = m == "L7 paused"
                # a paused run's events wait in the L7 ring buffer: bound the run to
                # what it holds, so that none is lost
                cap = self.paused_max_requests() if paused else 0
                runs[m].append(self.client_run(L7_PORT, a.seconds, paused=paused,
                                               max_requests=cap))
        self.set_mode("L7")
        med = {m: {k: statistics.median(x[k] for x in runs[m]) for k in runs[m][0]} for m in modes}
        for m in modes:
            reqs = med[m]["requests"]
            rates = " ".join(f"{x['rate']:.0f}" for x in runs[m])
            print(f"{m:>9}: {rates} req/s "
                  f"(median {med[m]['rate']:.0f}); client {1e6 * med[m]['cpu'] / reqs:.1f} us, "
                  f"server {1e6 * med[m]['server_cpu'] / reqs:.1f} us CPU/req; agent "
                  f"{1e6 * med[m]['agent_cpu'] / reqs:.1f} us CPU/req, "
                  f"{med[m]['l7_events'] / reqs:.2f} L7 events/req, "
                  f"{med[m]['flows'] / reqs:.2f} flows/req, {med[m]['lost'] / reqs:.3f} "
                  f"events lost/req; machine busy "
                  f"{100 * med[m]['busy'] / med[m]['seconds'] / (os.cpu_count() or 1):.0f} %")
        off, l7 = med["off"]["rate"], med["L7"]["rate"]
        pairs = [b["rate"] / a_["rate"] for a_, b in zip(runs["off"], runs["L7"])]
        print(f"-> L7/off = {l7 / off:.3f} ({100 * (1 - l7 / off):+.1f} % requests/s lost to L7 "
              f"visibility; goal <= 5 %); per ABBA pair {' '.join(f'{x:.3f}' for x in pairs)}")
        ratios = {"L7/off": l7 / off}
        if "L7 paused" in med:
            p = med["L7 paused"]["rate"]
            ratios["L7 paused/off"] = p / off
            print(f"-> L7 paused/off = {p / off:.3f}: the datapath's share of the cost; "
                  f"L7/L7 paused = {l7 / p:.3f}: the agent's user-space share")
        # Selection adds work to every request and takes none away: a mode faster than
        # off by more than noise means the runs did not measure the same thing.
        broken = {k: v for k, v in ratios.items() if v > IMPOSSIBLE}
        if broken:
            print(f"   BROKEN RUN: {', '.join(f'{k} {v:.3f}' for k, v in broken.items())} > "
                  f"{IMPOSSIBLE}: a selected port cannot be faster than the same port "
                  f"unselected; the ratio is not a measurement")
        sel = [x for m in modes if m != "off" for x in runs[m]]
        honest = all(x["l7_events"] >= 1.9 * x["requests"] and not x["lost"] for x in sel)
        print(f"   every L7 run read ~2 L7 events per request with none lost: "
              f"{'yes' if honest else 'NO: the ratio does not measure full L7 visibility'}")
        per = {m: 1e6 * med[m]["agent_cpu"] / med[m]["requests"] for m in modes}
        print(f"-> agent CPU per request: L7 {per['L7']:.1f} us vs off {per['off']:.1f} us")
        c = self.counters()
        bad = {k: v for k, v in c.items() if v and ("unparsable" in k or "truncated" in k
                                                    or "unmatched" in k)}
        print(f"   agent counters: {c.get('l7.http_requests', 0):,} requests, "
              f"{c.get('l7.http_responses', 0):,} responses paired, lost "
              f"{c.get('datapath.lost_events', 0)}; not parsed: {bad or 'none'}")
        http = self.results.setdefault("http", {})
        key = placement if self.shares is None else f"{placement}, weights {self.weights}"
        http[key] = (off, l7, honest, not broken, per["L7"])  # type: ignore[index]

    def paused_max_requests(self) -> int:
        """Requests whose L7 records fit in 80 % of the L7 ring buffer (one for all CPUs,
        --l7-perf-pages x CPUs rounded up to a power of two; a request and its answer
        are ~2 x 260 bytes; 600 leaves a margin)."""
        from webb_agent.datapath.loader import l7_ring_pages, possible_cpus

        pages = l7_ring_pages(self.l7_pages, possible_cpus())
        return min(self.args.max_requests, int(0.8 * pages * 4096 / 600))

    def part_paced(self) -> None:
        """How many requests/s of one L7-visible connection the agent reads without loss."""
        print(f"\n== (a2) L7 mode paced: the highest request rate read with 0 lost events "
              f"({self.args.seconds:g} s per step) ==")
        self.set_mode("L7")
        best = 0.0
        for rate in self.args.rates:
            r = self.client_run(L7_PORT, self.args.seconds, rate)
            reqs = max(r["requests"], 1)
            cpu = r["agent_cpu"] / r["seconds"]
            print(f"offered {rate:>6.0f} req/s: done {r['rate']:.0f} req/s, L7 events "
                  f"{r['l7_events'] / reqs:.2f}/req, flows {r['flows'] / reqs:.2f}/req, lost "
                  f"{r['lost']}, agent {100 * cpu:.0f} % CPU "
                  f"({1e6 * r['agent_cpu'] / reqs:.1f} us/req)")
            if r["lost"]:
                break
            if r["rate"] < 0.9 * rate:
                print("   (the client could not keep the rate: the machine is the limit)")
                break
            best = r["rate"]
        print(f"-> highest rate with 0 lost: {best:.0f} req/s = {2 * best:.0f} L7 events/s")
        self.results["paced"] = best

    def restart_agent(self, pythonpath: str | None) -> None:
        """A fresh agent on the same lab (PYTHONPATH=pythonpath: other agent code)."""
        assert self.agent is not None
        if getattr(self, "_follow_call", None) is not None:
            self._follow_call.cancel()
            self._follow_call = None
        self.agent.stop()
        log_from = self.agent.log.stat().st_size if self.agent.log.exists() else 0
        env = {"WEBB_BPF_DIR": str(HERE.parent / "bpf")}
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "WEBB_BPF_DIR")}
        os.environ.update(env)  # ab.Agent's Popen inherits this process's environment
        if not pythonpath:
            os.environ.pop("PYTHONPATH", None)
        try:
            self.agent = self.ab.Agent(self.tmp, self.node.netns, self.endpoints,
                                       self.args.agent_arg)
            self.agent.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.wait_attached(True)
        print(f"   agent ({pythonpath or 'this checkout'}): {self.agent_paths(log_from)}")
        if self.args.follow:
            self.start_follower()

    def agent_paths(self, log_from: int = 0) -> str:
        """Which L7 head scanner and L7 ring reader the agent runs (C or Python), from
        what it logged since log_from (agents older than these lines log neither)."""
        import re

        assert self.agent is not None
        with open(self.agent.log, "rb") as f:
            f.seek(log_from)
            text = f.read().decode(errors="replace")
        found = re.findall(r"L7 HTTP head scanner: \w+|L7 perf buffer read by [\w' ]+|"
                           r"L7 ring buffer: .* read in \w+", text)
        return ", ".join(found) or "neither logged (older code)"

    def part_compare(self) -> None:
        a = self.args
        rate = a.compare_rate
        print(f"\n== (d) agent CPU per L7 request, {a.compare_agent} (A) vs this checkout (B), "
              f"{rate:g} req/s paced, {a.seconds:g} s runs, {a.rounds} rounds of ABBA"
              f"{', a follower reading every flow' if a.follow else ''} ==")
        self.set_mode("L7")
        runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        for _ in range(a.rounds):
            for m in "ABBA":
                self.restart_agent(a.compare_agent if m == "A" else None)
                self.client_run(L7_PORT, 1.0, rate=rate)  # warm-up: first flows, caches
                r = self.client_run(L7_PORT, a.seconds, rate=rate)
                r["us"] = 1e6 * r["agent_cpu"] / max(r["requests"], 1)
                runs[m].append(r)
                print(f"{m}: {r['rate']:.0f} req/s, agent {r['us']:.1f} us CPU/req, "
                      f"{r['l7_events'] / max(r['requests'], 1):.2f} L7 events/req, "
                      f"lost {r['lost']}")
        med = {m: statistics.median(x["us"] for x in runs[m]) for m in runs}
        pairs = [b["us"] / x["us"] for x, b in zip(runs["A"], runs["B"])]
        lost = sum(x["lost"] for m in runs for x in runs[m])
        print(f"-> agent CPU per request: A {med['A']:.1f} us, B {med['B']:.1f} us; B/A "
              f"{statistics.median(pairs):.3f} (pairs {' '.join(f'{x:.2f}' for x in pairs)})"
              f"{'' if not lost else f'; {lost} events lost: a rate too high to compare'}")
        self.results["compare"] = (med["A"], med["B"])
        self.restart_agent(None)

    def part_kernel(self) -> None:
        ab = self.ab
        assert self.agent is not None
        print(f"\n== (c) time inside the TC programs (bpf_stats), {self.args.seconds:g} s per "
              f"run, best of 2 ==")
        self.set_mode("L7")
        res = {}
        for m, port in (("L4", L4_PORT), ("L7", L7_PORT), ("L4", L4_PORT), ("L7", L7_PORT)):
            fd = ab.enable_bpf_stats()
            try:
                t0, n0 = ab.tc_prog_stats(self.agent.pid)
                r = self.client_run(port, self.args.seconds)
                t1, n1 = ab.tc_prog_stats(self.agent.pid)
            finally:
                os.close(fd)
            per_req, per_run = (t1 - t0) / r["requests"], (t1 - t0) / max(n1 - n0, 1)
            runs_per_req = (n1 - n0) / r["requests"]
            if m not in res or per_req < res[m][0]:
                res[m] = (per_req, per_run, runs_per_req)
        for m in ("L4", "L7"):
            per_req, per_run, runs = res[m]
            print(f"{m}: {per_req:.0f} ns per request inside the programs ({runs:.1f} program "
                  f"runs per request, {per_run:.0f} ns per run)")
        d = res["L7"][0] - res["L4"][0]
        print(f"-> selection costs +{d:.0f} ns per request in the kernel "
              f"(the two payload packets that go to user space: ~{d / 2:.0f} ns each; the "
              f"rest of the packets of a selected direction only test one byte)")
        self.results["kernel"] = (res["L4"][0], res["L7"][0])


def _weights(text: str) -> list[str]:
    """--weights: a list of equal and chart, or none alone. Anything else was run as
    "equal" and reported under its own name (and described as "chart")."""
    got = text.split(",")
    if got == ["none"] or (got and set(got) <= {"equal", "chart"}):
        return got
    raise argparse.ArgumentTypeError(
        f"{text!r}: a comma-separated list of equal and chart, or none alone")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_server":
        asyncio.run(_serve([int(p) for p in sys.argv[2:]], 600))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        _client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]),
                float(sys.argv[6]), sys.argv[7] if len(sys.argv) > 7 else "")
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=2.0, help="length of each client run")
    p.add_argument("--rounds", type=int, default=4, help="rounds of the three modes in (a)")
    p.add_argument("--max-requests", type=int, default=200_000, help="bound of a client run")
    p.add_argument("--pairs", type=int, default=20_000, help="request/answer pairs in (b)")
    p.add_argument("--batch", type=int, default=512, help="records per tracker batch in (b)")
    p.add_argument("--agent-arg", action="append", default=[],
                   help="extra webb-agent flag (repeatable)")
    p.add_argument("--follow", action="store_true",
                   help="a batched GetFlows follow reads every flow, as a relay would")
    p.add_argument("--placements", type=lambda s: s.split(","), default=["same", "split"],
                   help="(a): CPU placements of client and server, of " + ",".join(PLACEMENTS)
                   + " (free = unpinned, the old broken way; default same,split)")
    p.add_argument("--weights", type=_weights, default=["equal", "chart"],
                   help="(a): CPU weights of agent and workload (cgroup cpu.shares or "
                        "cpu.weight, as a kubelet sets them from CPU requests), each its own "
                        "series: equal (one group, as plain processes), chart (the agent "
                        "at the chart's 100m request, the workload at --workload-millicpu); "
                        "none: no cgroups at all. Default equal,chart")
    p.add_argument("--workload-millicpu", type=int, default=1000,
                   help="the workload's (client's and server's) CPU request for the chart "
                        "weights, in millicpu (default 1000)")
    p.add_argument("--spin", action="store_true",
                   help="(a): a SCHED_IDLE busy loop on each CPU for the whole run, so that "
                        "vCPUs never halt (cross-CPU wake-ups then cost the same in every mode)")
    p.add_argument("--l7-perf-pages", type=int, default=16384,
                   help="the agent's L7 ring buffer pages per CPU (default 16384 = 64 MiB: "
                        "lossless runs; ignored if --agent-arg names it)")
    p.add_argument("--no-paused", dest="paused", action="store_false",
                   help="(a) without the third mode, L7 with the agent stopped during runs")
    p.add_argument("--skip", type=lambda s: s.split(","), default=[],
                   help="parts to skip: http,paced,decode,kernel")
    p.add_argument("--compare-agent", default="", metavar="DIR",
                   help="(d): PYTHONPATH of other agent code (DIR/webb_agent) to compare with")
    p.add_argument("--compare-rate", type=float, default=5000,
                   help="(d): paced request rate, req/s (both agents must keep up)")
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                   default=[1000, 2000, 4000, 6000, 8000, 10000, 14000],
                   help="request rates of (a2), req/s")
    args = p.parse_args()
    if args.spin and "chart" in args.weights:
        # A SCHED_IDLE loop still belongs to a cgroup, whose share it takes whole: inside
        # the workload's group the agent's group gets only its own share (the agent
        # starved: GetNodes timed out); outside both, off ran slower than L7 paused.
        p.error("--spin cannot run with --weights chart: the loops would take the "
                "groups' shares and the ratio would not measure the agent; use "
                "--weights equal (or none) with --spin")
    import agent_bench as ab

    print(f"machine: {ab.machine()}; load average {open('/proc/loadavg').read().split()[0]}")
    results: dict[str, object] = {}
    if "decode" not in args.skip:
        results["decode"] = part_decode(args.pairs, args.batch)
    if {"http", "paced", "kernel"} <= set(args.skip) and not args.compare_agent:
        return
    if os.geteuid() != 0:
        sys.exit("parts (a) and (c) need root (network namespaces, eBPF): "
                 "--skip http,paced,kernel")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    b = Bench(args)
    t0 = time.monotonic()
    try:
        b.setup()
        if "http" not in args.skip:
            b.part_http()
        if "paced" not in args.skip:
            b.part_paced()
        if args.compare_agent:
            b.part_compare()
        if "kernel" not in args.skip:
            b.part_kernel()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
    finally:
        b.teardown()
        print(f"(lab parts took {time.monotonic() - t0:.0f} s)")
    results.update(b.results)
    print("\n== summary ==")
    print(f"machine: {ab.machine()}")
    if "decode" in results:
        d: dict[str, float] = results["decode"]  # type: ignore[assignment]
        print(f"agent decode+encode: HTTP {d['http_rate'] / 1000:.0f}k events/s "
              f"({d['http_us']:.1f} us/event), DNS {d['dns_rate'] / 1000:.0f}k events/s "
              f"({d['dns_us']:.1f} us/event) on one core")
    if "http" in results:
        for placement, (off, l7, honest, sane, agent_us) in results["http"].items():  # type: ignore[attr-defined]
            print(f"HTTP req/s on one connection to port {L7_PORT}, placement {placement}: "
                  f"L7 selection off {off:.0f}, on {l7:.0f}; L7/off {l7 / off:.3f} (goal >= 0.95)"
                  f"; agent {agent_us:.1f} us CPU/req"
                  f"{'' if honest else ' -- L7 runs lost events: not a full-visibility figure'}"
                  f"{'' if sane else ' -- BROKEN RUN (a ratio > %g)' % IMPOSSIBLE}")
    if "paced" in results:
        print(f"L7 without loss: {results['paced']:.0f} req/s on one connection "
              f"({2 * results['paced']:.0f} L7 events/s)")  # type: ignore[operator]
    if "compare" in results:
        ca, cb = results["compare"]  # type: ignore[misc]
        print(f"agent CPU per L7 request at {args.compare_rate:g} req/s: {args.compare_agent} "
              f"{ca:.1f} us, this checkout {cb:.1f} us (medians' ratio {cb / ca:.3f})")
    if "kernel" in results:
        k4, k7 = results["kernel"]  # type: ignore[misc]
        print(f"kernel: {k4:.0f} ns (L4) vs {k7:.0f} ns (L7) per request inside the TC programs")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Agent memory over a long run with L7 (HTTP) and DNS traffic: the demo's cluster at a
given request rate, RSS of every webb process over time, and whether each agent meets
issue 16's target (<= 150 MiB with a full 65,535-flow ring, flat once the ring is full).
Prints figures; asserts nothing.

Run as root from the repository:  .venv/bin/python bench/agent_memory_bench.py
(default 10 minutes at --rate 40, ~900 flows/s per node; --minutes, --rate, --interval)

What it runs: `webb demo` as a real process (two nodes, bookinfo with its HTTP calls
between pods, each call on a new connection after a DNS lookup, the relay, exporter
and UI following the agents, flow history on disk), on free ports, with its own
namespace prefix (wbm + WEBB_TEST_PREFIX_TAG), stopped with SIGINT and cleaned with
`webb demo clean` at the end, also on failure or Ctrl-C.

Every --interval seconds, per agent: VmRSS (anon/file), the ring's fill
(ServerStatus num_flows/max_flows), flows seen, and from webb.admin GetStatus the L7
counters (HTTP requests, DNS queries) and what bounded state evicted; RSS of the
relay, exporter and UI beside. At the end, per agent: RSS when the ring became full,
the highest after, the slope after it (least squares, MiB per minute) and the
verdict: target met when the highest RSS with a full ring is <= 150 MiB, flat when the
slope is below --flat-slope (0.25 MiB/min: the issue's growth was 1-2 MiB/min).
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from webb.api.admin import admin_pb2, admin_pb2_grpc  # noqa: E402
from webb.api.observer import observer_pb2, observer_pb2_grpc  # noqa: E402

BIN = Path(sys.executable).parent
PREFIX = "wbm" + os.environ.get("WEBB_TEST_PREFIX_TAG", "")[:2]
TARGET_MIB = 150.0
COMPONENTS = ("webb-agent", "webb-relay", "webb-metrics", "webb-ui")
# GetStatus counters worth a column: traffic that reached L7, and bounded state.
L7_KEYS = ("l7.http_requests", "l7.dns_queries")
EVICT_KEYS = ("l7.http_evicted_requests", "l7.dns_evicted_queries", "l7.fqdn_evicted",
              "l7.tcp_stream_marks_evicted", "l7.tcp_stream_marks_expired")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_mem(pid: int) -> dict[str, float]:
    out = {}
    for line in open(f"/proc/{pid}/status"):
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    return out


def children(pid: int) -> dict[str, int]:
    """The demo's webb processes: name (agent-n1, relay, ...) -> pid."""
    out = {}
    for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                            text=True).stdout.split():
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        prog = Path(argv[1].decode()).name if len(argv) > 1 else ""
        if prog not in COMPONENTS:
            continue
        name = prog[len("webb-"):]
        if prog == "webb-agent":
            name += "-" + argv[argv.index(b"--node-name") + 1].decode()
        out[name] = int(p)
    return out


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB), in MiB per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 60 * sum((t - mt) * (v - mv) for t, v in points) / den if den else 0.0


class AgentProbe:
    def __init__(self, sock: Path) -> None:
        self.channel = grpc.insecure_channel(f"unix://{sock}")
        self.observer = observer_pb2_grpc.ObserverStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)

    def sample(self) -> dict[str, int]:
        st = self.observer.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=10)
        c = self.admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=10).counters
        out = {"num_flows": st.num_flows, "max_flows": st.max_flows, "seen": st.seen_flows}
        out.update({k: int(c.get(k, 0)) for k in (*L7_KEYS, *EVICT_KEYS)})
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the run")
    p.add_argument("--rate", type=float, default=40.0, help="demo productpage requests/s")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--flat-slope", type=float, default=0.25,
                   help="MiB/min below which RSS after the ring filled counts as flat")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("agent_memory_bench.py needs root (network namespaces, eBPF)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    work = Path(tempfile.mkdtemp(prefix="webb-mem-bench-"))
    state = work / "state"
    ports = {k: free_port() for k in ("agent", "relay", "metrics", "ui")}
    cmd = [str(BIN / "webb"), "demo", "--state-dir", str(state), "--prefix", PREFIX,
           "--agent-port", str(ports["agent"]), "--relay-port", str(ports["relay"]),
           "--metrics-port", str(ports["metrics"]), "--ui-port", str(ports["ui"]),
           "--rate", str(args.rate), "--duration", str(int(args.minutes * 60 + 300))]
    print(f"load average {open('/proc/loadavg').read().split()[0]} before; demo at "
          f"--rate {args.rate:g} for {args.minutes:g} min, samples every {args.interval:g} s")
    log = open(work / "demo.log", "wb")
    demo = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    series: dict[str, list[tuple[float, dict[str, float]]]] = {}
    probes: dict[str, AgentProbe] = {}
    try:
        deadline = time.monotonic() + 180
        while not (state / "ready").exists():
            if demo.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the demo did not start:\n"
                                 f"{(work / 'demo.log').read_text()[-3000:]}")
            time.sleep(0.5)
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        header_done = False
        while time.monotonic() < end:
            now = time.monotonic() - t0
            procs = children(demo.pid)
            row: list[str] = [f"{now / 60:5.1f} min", f"load {os.getloadavg()[0]:4.1f}"]
            for name, pid in sorted(procs.items()):
                try:
                    m: dict[str, float] = proc_mem(pid)
                except OSError:
                    continue
                if name.startswith("agent-"):
                    node = name[len("agent-"):]
                    probe = probes.setdefault(name, AgentProbe(state / f"{node}.sock"))
                    try:
                        m.update(probe.sample())
                    except grpc.RpcError as e:
                        print(f"   ({name}: status failed: {e.code().name})")
                    fill = f"{int(m.get('num_flows', 0))}/{int(m.get('max_flows', 0))}"
                    row.append(f"{name} {m['VmRSS']:.0f} MiB (anon {m['RssAnon']:.0f}) "
                               f"ring {fill} http {int(m.get('l7.http_requests', 0))} "
                               f"dns {int(m.get('l7.dns_queries', 0))}")
                else:
                    row.append(f"{name} {m['VmRSS']:.0f}")
                series.setdefault(name, []).append((now, m))
            if not header_done:
                print("time, load, then per agent: RSS (anon), ring fill, HTTP requests and "
                      "DNS queries read at L7; relay/metrics/ui RSS in MiB")
                header_done = True
            print("  ".join(row), flush=True)
            time.sleep(max(0.0, min(args.interval, end - time.monotonic())))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
    finally:
        for pr in probes.values():
            pr.channel.close()
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)
            try:
                demo.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait(10)
        subprocess.run([str(BIN / "webb"), "demo", "--state-dir", str(state), "--prefix",
                        PREFIX, "clean"], capture_output=True, timeout=120)
    summary(series, args.flat_slope)
    print(f"load average {open('/proc/loadavg').read().split()[0]} after "
          f"(the machine is shared; RSS does not depend on load, rates do)")
    subprocess.run(["rm", "-rf", str(work)])


def summary(series: dict[str, list[tuple[float, dict[str, float]]]], flat: float) -> None:
    print("\n== summary (issue 16: <= 150 MiB with a full 65,535-flow ring, flat once full) ==")
    for name, pts in sorted(series.items()):
        if not name.startswith("agent-"):
            rss = [m["VmRSS"] for _, m in pts]
            if rss:
                print(f"{name}: RSS {rss[0]:.0f} -> {rss[-1]:.0f} MiB (max {max(rss):.0f})")
            continue
        full = [(t, m) for t, m in pts
                if m.get("max_flows") and m.get("num_flows", 0) >= m["max_flows"]]
        if not full:
            last = pts[-1][1] if pts else {}
            print(f"{name}: the ring never filled ({int(last.get('num_flows', 0))}/"
                  f"{int(last.get('max_flows', 0))}): run longer or at a higher --rate")
            continue
        t_full, m_full = full[0]
        top = max(m["VmRSS"] for _, m in full)
        slope = slope_per_min([(t, m["VmRSS"]) for t, m in full])
        last = full[-1][1]
        evicted = {k.split(".", 1)[1]: int(last.get(k, 0)) for k in EVICT_KEYS if last.get(k)}
        print(f"{name}: ring full at {t_full / 60:.1f} min with {m_full['VmRSS']:.0f} MiB; "
              f"highest after {top:.0f} MiB, slope {slope:+.2f} MiB/min over "
              f"{(full[-1][0] - t_full) / 60:.1f} min; L7 seen: {int(last.get('l7.http_requests', 0))} "
              f"HTTP requests, {int(last.get('l7.dns_queries', 0))} DNS queries; "
              f"evicted: {evicted or 'nothing'}")
        print(f"   target <= {TARGET_MIB:.0f} MiB: {'met' if top <= TARGET_MIB else 'MISSED'} "
              f"(ratio {top / TARGET_MIB:.2f}); flat: "
              f"{'yes' if abs(slope) < flat else 'NO'} (|slope| < {flat} MiB/min)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Policy benchmark: the per-packet cost of network policy in the datapath, measured as
throughput through a policed veth against an unpoliced one, in the same run.

Run as root from the repository:  .venv/bin/python bench/policy_bench.py   (about 1 min;
--help for options)

What it builds (prefix "wpb", removed at the end, also on failure or Ctrl-C): node wpb-n1
with three pods, wpb-cli (the sender, 10.244.1.10), wpb-free (10.244.1.11, selected by no
policy) and wpb-pol (10.244.1.12, default deny at ingress: a CiliumNetworkPolicy allows
wpb-cli on UDP 5000-5063, plus --filler policies that select wpb-pol with CIDR and port
range rules, so that the LPM tries hold thousands of entries as in a busy cluster). One
webb-agent with default flags watches all three. Traffic is bench/udpgen.c (gcc into a
temporary directory): a sink receives in each server pod, the sender runs in wpb-cli.

Modes, each alternating A (to wpb-free) and B (to wpb-pol) in ABBA order:
  single   one long-lived flow: the established path (B: one ep_map lookup and a
           revision check more than A; the verdict is cached per direction)
  churn    every datagram a new flow direction (raw socket, never-used 5-tuples): B
           runs the full policy lookup (ipcache + deny and allow LPM tries) and emits a
           policy-verdict event besides the trace events
  denied   one flow to a port no rule allows (B only; A is the same flow to wpb-free):
           every packet is looked up in full and dropped, aggregated in drop_map
Per run: packets/s received (the sink's count; for denied, sent), the sender's CPU per
packet (on a veth the sending CPU runs the whole path in softirq), and, in one extra
1-s run per side with the kernel's BPF run-time accounting on, ns per program run of
the TC programs (two runs per packet: from-endpoint at wpb-cli's veth, to-endpoint at
the server's; only the second one differs between A and B).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import yaml  # noqa: E402

import agent_bench as ab  # noqa: E402  (helpers: the agent, BPF stats, CPU accounting)
from webb.api.admin import admin_pb2  # noqa: E402
from webb.netlab import NetLab  # noqa: E402

PREFIX = "wpb"
PAYLOAD = 22  # 64-byte frames
SINK_PORT, SINK_PORTS = 5000, 64
DENIED_PORT = 6000

POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pol-from-cli, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: pol}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: cli}}]
    toPorts:
    - ports: [{port: "5000", endPort: 5063, protocol: UDP}]
"""


def filler(i: int) -> str:
    """A policy selecting wpb-pol with 8 CIDRs (one with an except) and 4 port ranges."""
    a, b = divmod(i, 250)
    cidrs = "".join(f"      - cidr: 172.{16 + a}.{b}.{j * 32}/27\n" for j in range(7))
    return f"""\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: filler-{i}, namespace: bench}}
spec:
  endpointSelector: {{matchLabels: {{app: pol}}}}
  ingress:
  - fromCIDRSet:
{cidrs}      - cidr: 100.{64 + a}.{b}.0/24
        except: [100.{64 + a}.{b}.128/25]
    toPorts:
    - ports:
      - {{port: "{1000 + i % 500}", endPort: {1000 + i % 500 + 37}, protocol: TCP}}
      - {{port: "{20000 + i}", protocol: UDP}}
      - {{port: "{30000 + i}", endPort: {30000 + i + 100}, protocol: ANY}}
      - {{port: "{40000 + i}", protocol: SCTP}}
  ingressDeny:
  - fromCIDR: [198.18.{i % 256}.{i // 256}/32]
"""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="webb-policy-bench-"))
        self.lab = NetLab(PREFIX)
        self.agent: ab.Agent | None = None
        self.children: list[subprocess.Popen] = []
        self.tuples = {"free": 0, "pol": 0}  # next unused churn 5-tuple per destination

    def setup(self) -> None:
        self.lab.cleanup()
        self.udpgen = str(self.tmp / "udpgen")
        subprocess.run(["gcc", "-O2", "-Wall", "-o", self.udpgen, str(ab.UDPGEN_SRC)], check=True)
        n1 = self.lab.add_node("n1", 1)
        self.cli = self.lab.add_pod(n1, "cli", 10)
        self.pods = {"free": self.lab.add_pod(n1, "free", 11), "pol": self.lab.add_pod(n1, "pol", 12)}
        for p in self.pods.values():  # datagrams to closed ports: no ICMP errors back
            self.lab.exec(p.netns, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=1000000")
        eps = self.tmp / "endpoints.yaml"
        eps.write_text(yaml.safe_dump({"endpoints": [
            {"name": name, "namespace": "bench", "labels": {"app": name}, "ips": [p.ip4],
             "interface": p.host_if, "node": "n1"}
            for name, p in (("cli", self.cli), *self.pods.items())]}))
        self.agent = ab.Agent(self.tmp, n1.netns, eps, list(self.args.agent_arg))
        took = self.agent.start()
        deadline = time.monotonic() + 30
        while self.agent.attached() != {"cli", "free", "pol"}:
            if time.monotonic() > deadline:
                raise RuntimeError("the agent did not attach to the three pods")
            time.sleep(0.2)
        docs = POLICY + "".join("---\n" + filler(i) for i in range(self.args.filler))
        t0 = time.monotonic()
        r = self.agent.admin.ApplyPolicies(admin_pb2.ApplyPoliciesRequest(documents=docs),
                                           timeout=120)
        apply_s = time.monotonic() - t0
        eps_ = self.agent.admin.ListEndpoints(admin_pb2.ListEndpointsRequest(), timeout=5).endpoints
        pol = next(e for e in eps_ if e.name == "pol")
        assert pol.policy_enforcement_ingress and not any(
            e.policy_enforcement_ingress for e in eps_ if e.name != "pol")
        self.entries = self.count_entries()
        print(f"agent up in {took:.1f} s; {len(r.policies)} policies applied in {apply_s:.2f} s "
              f"({self.entries})")

    def count_entries(self) -> str:
        """Sizes of the policy maps, from the agent's log of its last install."""
        assert self.agent is not None
        lines = [x for x in self.agent.log.read_text().splitlines() if "policy maps:" in x]
        return lines[-1].split("policy maps: ", 1)[1] if lines else "map sizes not logged"

    def teardown(self) -> None:
        for p in self.children:
            if p.poll() is None:
                p.kill()
        if self.agent is not None:
            self.agent.stop()
        self.lab.cleanup()
        for f in self.tmp.iterdir():
            f.unlink()
        self.tmp.rmdir()

    @contextlib.contextmanager
    def sink(self, name: str) -> Iterator[dict]:
        p = self.lab.popen(self.pods[name].netns, self.udpgen, "sink", "--dport-lo",
                           str(SINK_PORT), "--dports", str(SINK_PORTS), "--duration", "30",
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.children.append(p)
        result: dict = {}
        try:
            if p.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
                raise RuntimeError(f"sink: {p.stderr.read()}")  # type: ignore[union-attr]
            yield result
            time.sleep(0.05)
        finally:
            p.terminate()
            out, _ = p.communicate(timeout=5)
            self.children.remove(p)
            result.update({k: float(v) for k, v in (kv.split("=") for kv in out.split())})

    def send(self, mode: str, name: str, duration: float) -> dict[str, float]:
        dst = self.pods[name].ip4
        if mode == "churn":
            count = int(400_000 * duration)
            opts = ["churn", dst, "--src", self.cli.ip4, "--first", str(self.tuples[name]),
                    "--dport-lo", str(SINK_PORT), "--dports", str(SINK_PORTS),
                    "--count", str(count)]
        else:
            port = DENIED_PORT if mode == "denied" and name == "pol" else SINK_PORT
            opts = ["single", dst, "--dport-lo", str(port), "--sport-base", "999",
                    "--count", "20000000"]
        p = self.lab.popen(self.cli.netns, self.udpgen, *opts, "--duration", str(duration),
                           "--payload", str(PAYLOAD), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        self.children.append(p)
        try:
            out, err = p.communicate(timeout=duration + 20)
        finally:
            self.children.remove(p)
        if p.returncode != 0:
            raise RuntimeError(f"udpgen {mode}: {err.strip()}")
        r = {k: float(v) for k, v in (kv.split("=") for kv in out.split())}
        if mode == "churn":
            self.tuples[name] += int(r["sent"])
        return r

    def run(self, mode: str, name: str, duration: float, bpf_stats: bool = False) -> dict[str, float]:
        assert self.agent is not None
        b0, a0 = ab.busy_s(), ab.proc_cpu_s(self.agent.pid)
        fd = ab.enable_bpf_stats() if bpf_stats else -1
        try:
            t0, n0 = ab.tc_prog_stats(self.agent.pid)
            with self.sink(name) as sink:
                r = self.send(mode, name, duration)
            t1, n1 = ab.tc_prog_stats(self.agent.pid)
        finally:
            if fd >= 0:
                os.close(fd)
        agent = ab.proc_cpu_s(self.agent.pid) - a0
        others = ab.busy_s() - b0 - r["cpu"] - sink.get("cpu", 0) - agent
        got = r["sent"] if mode == "denied" and name == "pol" else sink.get("received", 0)
        return {"pps": got / r["elapsed"], "ns_per_pkt": 1e9 * r["cpu"] / max(r["sent"], 1),
                "bpf_ns_run": (t1 - t0) / (n1 - n0) if bpf_stats and n1 > n0 else float("nan"),
                "runs_per_pkt": (n1 - n0) / max(r["sent"], 1) if bpf_stats else float("nan"),
                "others": others / r["elapsed"], "agent": agent / r["elapsed"],
                "received": sink.get("received", 0), "sent": r["sent"]}

    def mode(self, mode: str) -> dict[str, dict[str, float]]:
        order = ["free", "pol", "pol", "free"] * self.args.pairs
        runs: dict[str, list[dict[str, float]]] = {"free": [], "pol": []}
        for name in order:
            runs[name].append(self.run(mode, name, self.args.seconds))
            time.sleep(0.2)
        stats = {name: self.run(mode, name, 1.0, bpf_stats=True)
                 for name in ("free", "pol")} if not self.args.no_bpf_stats else {}
        out = {}
        for name, rs in runs.items():
            out[name] = {
                "pps": statistics.median(r["pps"] for r in rs),
                "ns_per_pkt": statistics.median(r["ns_per_pkt"] for r in rs),
                "others": max(r["others"] for r in rs),
                "agent": statistics.median(r["agent"] for r in rs),
                "bpf_ns_run": stats[name]["bpf_ns_run"] if stats else float("nan"),
                "runs_per_pkt": stats[name]["runs_per_pkt"] if stats else float("nan"),
            }
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", nargs="+", default=["single", "churn", "denied"],
                   choices=["single", "churn", "denied"])
    p.add_argument("--pairs", type=int, default=2, help="ABBA repetitions per mode (default 2)")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per run (default 2)")
    p.add_argument("--filler", type=int, default=200,
                   help="extra policies selecting the policed pod (default 200)")
    p.add_argument("--no-bpf-stats", action="store_true",
                   help="skip the 1-s runs with the kernel's BPF run-time accounting")
    p.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                   help="extra webb-agent flag (repeatable)")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("policy_bench.py needs root (network namespaces, eBPF)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"machine: {ab.machine()}")
    b = Bench(args)
    t0 = time.monotonic()
    try:
        b.setup()
        print(f"\n64-byte UDP frames wpb-cli -> A wpb-free (no policy) / B wpb-pol (policed), "
              f"ABBA x {args.pairs}, {args.seconds:g} s per run; medians")
        print(f"{'mode':<7} {'A pps':>8} {'B pps':>8} {'B/A':>6} {'A ns/pkt':>9} {'B ns/pkt':>9} "
              f"{'B-A':>6} {'A bpf ns/run':>12} {'B bpf ns/run':>12} {'policy ns/pkt':>13} "
              f"{'others':>6}")
        results = {}
        for mode in args.modes:
            r = b.mode(mode)
            results[mode] = r
            a, bb = r["free"], r["pol"]
            # Two program runs per packet; only the to-endpoint run differs.
            per_pkt = (bb["bpf_ns_run"] * bb["runs_per_pkt"] - a["bpf_ns_run"] * a["runs_per_pkt"])
            print(f"{mode:<7} {ab.fmt_k(a['pps']):>8} {ab.fmt_k(bb['pps']):>8} "
                  f"{bb['pps'] / a['pps']:>6.2f} {a['ns_per_pkt']:>9.0f} {bb['ns_per_pkt']:>9.0f} "
                  f"{bb['ns_per_pkt'] - a['ns_per_pkt']:>+6.0f} {a['bpf_ns_run']:>12.0f} "
                  f"{bb['bpf_ns_run']:>12.0f} {per_pkt:>+13.0f} "
                  f"{100 * max(a['others'], bb['others']):>5.0f}%")
        print("   (pps: received by the sink (denied B: sent, all dropped); ns/pkt: the sender's "
              "CPU per packet, which on a veth carries the whole path; bpf ns/run: the TC "
              "programs' own run time, kernel accounting; policy ns/pkt: B - A of the TC "
              "programs' time per packet; others: CPU used by other work, max over the runs)")
        for mode, r in results.items():
            if mode == "denied":
                print(f"   denied: every packet takes the full lookup and is dropped in the "
                      f"kernel: {ab.fmt_k(r['pol']['pps'])} packets/s dropped vs "
                      f"{ab.fmt_k(r['free']['pps'])} delivered unpoliced")
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
    finally:
        b.teardown()
        print(f"(bench took {time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()

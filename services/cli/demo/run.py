"""`webb demo`: build the cluster, start everything, print what to try, tear down."""
from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from webb.timeouts import wait_for

from .cluster import PREFIX, DemoCluster, Ports, agent_host, clean

DEFAULT_STATE = Path("/run/webb-demo")
SUPERVISE_INTERVAL_S = 0.2


def _banner(c: DemoCluster) -> str:
    relay = f"127.0.0.1:{c.ports.relay}"
    lines = [
        "",
        "webb demo is running: bookinfo on a cluster of network namespaces",
        "",
        "  nodes:  " + ", ".join(f"{n} (agent {agent_host(i)}:{c.ports.agent})"
                                   for i, n in enumerate(c.lab.nodes, start=1)),
        "  pods:   " + ", ".join(sorted(f"{p.namespace}/{p.name}" for p in c.pods.values())),
        "",
    ]
    if c.procs.get("ui"):
        lines += [f"  Open the service map:  http://127.0.0.1:{c.ports.ui}/", ""]
    lines += [
        "Try, in another terminal:",
    ]
    if c.procs.get("relay"):
        lines.append(f"  .venv/bin/grpcurl -plaintext -d '{{\"number\": 10}}' {relay} observer.Observer/GetFlows")
        lines.append(f"  .venv/bin/grpcurl -plaintext {relay} observer.Observer/GetNodes")
    if c.procs.get("metrics"):
        lines.append(f"  curl -s http://127.0.0.1:{c.ports.metrics}/metrics | grep hubble_flows_processed_total")
    lines += [
        f"  .venv/bin/webb observe --server {relay} --namespace bookinfo --last 20",
        f"  .venv/bin/webb observe --server {relay} -f --to-pod bookinfo/reviews",
        f"  .venv/bin/grpcurl -plaintext -d '{{\"follow\": true, \"whitelist\": [{{\"source_pod\": [\"bookinfo/\"]}}]}}' "
        f"{agent_host(1)}:{c.ports.agent} observer.Observer/GetFlows",
        "  .venv/bin/webb demo exec details -- curl -s http://reviews:9080/reviews/0",
        "  .venv/bin/webb demo scale details --replicas 2",
        "",
        f"Logs: {c.state_dir}/logs.  Ctrl-C stops the demo and removes everything it made.",
        "",
    ]
    return "\n".join(lines)


async def _run(c: DemoCluster, duration: float | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await c.serve_control()
    print(_banner(c), flush=True)
    (c.state_dir / "ready").write_text("ok\n")
    end = None if duration is None else loop.time() + duration
    try:
        while not stop.is_set():
            try:
                await wait_for(stop.wait(), SUPERVISE_INTERVAL_S)
            except asyncio.TimeoutError:
                pass
            # A process that dies is restarted (like kubelet); the rest keeps running.
            c.supervise()
            if end is not None and loop.time() >= end:
                break
    finally:
        server.close()


def run_demo(state_dir: Path, rate: float, duration: float | None, nodes: int,
             ports: Ports | None = None, prefix: str = PREFIX, with_relay: bool = True) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if nodes < 2 or nodes > 8:
        print("webb demo: --nodes must be between 2 and 8", file=sys.stderr)
        return 2
    c = DemoCluster(state_dir, rate=rate, nodes=nodes, ports=ports or Ports(), prefix=prefix)
    busy = [p for p in (c.ports.relay, c.ports.agent, c.ports.metrics, c.ports.ui)
            if _port_busy("127.0.0.1", p)]
    if busy:
        print(f"webb demo: port {busy[0]} is in use (another demo running?)", file=sys.stderr)
        return 1
    print("building the cluster...", flush=True)
    try:
        c.build()
        c.start_agents()
        c.start_pods()
        if with_relay:
            c.start_relay()
            c.start_metrics()
            c.start_ui()
        c.wait_ready()
        c.start_pods(("loadgen",))
        asyncio.run(_run(c, duration))
        return 0
    except KeyboardInterrupt:
        return 0
    except RuntimeError as e:
        print(f"webb demo: {e}", file=sys.stderr)
        return 1
    finally:
        print("tearing down...", flush=True)
        c.teardown()


def _port_busy(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _state(state_dir: Path) -> dict:
    try:
        return json.loads((state_dir / "state.json").read_text())
    except FileNotFoundError:
        raise SystemExit("webb demo: no demo is running (start one with `make demo`)") from None


def scale(state_dir: Path, workload: str, replicas: int) -> int:
    path = state_dir / "control.sock"
    if not path.exists():
        print("webb demo: no demo is running (start one with `make demo`)", file=sys.stderr)
        return 1
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(str(path))
        s.sendall((json.dumps({"cmd": "scale", "workload": workload, "replicas": replicas}) + "\n").encode())
        resp = json.loads(s.makefile().readline())
    if not resp.get("ok"):
        print(f"webb demo scale: {resp.get('error')}", file=sys.stderr)
        return 1
    print(f"{workload} scaled to {replicas}: {', '.join(resp['pods'])}")
    return 0


def exec_in_pod(state_dir: Path, pod: str, command: list[str]) -> int:
    pods = _state(state_dir)["pods"]
    exact = [p for p in pods if p["name"] == pod]
    matches = exact or [p for p in pods if p["name"].startswith(pod) or p["workload"] == pod]
    if not matches:
        names = ", ".join(sorted(p["name"] for p in pods))
        print(f"webb demo exec: no pod {pod!r}; pods: {names}", file=sys.stderr)
        return 1
    if not command:
        print("webb demo exec: give a command after --", file=sys.stderr)
        return 2
    target = sorted(matches, key=lambda p: p["name"])[0]
    if shutil.which(command[0]) is None and not Path(command[0]).exists():
        print(f"webb demo exec: {command[0]}: command not found", file=sys.stderr)
        return 127
    return subprocess.call(["ip", "netns", "exec", target["netns"], *command])


def clean_cmd(state_dir: Path, prefix: str | None = None) -> int:
    clean(state_dir, prefix)
    print("removed everything a demo left behind")
    return 0

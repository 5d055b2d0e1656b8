"""The demo cluster: nodes and pods as network namespaces, bookinfo and a DNS pod in
them, one webb-agent per node and the other webb deployables on loopback.

Everything the demo creates is named with the prefix `wbd` or lives in the state
directory, so a later run (or `webb demo clean`) removes what a crashed one left.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import string
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from webb.netlab import NetLab, cleanup_prefix

from .supervisor import Supervisor

log = logging.getLogger("webb.demo")

PREFIX = "wbd"
PY = sys.executable
BIN = Path(sys.executable).parent
DNS_DOMAIN = "cluster.local"
BOOKINFO_PORT = 9080
# Cilium's annotation for L7 visibility, which webb's agent reads too.
VISIBILITY_ANNOTATION = "policy.cilium.io/proxy-visibility"


@dataclass
class Workload:
    """A Deployment of the demo: its pods share labels (and so an identity)."""

    app: str
    version: str
    namespace: str
    kind: str  # bookinfo | dns | loadgen
    service: str  # DNS name of its Service ("" for none)
    nodes: list[str]
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.app}-{self.version}" if self.kind == "bookinfo" else self.app

    @property
    def template_hash(self) -> str:
        return hashlib.sha1(self.name.encode()).hexdigest()[:9]

    def pod_labels(self) -> dict[str, str]:
        if self.kind == "dns":
            return {"k8s-app": "kube-dns", **self.labels}
        return {"app": self.app, "version": self.version, **self.labels}

    @property
    def service_account(self) -> str:
        return {"dns": "coredns", "loadgen": "default"}.get(self.kind, f"bookinfo-{self.app}")


WORKLOADS = [
    Workload("coredns", "v1", "kube-system", "dns", "kube-dns", ["n1"]),
    Workload("productpage", "v1", "bookinfo", "bookinfo", "productpage", ["n1"]),
    Workload("details", "v1", "bookinfo", "bookinfo", "details", ["n1"]),
    Workload("reviews", "v1", "bookinfo", "bookinfo", "reviews", ["n1"]),
    Workload("reviews", "v2", "bookinfo", "bookinfo", "reviews", ["n2"]),
    Workload("reviews", "v3", "bookinfo", "bookinfo", "reviews", ["n2"]),
    Workload("ratings", "v1", "bookinfo", "bookinfo", "ratings", ["n2"]),
    Workload("loadgen", "v1", "default", "loadgen", "", ["n2"]),
]


@dataclass
class PodState:
    name: str
    namespace: str
    workload: str
    node: str
    netns: str
    ip4: str
    ip6: str
    host_if: str
    pid: int = 0


@dataclass
class Ports:
    agent: int = 4244
    relay: int = 4245
    metrics: int = 9965
    ui: int = 12000


def _pod_name(w: Workload) -> str:
    suffix = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(5))
    return f"{w.name}-{w.template_hash}-{suffix}"


def agent_host(node_index: int) -> str:
    """Each node's agent listens on its own loopback address, on Hubble's port."""
    return f"127.0.0.{node_index}"


class DemoCluster:
    def __init__(self, state_dir: Path, rate: float = 2.0, nodes: int = 2,
                 ports: Ports | None = None, prefix: str = PREFIX) -> None:
        self.state_dir = state_dir
        self.rate = rate
        self.node_count = nodes
        self.ports = ports or Ports()
        self.prefix = prefix
        self.lab = NetLab(prefix)
        self.pods: dict[str, PodState] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.supervisor = Supervisor()
        self.workloads = {w.name: w for w in WORKLOADS}
        self._next_host: dict[str, int] = {}
        self.dns_ip = ""
        self.endpoints_file = state_dir / "endpoints.yaml"
        self.hosts_file = state_dir / "dns-hosts"

    # -- set-up ------------------------------------------------------------------
    def build(self) -> None:
        clean(self.state_dir, self.prefix)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        for i in range(1, self.node_count + 1):
            self.lab.add_node(f"n{i}", i)
            self._next_host[f"n{i}"] = 10
        self.lab.add_world()
        dns = self.workloads["coredns"]
        self._add_pod(dns, dns.nodes[0])
        self.dns_ip = next(p.ip4 for p in self.pods.values() if p.workload == "coredns")
        for w in WORKLOADS:
            if w.kind != "dns":
                for node in w.nodes:
                    self._add_pod(w, self._node(node))
        self._write_dns()
        self._write_endpoints()
        self._save()

    def _node(self, name: str) -> str:
        return name if name in self.lab.nodes else "n1"

    def _add_pod(self, w: Workload, node: str) -> PodState:
        name = _pod_name(w)
        host = self._next_host[node]
        self._next_host[node] = host + 1
        pod = self.lab.add_pod(self.lab.nodes[node], name, host)
        st = PodState(name, w.namespace, w.name, node, pod.netns, pod.ip4, pod.ip6, pod.host_if)
        self.pods[name] = st
        if w.kind != "dns":
            self._write_resolv(st)
        return st

    def _write_resolv(self, pod: PodState) -> None:
        # `ip netns exec` bind-mounts /etc/netns/<name>/* over /etc: the pod's resolver.
        d = Path("/etc/netns") / pod.netns
        d.mkdir(parents=True, exist_ok=True)
        ns = pod.namespace
        (d / "resolv.conf").write_text(
            f"search {ns}.svc.{DNS_DOMAIN} svc.{DNS_DOMAIN} {DNS_DOMAIN}\n"
            f"nameserver {self.dns_ip}\noptions ndots:5\n")
        (d / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost\n{pod.ip4} {pod.name}\n")

    def _write_dns(self) -> None:
        lines = []
        for p in sorted(self.pods.values(), key=lambda p: p.name):
            w = self.workloads[p.workload]
            if not w.service:
                continue
            fqdn = f"{w.service}.{w.namespace}.svc.{DNS_DOMAIN}"
            lines.append(f"{p.ip4} {fqdn}")
            lines.append(f"{p.ip6} {fqdn}")
        tmp = self.hosts_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.hosts_file)

    def _write_endpoints(self) -> None:
        eps = []
        for p in self.pods.values():
            w = self.workloads[p.workload]
            ep = {"name": p.name, "namespace": p.namespace, "labels": w.pod_labels(),
                  "ips": [p.ip4, p.ip6], "interface": p.host_if, "node": p.node,
                  "service_account": w.service_account,
                  "workload": {"name": w.name, "kind": "Deployment"}}
            if w.kind == "bookinfo":
                # As in Cilium's tutorial: HTTP visibility on the services' port.
                ep["annotations"] = {VISIBILITY_ANNOTATION: f"<Ingress/{BOOKINFO_PORT}/TCP/HTTP>"}
            eps.append(ep)
        nodes = [{"name": n.name, "ips": [n.ip],
                  "agent_address": f"{agent_host(i)}:{self.ports.agent}"}
                 for i, n in enumerate(self.lab.nodes.values(), start=1)]
        tmp = self.endpoints_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"endpoints": eps, "nodes": nodes}, sort_keys=False))
        os.replace(tmp, self.endpoints_file)

    def _save(self) -> None:
        state = {"pods": [asdict(p) for p in self.pods.values()],
                 "pids": {k: p.pid for k, p in self.procs.items()},
                 "nodes": {n.name: n.netns for n in self.lab.nodes.values()},
                 "world": {"netns": self.lab.world_ns, "ip": self.lab.world_ip},
                 "dns_ip": self.dns_ip, "ports": asdict(self.ports), "prefix": self.prefix}
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_dir / "state.json")

    # -- processes -----------------------------------------------------------------
    def _spawn(self, key: str, args: list[str], netns: str | None = None,
               env: dict[str, str] | None = None) -> subprocess.Popen:
        cmd = (["ip", "netns", "exec", netns] if netns else []) + args

        def start() -> subprocess.Popen:
            with open(self.state_dir / "logs" / f"{key}.log", "ab") as logf:
                proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})},
                                        start_new_session=True)
            self.procs[key] = proc
            return proc
        proc = start()
        self.supervisor.add(key, start, proc)
        self._save()
        return proc

    def supervise(self) -> None:
        """While the demo runs: restarts what exited, with back-off (supervisor.py)."""
        restarted = self.supervisor.check()
        for key in restarted:
            if key.startswith("pod-"):
                pod = self.pods.get(key[len("pod-"):])
                if pod is not None:
                    pod.pid = self.procs[key].pid
        if restarted:
            self._save()  # `webb demo clean` must find the new PIDs

    def start_agents(self) -> None:
        for i, node in enumerate(self.lab.nodes.values(), start=1):
            self._spawn(f"agent-{node.name}", [
                str(BIN / "webb-agent"), "--listen-address", f"{agent_host(i)}:{self.ports.agent}",
                "--unix-socket", str(self.state_dir / f"{node.name}.sock"),
                "--node-name", node.name, "--netns", node.netns,
                "--endpoints", str(self.endpoints_file),
                "--identity-file", str(self.state_dir / "identities.json"),
                # one policy store for the cluster, as the API server is on Kubernetes:
                # `webb policy apply` through any agent reaches every node
                "--policy-store", str(self.state_dir / "policies"),
                # flows beyond the ring: `webb observe --since 1h` (docs/history.md)
                "--history-dir", str(self.state_dir / "history" / node.name)])

    def start_pod(self, pod: PodState) -> None:
        w = self.workloads[pod.workload]
        if w.kind == "dns":
            args = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                    f"--addn-hosts={self.hosts_file}", f"--listen-address={pod.ip4}",
                    "--bind-interfaces", f"--local=/{DNS_DOMAIN}/", "--domain-needed", "--local-ttl=30",
                    "--log-facility=-", "--user=root", "--pid-file="]
        elif w.kind == "loadgen":
            args = [PY, "-m", "webb_cli.demo.loadgen", "--rate", str(self.rate)]
        else:
            args = [PY, "-m", "webb_cli.demo.bookinfo", "--service", w.app,
                    "--version", w.version, "--pod", pod.name]
        proc = self._spawn(f"pod-{pod.name}", args, pod.netns, {"HOSTNAME": pod.name})
        pod.pid = proc.pid

    def start_pods(self, kinds: tuple[str, ...] = ("dns", "bookinfo")) -> None:
        for pod in self.pods.values():
            if self.workloads[pod.workload].kind in kinds:
                self.start_pod(pod)
        self._save()

    def start_relay(self) -> None:
        self._spawn("relay", [str(BIN / "webb-relay"), "--listen-address",
                              f"127.0.0.1:{self.ports.relay}", "--peer-service",
                              f"{agent_host(1)}:{self.ports.agent}"])

    def start_metrics(self) -> None:
        # Hubble's recommended metrics plus what webb's Grafana dashboards need.
        self._spawn("metrics", [str(BIN / "webb-metrics"), "--server",
                                f"127.0.0.1:{self.ports.relay}", "--listen-address",
                                f"127.0.0.1:{self.ports.metrics}", "--enable-openmetrics",
                                "--preset", "dashboards"])

    def start_ui(self) -> None:
        self._spawn("ui", [str(BIN / "webb-ui"), "--listen-address",
                           f"127.0.0.1:{self.ports.ui}", "--server",
                           f"127.0.0.1:{self.ports.relay}"])

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Waits until every agent has attached every local endpoint."""
        import grpc

        from webb.api.admin import admin_pb2, admin_pb2_grpc

        deadline = time.monotonic() + timeout
        for i, node in enumerate(self.lab.nodes.values(), start=1):
            want = {p.name for p in self.pods.values() if p.node == node.name}
            with grpc.insecure_channel(f"{agent_host(i)}:{self.ports.agent}") as ch:
                stub = admin_pb2_grpc.AdminStub(ch)
                while True:
                    self.check_alive()
                    try:
                        eps = stub.ListEndpoints(admin_pb2.ListEndpointsRequest(), timeout=1)
                        if want <= {e.name for e in eps.endpoints if e.attached}:
                            break
                    except grpc.RpcError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"agent of {node.name} not ready after {timeout:.0f}s; "
                                           f"see {self.state_dir}/logs/agent-{node.name}.log")
                    time.sleep(0.2)

    def check_alive(self) -> None:
        for key, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{key} exited with {proc.returncode}; see "
                                   f"{self.state_dir}/logs/{key}.log")

    # -- changes while running -------------------------------------------------------
    def scale(self, workload: str, replicas: int) -> list[str]:
        w = self._find_workload(workload)
        if replicas < 0 or replicas > 20:
            raise ValueError("replicas must be between 0 and 20")
        current = [p for p in self.pods.values() if p.workload == w.name]
        nodes = list(self.lab.nodes)
        while len(current) < replicas:
            # spread over the nodes like a scheduler: the node with fewest pods
            node = min(nodes, key=lambda n: sum(p.node == n for p in self.pods.values()))
            pod = self._add_pod(w, node)
            self.start_pod(pod)
            current.append(pod)
        while len(current) > replicas:
            pod = current.pop()
            self._stop_pod(pod)
        self._write_dns()
        self._write_endpoints()
        self._reload_dns()
        self._save()
        return [p.name for p in current]

    def _find_workload(self, name: str) -> Workload:
        if name in self.workloads:
            return self.workloads[name]
        matches = [w for w in self.workloads.values() if w.app == name]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ValueError(f"{name} is ambiguous: {', '.join(w.name for w in matches)}")
        raise ValueError(f"no workload {name}; known: {', '.join(self.workloads)}")

    def _stop_pod(self, pod: PodState) -> None:
        self.supervisor.remove(f"pod-{pod.name}")  # stopped on purpose: not restarted
        proc = self.procs.pop(f"pod-{pod.name}", None)
        if proc is not None:
            _terminate(proc)
        self.pods.pop(pod.name, None)
        self.lab.remove_pod(pod.name)
        shutil.rmtree(Path("/etc/netns") / pod.netns, ignore_errors=True)

    def _reload_dns(self) -> None:
        for p in self.pods.values():
            if self.workloads[p.workload].kind == "dns":
                proc = self.procs.get(f"pod-{p.name}")
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGHUP)

    # -- control socket (`webb demo scale`) ------------------------------------------
    async def serve_control(self) -> asyncio.AbstractServer:
        path = self.state_dir / "control.sock"
        if path.exists():
            path.unlink()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                req = json.loads(await reader.readline())
                if req.get("cmd") == "scale":
                    pods = await asyncio.get_running_loop().run_in_executor(
                        None, self.scale, str(req["workload"]), int(req["replicas"]))
                    resp: dict[str, Any] = {"ok": True, "pods": pods}
                else:
                    resp = {"ok": False, "error": f"unknown command {req.get('cmd')!r}"}
            except (ValueError, KeyError, json.JSONDecodeError) as e:
                resp = {"ok": False, "error": str(e)}
            except Exception as e:  # report, keep the demo running
                log.exception("control command failed")
                resp = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            writer.write((json.dumps(resp) + "\n").encode())
            await writer.drain()
            writer.close()
        return await asyncio.start_unix_server(handle, path=str(path))

    # -- tear-down -----------------------------------------------------------------------
    def teardown(self) -> None:
        self.supervisor.children.clear()
        for proc in self.procs.values():
            _terminate(proc)
        self.procs.clear()
        clean(self.state_dir, self.prefix)


def _terminate(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def _is_demo_process(pid: int) -> bool:
    """A recorded PID may have been reused since a crash: only ours are killed."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return any(tag in cmd for tag in (b"webb", b"netns exec", b"dnsmasq"))


def clean(state_dir: Path, prefix: str | None = None) -> None:
    """Removes everything a demo run made: processes, namespaces, files."""
    state = state_dir / "state.json"
    pids: dict[str, int] = {}
    if state.exists():
        try:
            doc = json.loads(state.read_text())
            pids = doc.get("pids", {})
            prefix = prefix or doc.get("prefix")
        except (ValueError, OSError):
            pass
    prefix = prefix or PREFIX
    if state.exists():
        for pid in pids.values():
            if _is_demo_process(int(pid)):
                try:
                    os.killpg(int(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
    cleanup_prefix(prefix)
    for d in Path("/etc/netns").glob(f"{prefix}-*") if Path("/etc/netns").exists() else []:
        shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(state_dir, ignore_errors=True)

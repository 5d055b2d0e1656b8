"""Test support: agents as real processes, endpoint files, gRPC helpers."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import grpc
import yaml
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from webb.api.admin import admin_pb2, admin_pb2_grpc
from webb.api.flow import flow_pb2
from webb.api.observer import observer_pb2, observer_pb2_grpc
from webb.netlab import NetLab, Pod

from ports import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TRAFFIC = str(Path(__file__).resolve().parent / "helpers" / "traffic.py")
NO_BDP = [("grpc.http2.bdp_probe", 0)]


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.1,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    error: grpc.RpcError | None = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except grpc.RpcError as e:
            error = e  # a service not (yet) answering is what some waits are for
        time.sleep(interval)
    # Both: a "last: None" alone does not tell a wrong answer from no answer.
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r}"
                         + (f"; last gRPC error: {error!r}"[:600] if error else "") + ")")


def pod_endpoint(pod: Pod, app: str, namespace: str = "demo", version: str = "v1",
                 extra_labels: dict[str, str] | None = None, node: str | None = None) -> dict:
    labels = {"app": app, "version": version, **(extra_labels or {})}
    return {"name": pod.name, "namespace": namespace, "labels": labels,
            "ips": [pod.ip4, pod.ip6], "interface": pod.host_if,
            "node": node if node is not None else pod.node.name,
            "service_account": app, "workload": {"name": f"{app}-{version}", "kind": "Deployment"}}


def write_endpoints(path: Path, endpoints: Iterable[dict], nodes: Iterable[dict] = ()) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"endpoints": list(endpoints), "nodes": list(nodes)}))
    os.replace(tmp, path)


class FollowStream:
    """A `GetFlows` follow (agent or relay) read by a thread: every response, in order,
    in `items`; `error` is the stream's failure, if any, other than close()'s."""

    def __init__(self, observer: observer_pb2_grpc.ObserverStub, timeout: float = 180,
                 **req: Any) -> None:
        self.call = observer.GetFlows(observer_pb2.GetFlowsRequest(follow=True, **req),
                                      timeout=timeout)
        self.items: list[observer_pb2.GetFlowsResponse] = []
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for r in self.call:
                self.items.append(r)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.error = e

    def flows(self, start: int = 0) -> list[flow_pb2.Flow]:
        return [r.flow for r in self.items[start:] if r.HasField("flow")]

    def statuses(self, start: int = 0) -> list[tuple[int, set[str], str]]:
        """(state_change, node names, message) of each node status from `start` on."""
        return [(r.node_status.state_change, set(r.node_status.node_names),
                 r.node_status.message) for r in self.items[start:] if r.HasField("node_status")]

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(10)


class ServiceProc:
    """A webb deployable as a real process on a free loopback port, ready once its
    gRPC health service says observer.Observer is SERVING."""

    kind = "service"

    def __init__(self, args: list[str], port: int, log: Path) -> None:
        self.args = args
        self.port = port
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def spawn(self):  # type: ignore[no-untyped-def]
        """Starts the process without waiting (e.g. a TLS server a plaintext check cannot ask)."""
        self.proc = subprocess.Popen(self.args, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT)
        return self

    def start(self, timeout: float = 60.0):  # type: ignore[no-untyped-def]
        self.spawn()
        self.channel = grpc.insecure_channel(self.address, options=NO_BDP)
        health = health_pb2_grpc.HealthStub(self.channel)

        def serving() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.kind} exited {self.proc.returncode}: "
                                     f"{self.log.read_text()[-3000:]}")
            r = health.Check(health_pb2.HealthCheckRequest(service="observer.Observer"), timeout=1)
            return r.status == health_pb2.HealthCheckResponse.SERVING
        wait_for(serving, timeout, 0.2, f"{self.kind} health")
        return self

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    @property
    def observer(self) -> observer_pb2_grpc.ObserverStub:
        assert self.channel is not None
        return observer_pb2_grpc.ObserverStub(self.channel)


class RelayProc(ServiceProc):
    """webb-relay; healthy once it has at least one agent."""

    kind = "relay"

    def __init__(self, workdir: Path, *args: str) -> None:
        port = free_port()
        super().__init__([str(BIN / "webb-relay"), "--listen-address", f"127.0.0.1:{port}",
                          "--log-level", "debug", *args], port, workdir / f"relay-{port}.log")


class AgentProc(ServiceProc):
    kind = "agent"

    def __init__(self, workdir: Path, node: str, netns: str, endpoints: Path | None,
                 ring: int = 4095, extra: list[str] | None = None) -> None:
        port = free_port()
        self.node = node
        self.sock = str(workdir / f"agent-{node}.sock")
        args = [str(BIN / "webb-agent"), "--listen-address", f"127.0.0.1:{port}",
                "--unix-socket", self.sock, "--node-name", node, "--netns", netns,
                "--ring-capacity", str(ring), "--log-level", "info", *(extra or [])]
        if endpoints is not None:
            args += ["--endpoints", str(endpoints)]
        super().__init__(args, port, workdir / f"agent-{node}-{port}.log")

    @property
    def admin(self) -> admin_pb2_grpc.AdminStub:
        assert self.channel is not None
        return admin_pb2_grpc.AdminStub(self.channel)

    def wait_attached(self, names: Iterable[str], timeout: float = 15.0) -> None:
        want = set(names)

        def ok() -> bool:
            eps = self.admin.ListEndpoints(admin_pb2.ListEndpointsRequest(), timeout=2).endpoints
            return want <= {e.name for e in eps if e.attached}
        wait_for(ok, timeout, 0.2, f"endpoints {sorted(want)} attached")

    def flows(self, timeout: float = 10.0, **req: Any) -> list[flow_pb2.Flow]:
        return [r.flow for r in self.observer.GetFlows(observer_pb2.GetFlowsRequest(**req),
                                                       timeout=timeout) if r.HasField("flow")]


def run_in(lab: NetLab, netns: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return lab.exec(netns, sys.executable, TRAFFIC, *args, timeout=timeout)


def start_in(lab: NetLab, netns: str, *args: str) -> subprocess.Popen:
    p = lab.popen(netns, sys.executable, TRAFFIC, *args, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()  # type: ignore[union-attr]
    assert line.strip() == "ready", f"traffic helper did not start: {line!r}"
    return p


async def until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Polls pred on the event loop until it is truthy (returned), or fails naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def ts(ns: int) -> Timestamp:
    """A protobuf Timestamp of `ns` nanoseconds since the epoch (since/until of requests)."""
    t = Timestamp()
    t.FromNanoseconds(ns)
    return t


@contextmanager
def client_server_lab(prefix: str, nodes: Iterable[str]) -> Iterator[NetLab]:
    """One node namespace per name, each with a client pod c<i> (.10) and a server pod
    s<i> (.11); everything removed afterwards, also when the test fails."""
    lab = NetLab(prefix)
    lab.cleanup()
    try:
        for i, name in enumerate(nodes, start=1):
            node = lab.add_node(name, i)
            lab.add_pod(node, f"c{i}", 10)
            lab.add_pod(node, f"s{i}", 11)
        yield lab
    finally:
        lab.cleanup()


def lab_prefix(base: str) -> str:
    """Namespace name prefix of a test module; WEBB_TEST_PREFIX_TAG (one letter or
    digit) lets two runs of the suite share a machine without touching each
    other's namespaces."""
    return base + os.environ.get("WEBB_TEST_PREFIX_TAG", "")[:2]


@contextmanager
def running_demo(workdir: Path, prefix: str, rate: float = 2.0,
                 duration: int = 300) -> Iterator[dict[str, Any]]:
    """`webb demo` as a real process on free ports with its own namespace prefix;
    stopped with Ctrl-C (SIGINT) and cleaned up whatever happened."""
    state = workdir / "state"
    ports = {"agent": free_port(), "relay": free_port(), "metrics": free_port(), "ui": free_port()}
    log = workdir / "demo.log"
    proc = subprocess.Popen(
        [str(BIN / "webb"), "demo", "--state-dir", str(state), "--prefix", prefix,
         "--agent-port", str(ports["agent"]), "--relay-port", str(ports["relay"]),
         "--metrics-port", str(ports["metrics"]), "--ui-port", str(ports["ui"]),
         "--rate", str(rate), "--duration", str(duration)],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"demo exited: {log.read_text()[-3000:]}")
            return (state / "ready").exists()
        wait_for(ready, 120, 0.5, "the demo to be ready")
        yield {"proc": proc, "state": state, "ports": ports, "log": log, "dir": workdir}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        subprocess.run([str(BIN / "webb"), "demo", "--state-dir", str(state), "--prefix", prefix,
                        "clean"], capture_output=True, timeout=60)

"""A small real observer.Observer gRPC server streaming hand-built flows, for the UI's
API and browser tests (no tests in here). It applies the request's FlowFilters with
webb.filters, like a relay, and records every GetFlowsRequest it gets, so tests can
check what the UI sent."""
from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent import futures
from pathlib import Path
from typing import Any, Iterable, Iterator

import grpc
from google.protobuf.wrappers_pb2 import BoolValue, UInt32Value

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc
from webb.api.relay import relay_pb2
from webb.filters import build_filter

BOOKINFO = {
    # card: (namespace, labels, identity, pod, ip, workload)
    "loadgen": ("default", ["k8s:app=loadgen"], 263, "loadgen-7c9-abcde", "10.244.2.13", "loadgen"),
    "productpage": ("bookinfo", ["k8s:app=productpage", "k8s:version=v1"], 257, "productpage-v1-5d8-aaaaa",
                    "10.244.1.11", "productpage-v1"),
    "details": ("bookinfo", ["k8s:app=details", "k8s:version=v1"], 258, "details-v1-6f7-bbbbb",
                "10.244.1.12", "details-v1"),
    "reviews-v1": ("bookinfo", ["k8s:app=reviews", "k8s:version=v1"], 259, "reviews-v1-111-ccccc",
                   "10.244.1.13", "reviews-v1"),
    "reviews-v2": ("bookinfo", ["k8s:app=reviews", "k8s:version=v2"], 260, "reviews-v2-222-ddddd",
                   "10.244.2.10", "reviews-v2"),
    "ratings": ("bookinfo", ["k8s:app=ratings", "k8s:version=v1"], 262, "ratings-v1-333-eeeee",
                "10.244.2.12", "ratings-v1"),
    "coredns": ("kube-system", ["k8s:k8s-app=kube-dns"], 256, "coredns-444-fffff", "10.244.1.10", "coredns"),
}
WORLD_IP = "192.0.2.50"
_uuid = 0
_lock = threading.Lock()


def endpoint(name: str) -> fpb.Endpoint:
    if name == "world":
        return fpb.Endpoint(identity=2, labels=["reserved:world"])
    ns, labels, ident, pod, _ip, wl = BOOKINFO[name]
    return fpb.Endpoint(identity=ident, namespace=ns, pod_name=pod,
                        labels=labels + [f"k8s:io.kubernetes.pod.namespace={ns}",
                                         "k8s:io.cilium.k8s.policy.cluster=default"],
                        workloads=[fpb.Workload(name=wl, kind="Deployment")])


def ip_of(name: str) -> str:
    return WORLD_IP if name == "world" else BOOKINFO[name][4]


def make_flow(src: str, dst: str, dport: int = 9080, proto: str = "TCP",
              verdict: int = fpb.FORWARDED, reply: bool = False, sport: int = 40000,
              flags: Iterable[str] = ("SYN",), node: str = "n1", t: float | None = None,
              drop_reason: int = 0, l7: fpb.Layer7 | None = None) -> fpb.Flow:
    global _uuid
    with _lock:
        _uuid += 1
        n = _uuid
    now = time.time() if t is None else t
    f = fpb.Flow(verdict=verdict, node_name=node, uuid=f"00000000-0000-4000-8000-{n:012d}",
                 source=endpoint(src), destination=endpoint(dst),
                 Type=fpb.L7 if l7 is not None else fpb.L3_L4,
                 traffic_direction=fpb.EGRESS, is_reply=BoolValue(value=reply),
                 emitter=fpb.Emitter(name="test"))
    f.time.FromNanoseconds(int(now * 1e9))
    f.IP.source, f.IP.destination, f.IP.ipVersion = ip_of(src), ip_of(dst), fpb.IPv4
    s, d = (dport, sport) if reply else (sport, dport)
    if proto == "TCP":
        f.l4.TCP.source_port, f.l4.TCP.destination_port = s, d
        for fl in flags:
            setattr(f.l4.TCP.flags, fl, True)
    elif proto == "UDP":
        f.l4.UDP.source_port, f.l4.UDP.destination_port = s, d
    elif proto == "ICMPv4":
        f.l4.ICMPv4.type = 8
    if verdict == fpb.DROPPED:
        f.drop_reason_desc = drop_reason or fpb.POLICY_DENIED
    if l7 is not None:
        f.l7.CopyFrom(l7)
    f.Summary = "hand-built"
    return f


def http_pair(src: str, dst: str, method: str = "GET", url: str = "/", code: int = 200,
              latency_ms: float = 3.0, port: int = 9080) -> list[fpb.Flow]:
    req = fpb.Layer7(type=fpb.REQUEST, http=fpb.HTTP(method=method, url=f"http://{dst}:{port}{url}",
                                                      protocol="HTTP/1.1"))
    resp = fpb.Layer7(type=fpb.RESPONSE, latency_ns=int(latency_ms * 1e6),
                      http=fpb.HTTP(method=method, url=f"http://{dst}:{port}{url}", code=code,
                                    protocol="HTTP/1.1"))
    return [make_flow(src, dst, port, l7=req, flags=()),
            make_flow(dst, src, port, reply=True, l7=resp, flags=())]


def bookinfo_flows() -> list[fpb.Flow]:
    """Traffic like the demo's, plus HTTP, DNS, a world client and some drops."""
    out: list[fpb.Flow] = []
    for _ in range(3):
        out += [make_flow("loadgen", "productpage"),
                make_flow("productpage", "loadgen", 9080, reply=True, flags=("SYN", "ACK")),
                make_flow("productpage", "details"), make_flow("productpage", "reviews-v1"),
                make_flow("productpage", "reviews-v2"), make_flow("reviews-v2", "ratings"),
                make_flow("productpage", "coredns", 53, "UDP")]
    out += http_pair("productpage", "details", url="/details/0", code=200, latency_ms=2)
    out += http_pair("productpage", "reviews-v2", url="/reviews/0", code=503, latency_ms=40)
    out += [make_flow("world", "productpage"), make_flow("world", "productpage")]
    # reviews-v1 -> ratings is denied by policy; reviews-v2 -> ratings is mixed
    out += [make_flow("reviews-v1", "ratings", verdict=fpb.DROPPED) for _ in range(2)]
    out += [make_flow("reviews-v2", "ratings", verdict=fpb.DROPPED)]
    return out


class _Observer(observer_pb2_grpc.ObserverServicer):
    def __init__(self, server: "FlowServer") -> None:
        self.s = server

    def GetFlows(self, request: opb.GetFlowsRequest, context: Any):
        s = self.s
        s.requests.append(request)
        match = build_filter(request.whitelist, request.blacklist)
        since = request.since.ToNanoseconds() if request.HasField("since") else None
        with s.cond:
            items = [f for f in s.flows if (since is None or f.time.ToNanoseconds() >= since) and match(f)]
            pos = len(s.flows)
        if request.number and since is None:
            items = items[-request.number:]
        yield opb.GetFlowsResponse(node_status=relay_pb2.NodeStatusEvent(
            state_change=relay_pb2.NODE_CONNECTED, node_names=["n1", "n2"]))
        for f in items:
            yield opb.GetFlowsResponse(flow=f, node_name=f.node_name, time=f.time)
        if not request.follow:
            return
        while context.is_active() and not s.stopping:
            with s.cond:
                if pos >= len(s.flows):
                    s.cond.wait(0.2)
                new, pos = s.flows[pos:], len(s.flows)
            for f in new:
                if match(f):
                    yield opb.GetFlowsResponse(flow=f, node_name=f.node_name, time=f.time)

    def ServerStatus(self, request, context):
        return opb.ServerStatusResponse(num_flows=len(self.s.flows), max_flows=4095,
                                        seen_flows=len(self.s.flows), version="flowserver",
                                        num_connected_nodes=UInt32Value(value=2),
                                        num_unavailable_nodes=UInt32Value(value=0))

    def GetNodes(self, request, context):
        return opb.GetNodesResponse(nodes=[opb.Node(name=n, state=relay_pb2.NODE_CONNECTED)
                                           for n in ("n1", "n2")])

    def GetNamespaces(self, request, context):
        nss = sorted({ep.namespace for f in self.s.flows for ep in (f.source, f.destination)
                      if ep.namespace})
        return opb.GetNamespacesResponse(namespaces=[opb.Namespace(cluster="default", namespace=n)
                                                     for n in nss])


class FlowServer:
    def __init__(self, port: int, flows: Iterable[fpb.Flow] = ()) -> None:
        self.port = port
        self.flows: list[fpb.Flow] = list(flows)
        self.requests: list[opb.GetFlowsRequest] = []
        self.cond = threading.Condition()
        self.stopping = False
        self.server: grpc.Server | None = None

    def start(self) -> "FlowServer":
        self.stopping = False
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        observer_pb2_grpc.add_ObserverServicer_to_server(_Observer(self), self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()
        return self

    def stop(self) -> None:
        self.stopping = True
        with self.cond:
            self.cond.notify_all()
        if self.server is not None:
            self.server.stop(grace=0).wait(5)
            self.server = None

    def push(self, *flows: fpb.Flow) -> None:
        with self.cond:
            self.flows.extend(flows)
            self.cond.notify_all()


# --- the UI as a real process -----------------------------------------------------

BIN = Path(sys.executable).parent


class UIProc:
    """`webb-ui` started as users start it, on a free port."""

    def __init__(self, server: str, port: int, log: Path, extra: list[str] | None = None) -> None:
        self.port = port
        self.log = log
        self.args = [str(BIN / "webb-ui"), "--listen-address", f"127.0.0.1:{port}",
                     "--server", server, *(extra or [])]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "UIProc":
        self.proc = subprocess.Popen(self.args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"webb-ui exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if self.get("/healthz")["status"] == "ok":
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"webb-ui not up after {timeout}s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def get(self, path: str, params: Any = None, timeout: float = 10.0) -> Any:
        url = self.url + path + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())

    def get_status(self, path: str, params: Any = None) -> tuple[int, Any]:
        try:
            return 200, self.get(path, params)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def events(self, params: Any = None, timeout: float = 10.0) -> Iterator[tuple[str, Any]]:
        """Server-sent events of /api/events as (event, data) pairs."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        q = urllib.parse.urlencode(params or {}, doseq=True)
        conn.request("GET", "/api/events" + ("?" + q if q else ""))
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        event, data = "message", []
        try:
            while True:
                line = resp.fp.readline()
                if not line:
                    return
                line = line.decode().rstrip("\n")
                if not line:
                    if data:
                        yield event, json.loads("\n".join(data))
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
        finally:
            conn.close()

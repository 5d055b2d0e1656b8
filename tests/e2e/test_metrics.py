"""webb-metrics end to end: two real agents on network-namespace nodes, the relay in front,
real traffic, two exporters (one on the relay with the demo's option set, one per-node on
an agent), and a real Prometheus scraping both and answering PromQL for every metric
family and for every panel of the Grafana dashboards.

Families that need flows of a particular kind (drops, policy verdicts, L7 DNS and HTTP)
are listed in DEPENDS_ON_DATAPATH with a test on the agents' own flows: `traffic` makes
every kind (a denied connection, a policed one, HTTP calls to an endpoint with L7
visibility, DNS queries to a real dnsmasq), and a family whose flows the agents do not
hold fails the test that needs it, naming what is missing."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support import (lab_prefix, BIN, NO_BDP, ROOT, AgentProc, free_port, pod_endpoint, run_in,
                     start_in, wait_for, write_endpoints)
from webb.api.flow import flow_pb2 as fpb
from webb.netlab import NetLab
from webb_metrics.flowinfo import drop_reason_name, flow_protocol
from webb_metrics.presets import DASHBOARDS, command_line

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

PREFIX = lab_prefix("wtm")
DASHBOARD_DIR = ROOT / "charts" / "webb" / "dashboards"
PROMETHEUS = "/usr/bin/prometheus"

# Metric families that exist only once the datapath produces their flows:
# metric name prefix -> (what is missing, does an agent flow count for it).
DEPENDS_ON_DATAPATH: dict[str, tuple[str, Callable[[fpb.Flow], bool]]] = {
    "hubble_drop_total": ("drop flows (verdict DROPPED)", lambda f: f.verdict == fpb.DROPPED),
    "hubble_dns_": ("L7 DNS flows", lambda f: f.l7.HasField("dns")),
    "hubble_http_": ("L7 HTTP responses", lambda f: f.l7.HasField("http") and f.l7.type == fpb.RESPONSE),
    "hubble_policy_verdicts_total": ("policy-verdict or L7 flows",
                                     lambda f: f.event_type.type in (5, 129)),
}


def datapath_family(expr: str) -> str:
    """The DEPENDS_ON_DATAPATH key an expression needs, or ""."""
    for prefix in DEPENDS_ON_DATAPATH:
        if re.search(r"\b" + re.escape(prefix), expr):
            return prefix
    return ""


def require_produced(expr: str, produced: set[str]) -> None:
    """Fails (not skips) when the traffic did not give the agents the flows expr needs."""
    family = datapath_family(expr)
    if family and family not in produced:
        pytest.fail(f"the datapath produced no {DEPENDS_ON_DATAPATH[family][0]} for {expr}")


# The per-node exporter also runs the families outside the dashboards' set, with pod
# labels so that a deleted pod's series have something to be removed by.
AGENT_EXTRA = ("flows-to-world:port;labelsContext=source_namespace,source_pod",
               "policy:sourceContext=pod")


# -- processes -----------------------------------------------------------------------------

class Proc:
    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name, self.args, self.log = name, args, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Proc":
        self.proc = subprocess.Popen(self.args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        return self

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def http_get(url: str, timeout: float = 5.0, accept: str = "") -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Relay(Proc):
    def __init__(self, workdir: Path, peer_service: str, port: int | None = None) -> None:
        self.port = port or free_port()
        super().__init__("relay", [str(BIN / "webb-relay"), "--listen-address", f"127.0.0.1:{self.port}",
                                   "--peer-service", peer_service, "--reconnect-backoff-min", "200ms",
                                   "--reconnect-backoff-max", "1s"], workdir / f"relay-{self.port}.log")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Relay":
        super().start()
        with grpc.insecure_channel(self.address, options=NO_BDP) as ch:
            health = health_pb2_grpc.HealthStub(ch)

            def serving() -> bool:
                self.check()
                r = health.Check(health_pb2.HealthCheckRequest(service="observer.Observer"), timeout=1)
                return r.status == health_pb2.HealthCheckResponse.SERVING
            wait_for(serving, 20, 0.1, "relay health")
        return self


class Exporter(Proc):
    def __init__(self, workdir: Path, name: str, server: str, extra_metrics=(), *flags: str) -> None:
        self.port = free_port()
        args = command_line(server=server, listen=f"127.0.0.1:{self.port}",
                            metrics=DASHBOARDS + tuple(extra_metrics))
        args[0] = str(BIN / "webb-metrics")
        super().__init__(name, [*args, *flags], workdir / f"{name}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Exporter":
        self.started_ns = time.time_ns()  # it counts flows from its start on
        super().start()

        def connected() -> bool:
            self.check()
            try:
                code, body = http_get(self.url + "/healthz", 1)
            except OSError:
                return False
            return code == 200 and json.loads(body)["connected"]
        wait_for(connected, 20, 0.1, f"{self.name} connected")
        return self

    def metrics(self) -> dict[str, float]:
        code, body = http_get(self.url + "/metrics")
        assert code == 200
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                out[series] = float(value)
        return out

    def value(self, family: str, **labels: str) -> float:
        """Sum over the series of a family whose labels include `labels`."""
        total = 0.0
        want = [f'{k}="{v}"' for k, v in labels.items()]
        for series, v in self.metrics().items():
            if (series == family or series.startswith(family + "{")) and all(w in series for w in want):
                total += v
        return total


class Prometheus(Proc):
    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        cfg = workdir / "prometheus.yml"
        static = "".join(
            f"  - targets: ['{t}']\n    labels: {{cluster: webb-e2e, mode: {mode}}}\n"
            for mode, t in targets.items())
        cfg.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                       "scrape_configs:\n- job_name: webb-metrics\n  static_configs:\n" + static)
        super().__init__("prometheus", [
            PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--enable-feature=exemplar-storage",
            "--storage.tsdb.retention.time=1h", "--log.level=warn"], workdir / "prometheus.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Prometheus":
        super().start()

        def ready() -> bool:
            self.check()
            try:
                return http_get(self.url + "/-/ready", 1)[0] == 200
            except OSError:
                return False
        wait_for(ready, 30, 0.2, "prometheus ready")
        return self

    def api(self, path: str, **params: str) -> object:
        code, body = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}", 10)
        doc = json.loads(body)
        if doc.get("status") != "success":
            raise AssertionError(f"prometheus {path} {params}: {doc.get('error', body)}")
        return doc["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def poll(self, expr: str, ok: Callable[[list[dict]], bool], timeout: float = 20.0) -> list[dict]:
        last: list[dict] = []

        def check() -> bool:
            nonlocal last
            self.check()
            last = self.query(expr)
            return ok(last)
        try:
            wait_for(check, timeout, 0.5, expr)
        except AssertionError:
            raise AssertionError(f"PromQL {expr!r} never satisfied; last result: {last}") from None
        return last


# -- the cluster ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("metrics")


@pytest.fixture(scope="module")
def lab():
    lab = NetLab(PREFIX)
    lab.cleanup()
    try:
        n1, n2 = lab.add_node("n1", 1), lab.add_node("n2", 2)
        lab.add_pod(n1, "client", 10)
        lab.add_pod(n1, "server", 11)
        lab.add_pod(n1, "tmp", 12)
        lab.add_pod(n2, "cart", 10)
        lab.add_pod(n2, "dns", 11)
        lab.add_world()
        yield lab
    finally:
        lab.cleanup()


HTTP_PORT = 8090  # parsed at L7 on server (its visibility annotation)
L7_TRAFFIC = str(ROOT / "tests" / "helpers" / "l7_traffic.py")


def endpoint_list(lab: NetLab, without: tuple[str, ...] = ()) -> list[dict]:
    p = lab.pods
    server = pod_endpoint(p["server"], "server", namespace="demo")
    server["annotations"] = {"policy.cilium.io/proxy-visibility": f"<Ingress/{HTTP_PORT}/TCP/HTTP>"}
    eps = [pod_endpoint(p["client"], "client", namespace="demo"), server,
           pod_endpoint(p["tmp"], "tmp", namespace="demo"),
           pod_endpoint(p["cart"], "cart", namespace="shop"),
           pod_endpoint(p["dns"], "kube-dns", namespace="kube-system")]
    return [e for e in eps if e["name"] not in without]


def write_cluster(lab: NetLab, path: Path, agents: dict[str, AgentProc], without=()) -> None:
    nodes = [{"name": n, "ips": [lab.nodes[n].ip], "agent_address": a.address} for n, a in agents.items()]
    write_endpoints(path, endpoint_list(lab, without), nodes)


@pytest.fixture(scope="module")
def cluster(lab, workdir):
    eps = workdir / "endpoints.yaml"
    agents = {n: AgentProc(workdir, n, lab.nodes[n].netns, eps) for n in ("n1", "n2")}
    write_cluster(lab, eps, agents)
    try:
        with ThreadPoolExecutor(2) as pool:  # bcc compiles for seconds: start both at once
            list(pool.map(lambda a: a.start(), agents.values()))
        agents["n1"].wait_attached(["client", "server", "tmp"])
        agents["n2"].wait_attached(["cart", "dns"])
        yield agents, eps
    finally:
        for a in agents.values():
            a.stop()


@pytest.fixture(scope="module")
def relay(cluster, workdir):
    agents, _ = cluster
    r = Relay(workdir, agents["n1"].address)
    try:
        yield r.start()
    finally:
        r.stop()


@pytest.fixture(scope="module")
def exporters(cluster, relay, workdir):
    """'relay': the demo's command line against the relay. 'agent': per-node mode on n1."""
    agents, _ = cluster
    ex = {"relay": Exporter(workdir, "metrics-relay", relay.address),
          "agent": Exporter(workdir, "metrics-agent", agents["n1"].address, AGENT_EXTRA,
                            "--series-grace-period", "2s")}
    try:
        for e in ex.values():
            e.start()
        yield ex
    finally:
        for e in ex.values():
            e.stop()


@pytest.fixture(scope="module")
def prometheus(exporters, workdir):
    p = Prometheus(workdir, {mode: f"127.0.0.1:{e.port}" for mode, e in exporters.items()})
    try:
        yield p.start()
    finally:
        p.stop()


def tcp(lab: NetLab, src: str, dst_ip: str, port: int, connections: int = 1, server_ns: str = "",
        ipv6: bool = False) -> None:
    srv = start_in(lab, server_ns, "tcp-server", str(port), "--count", str(connections),
                   *(["--ipv6"] if ipv6 else []))
    for _ in range(connections):
        run_in(lab, lab.pods[src].netns, "tcp-client", dst_ip, str(port), "--writes", "20", "--size", "100")
    assert srv.wait(10) == 0


def refused(lab: NetLab, src: str, dst_ip: str, port: int) -> None:
    """A TCP connection to a closed port: SYN answered by RST."""
    lab.exec(lab.pods[src].netns, sys.executable, "-c",
             "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)\n"
             "except ConnectionRefusedError:\n pass\nelse:\n sys.exit('connected?')", dst_ip, str(port))


@pytest.fixture(scope="module")
def traffic(lab, cluster, exporters, prometheus):
    """Bounded real traffic of every kind the datapath sees."""
    p = lab.pods
    tcp(lab, "client", p["cart"].ip4, 8080, connections=3, server_ns=p["cart"].netns)  # across nodes
    tcp(lab, "client", p["server"].ip4, 8081, server_ns=p["server"].netns)             # same node
    tcp(lab, "client", p["cart"].ip6, 8086, server_ns=p["cart"].netns, ipv6=True)
    refused(lab, "client", p["server"].ip4, 9)
    udp = start_in(lab, p["cart"].netns, "udp-echo", "5353", "--count", "3")
    run_in(lab, p["client"].netns, "udp-send", p["cart"].ip4, "5353", "--count", "3")
    assert udp.wait(10) == 0
    lab.exec(p["client"].netns, "ping", "-c", "2", "-i", "0.2", "-W", "1", p["cart"].ip4)
    lab.exec(p["client"].netns, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", p["cart"].ip6)
    tcp(lab, "tmp", lab.world_ip, 443, server_ns=lab.world_ns)                        # to the world
    lab.exec(p["tmp"].netns, "ping", "-c", "1", "-W", "1", lab.world_ip)
    policed(lab, cluster[0]["n1"])  # n1: both exporters (relay, per-node on n1) see it
    l7(lab)
    return p


def l7(lab: NetLab) -> None:
    """HTTP calls to server's L7-visible port, DNS queries to a real dnsmasq on n2."""
    p = lab.pods
    procs = []
    try:
        web = lab.popen(p["server"].netns, sys.executable, L7_TRAFFIC, "http-server",
                        str(HTTP_PORT), "--timeout", "60", stdout=subprocess.PIPE, text=True)
        procs.append(web)
        assert web.stdout.readline().strip() == "ready"
        procs.append(lab.popen(
            p["dns"].netns, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
            f"--listen-address={p['dns'].ip4}", "--bind-interfaces", "--local=/test/",
            "--local-ttl=30", f"--host-record=cart.test,{p['cart'].ip4}", "--log-facility=-",
            "--user=root", "--pid-file=", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        reqs = json.dumps([{"path": "/ok"}, {"path": "/status/404"}, {"path": "/status/500"}])
        lab.exec(p["client"].netns, sys.executable, L7_TRAFFIC, "http-client", p["server"].ip4,
                 str(HTTP_PORT), "--requests", reqs, "--host-header", f"server:{HTTP_PORT}")

        def query(name: str) -> None:
            lab.exec(p["client"].netns, sys.executable, L7_TRAFFIC, "dns-query", p["dns"].ip4,
                     name, "A")
        for attempt in range(30):  # dnsmasq takes a moment to listen
            try:
                query("cart.test")
                break
            except RuntimeError:
                if attempt == 29:
                    raise
                time.sleep(0.3)
        query("nope.test")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)


SERVER_POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-from-client, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: client}
    toPorts:
    - ports: [{port: "8082", protocol: TCP}]
"""


def policed(lab: NetLab, agent: AgentProc) -> None:
    """A policy on server for a while: client's connection is allowed (a policy
    verdict), tmp's is denied (a Policy denied drop). Removed again for the tests after."""
    from webb.api.admin import admin_pb2 as apb
    agent.admin.ApplyPolicies(apb.ApplyPoliciesRequest(documents=SERVER_POLICY), timeout=10)
    try:
        tcp(lab, "client", lab.pods["server"].ip4, 8082, server_ns=lab.pods["server"].netns)
        lab.exec(lab.pods["tmp"].netns, sys.executable, "-c",
                 "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], 8082), 1)\n"
                 "except OSError:\n pass\nelse:\n sys.exit('the policy let tmp in')",
                 lab.pods["server"].ip4)
    finally:
        agent.admin.DeletePolicy(apb.DeletePolicyRequest(namespace="demo", name="server-from-client"),
                                 timeout=10)


@pytest.fixture(scope="module")
def produced(cluster, traffic) -> set[str]:
    """The DEPENDS_ON_DATAPATH families the agents have flows for after the traffic."""
    agents, _ = cluster

    def families() -> set[str]:
        flows = [f for a in agents.values() for f in a.flows()]
        return {k for k, (_, has) in DEPENDS_ON_DATAPATH.items() if any(has(f) for f in flows)}
    # The agents drain their perf buffers on a timer: wait until every family is there,
    # bounded; one that never comes fails the tests needing it (require_produced).
    deadline = time.monotonic() + 15
    got = families()
    while got != set(DEPENDS_ON_DATAPATH) and time.monotonic() < deadline:
        time.sleep(0.1)
        got = families()
    return got


# -- the exporter's own contract -------------------------------------------------------------

def agent_count(agents, names, pred) -> int:
    return sum(1 for n in names for f in agents[n].flows() if pred(f))


def requests_to(port: int) -> Callable[[fpb.Flow], bool]:
    return lambda f: (f.verdict == fpb.FORWARDED and f.l4.TCP.destination_port == port
                      and f.l4.HasField("TCP") and f.HasField("is_reply") and not f.is_reply.value)


def counts_equal(exporter: Exporter, agents, names, port: int, what: str, timeout: float = 15) -> int:
    """Waits until the exporter's port-distribution counter for `port` equals the number of
    request flows to `port` that the agents themselves hold; returns that number."""
    last: list[tuple[float, int]] = []

    def equal() -> bool:
        want = agent_count(agents, names, requests_to(port))
        got = exporter.value("hubble_port_distribution_total", port=str(port))
        last[:] = [(got, want)]
        return want > 0 and got == want
    try:
        wait_for(equal, timeout, 0.2, what)
    except AssertionError:
        raise AssertionError(f"{what}: exporter counted {last[0][0]}, agents hold {last[0][1]}") from None
    return last[0][1]


def test_counts_equal_the_flows_of_the_agents(cluster, exporters, traffic):
    """Every flow counted exactly once: the port-distribution counter for 8080 equals the
    agents' own request flows to 8080 (both nodes through the relay, n1 per node)."""
    agents, _ = cluster
    n_all = counts_equal(exporters["relay"], agents, ("n1", "n2"), 8080, "relay exporter, port 8080")
    n_n1 = counts_equal(exporters["agent"], agents, ("n1",), 8080, "agent exporter, port 8080")
    assert n_all > n_n1 >= 3


@dataclass
class Check:
    family: str
    expr: str
    what: str = "at least one series"
    ok: Callable[[list[dict]], bool] = lambda r: bool(r) and all(float(s["value"][1]) > 0 for s in r)


R = 'mode="relay"'
A = 'mode="agent"'
CHECKS = [
    Check("flow", f'hubble_flows_processed_total{{{R}, protocol="TCP", type="Trace", subtype="from-endpoint", '
                  'verdict="FORWARDED", source_namespace="demo", destination_namespace="shop", '
                  'source="client-v1", destination="cart-v1"}'),
    Check("flow", f'hubble_flows_processed_total{{{R}, protocol="TCP", type="Trace", subtype="to-endpoint"}}'),
    Check("flow", f'hubble_flows_processed_total{{{R}, protocol="UDP"}}'),
    Check("flow", f'hubble_flows_processed_total{{{R}, protocol="ICMPv6"}}'),
    Check("flow", f'hubble_flows_processed_total{{{R}, destination="reserved:world"}}'),
    Check("tcp", f'hubble_tcp_flags_total{{{R}, flag="SYN", family="IPv4", source_namespace="demo"}}'),
    Check("tcp", f'hubble_tcp_flags_total{{{R}, flag="SYN-ACK", family="IPv4"}}'),
    Check("tcp", f'hubble_tcp_flags_total{{{R}, flag="FIN"}}'),
    Check("tcp", f'hubble_tcp_flags_total{{{R}, flag="RST"}}'),
    Check("tcp", f'hubble_tcp_flags_total{{{R}, flag="SYN", family="IPv6"}}'),
    Check("icmp", f'hubble_icmp_total{{{R}, family="IPv4", type="EchoRequest", source_namespace="demo"}}'),
    Check("icmp", f'hubble_icmp_total{{{R}, family="IPv4", type="EchoReply"}}'),
    Check("icmp", f'hubble_icmp_total{{{R}, family="IPv6", type="EchoRequest"}}'),
    Check("port-distribution", f'hubble_port_distribution_total{{{R}, protocol="TCP", port="8080", '
                               'destination_namespace="shop"}'),
    Check("port-distribution", f'hubble_port_distribution_total{{{R}, protocol="UDP", port="5353"}}'),
    Check("port-distribution", f'hubble_port_distribution_total{{{R}, protocol="ICMPv4", port="0"}}'),
    Check("flows-to-world", f'hubble_flows_to_world_total{{{A}, protocol="TCP", verdict="FORWARDED", '
                            'port="443", source_namespace="demo", source_pod="tmp"}'),
    Check("flows-to-world", f'hubble_flows_to_world_total{{{A}, protocol="ICMPv4", port=""}}'),
    Check("lost-events", f'hubble_lost_events_total{{{R}, source="perf_event_ring_buffer"}}',
          "a series at 0", lambda r: len(r) == 1 and float(r[0]["value"][1]) == 0),
    Check("exporter", 'webb_metrics_source_up == 1', "both exporters connected", lambda r: len(r) == 2),
    Check("exporter", f'process_resident_memory_bytes{{{R}}}'),
    # -- only once the datapath produces their flows (DEPENDS_ON_DATAPATH) --
    Check("drop", f'hubble_drop_total{{{R}, source_namespace="demo"}}'),
    Check("dns", f'hubble_dns_queries_total{{{R}}}'),
    Check("dns", f'hubble_dns_responses_total{{{R}}}'),
    Check("httpV2", f'hubble_http_requests_total{{{R}, reporter=~"server|client"}}'),
    Check("httpV2", f'hubble_http_request_duration_seconds_count{{{R}}}'),
    Check("policy", f'hubble_policy_verdicts_total{{{A}}}'),
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: f"{c.family}:{c.expr[:60]}")
def test_family_through_prometheus(prometheus, produced, check):
    require_produced(check.expr, produced)
    prometheus.poll(check.expr, check.ok)


def test_drop_reasons_are_the_agents(cluster, exporters, prometheus, produced):
    """Every drop reason in the agents' flows is a hubble_drop_total reason, same name."""
    require_produced("hubble_drop_total", produced)
    agents, _ = cluster
    since = exporters["relay"].started_ns
    want = {(drop_reason_name(f), flow_protocol(f)) for a in agents.values() for f in a.flows()
            if f.verdict == fpb.DROPPED and f.time.ToNanoseconds() >= since}

    def have() -> set:
        r = prometheus.query('sum by (reason, protocol) (hubble_drop_total{mode="relay"})')
        return {(s["metric"]["reason"], s["metric"]["protocol"]) for s in r}
    wait_for(lambda: want <= have(), 15, 0.5, f"drop reasons {want}")


def test_openmetrics_and_health(exporters, traffic):
    e = exporters["relay"]
    code, body = http_get(e.url + "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert code == 200 and body.endswith("# EOF\n")
    assert "# TYPE hubble_flows_processed counter" in body
    code, body = http_get(e.url + "/healthz")
    assert code == 200 and json.loads(body)["connected"] is True


# -- dashboards ---------------------------------------------------------------------------------

def dashboard_panels():
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        board = json.loads(path.read_text())
        for p in board["panels"]:
            for panel in (p.get("panels", []) if p["type"] == "row" else [p]):
                for t in panel["targets"]:
                    yield path.stem, board, panel["title"], t["expr"]


def resolve_variables(prom: Prometheus, board: dict) -> dict[str, str]:
    """What Grafana would put in for each variable: All (its allValue) where allowed,
    else the first value of label_values(...); custom variables their current value."""
    values: dict[str, str] = {}
    for v in board["templating"]["list"]:
        if v["type"] == "custom":
            values[v["name"]] = v["current"]["value"]
        elif v["type"] == "query":
            if v.get("includeAll"):
                values[v["name"]] = v["allValue"]
                continue
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["definition"].strip())
            assert m, v["definition"]
            selector = substitute(m.group(1), values)
            found = sorted({s.get(m.group(2), "") for s in prom.api("series", **{"match[]": selector})} - {""})
            values[v["name"]] = found[0] if found else ".*"
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "5m")
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    assert "$" not in expr, f"unresolved variable in {expr}"
    return expr


def dashboard_params():
    for stem, board, title, expr in dashboard_panels():
        yield pytest.param(board, title, expr, id=f"{stem}:{title}")


@pytest.fixture(scope="module")
def scraped(prometheus, traffic):
    """Prometheus holds the traffic's data: ICMPv6, the last family the traffic made."""
    prometheus.poll('hubble_icmp_total{mode="relay", family="IPv6"}', bool, timeout=30)
    prometheus.poll('hubble_flows_to_world_total{mode="agent"}', bool, timeout=10)
    return prometheus


@pytest.mark.parametrize("board,title,expr", list(dashboard_params()))
def test_dashboard_panel_returns_data(scraped, produced, board, title, expr):
    require_produced(expr, produced)
    q = substitute(expr, resolve_variables(scraped, board))
    result = scraped.poll(q, bool, timeout=10)
    assert result, f"{title}: {q} returned nothing"


# -- series of gone pods, and reconnection --------------------------------------------------------

def test_series_of_a_deleted_pod_go_after_the_grace_period(lab, cluster, exporters, traffic):
    agents, eps = cluster
    e = exporters["agent"]
    wait_for(lambda: e.value("hubble_flows_to_world_total", source_pod="tmp") > 0, 10, 0.2, "tmp's series")
    write_cluster(lab, eps, agents, without=("tmp",))
    deleted_at = time.monotonic()
    time.sleep(1.0)
    assert e.value("hubble_flows_to_world_total", source_pod="tmp") > 0, "removed before the grace period"
    wait_for(lambda: e.value("hubble_flows_to_world_total", source_pod="tmp") == 0, 15, 0.2,
             "tmp's series removed")
    assert time.monotonic() - deleted_at >= 2.0
    assert e.value("webb_metrics_series_removed_total") >= 1
    # Series of pods still there, and unbound series, stay.
    assert e.value("hubble_port_distribution_total", port="8080") > 0


def test_relay_restart_neither_loses_nor_double_counts(lab, cluster, relay, exporters, traffic):
    agents, _ = cluster
    e = exporters["relay"]
    p = lab.pods
    # Flows just before the restart fall inside the replay overlap: they come again.
    tcp(lab, "client", p["cart"].ip4, 8089, connections=2, server_ns=p["cart"].netns)
    for port in (8080, 8089):
        counts_equal(e, agents, ("n1", "n2"), port, f"before the restart, port {port}")
    relay.stop()
    wait_for(lambda: e.value("webb_metrics_source_up") == 0, 10, 0.1, "exporter noticing")
    # Traffic while the relay is down: the agents keep it in their rings.
    tcp(lab, "client", p["cart"].ip4, 8090, connections=2, server_ns=p["cart"].netns)
    relay.start()
    wait_for(lambda: e.value("webb_metrics_source_up") == 1, 20, 0.2, "exporter reconnected")
    tcp(lab, "client", p["cart"].ip4, 8091, server_ns=p["cart"].netns)
    for port in (8090, 8091):
        counts_equal(e, agents, ("n1", "n2"), port, f"port {port}: counted once, none lost")
    # A flow made after the reconnect, once counted, shows the stream has delivered
    # everything before it: a replayed duplicate would have arrived (no sleep).
    tcp(lab, "client", p["cart"].ip4, 8092, server_ns=p["cart"].netns)
    counts_equal(e, agents, ("n1", "n2"), 8092, "port 8092: a flow after the replay")
    for port in (8080, 8089, 8090):
        counts_equal(e, agents, ("n1", "n2"), port, f"port {port}: not counted again", timeout=2)
    assert e.value("webb_metrics_source_reconnects_total") >= 1
    assert e.value("webb_metrics_flows_received_total", outcome="duplicate") > 0

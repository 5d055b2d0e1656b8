"""L7 (HTTP) policy end to end: real eBPF steering connections into the agent's
transparent proxy, a real HTTP server and clients in their own namespaces on the
same node and on another node, policies applied through the admin API, answers
checked at the client and the L7 flows read back over gRPC."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp

from support import AgentProc, lab_prefix, pod_endpoint, wait_for
from test_metrics import Exporter
from webb.api.admin import admin_pb2 as apb
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.netlab import NetLab
from webb_cli.formats.monitor_line import monitor_line

pytestmark = pytest.mark.root

PREFIX = lab_prefix("l7p")
HELPERS = Path(__file__).resolve().parent.parent / "helpers"
PORT = 9080
# Cilium's monitor API policy match types, as hubble_policy_verdicts_total names them.
CILIUM_MATCH_TYPES = {0: "none", 1: "l3-only", 2: "l3-l4", 3: "l4-only", 4: "all"}

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-l7, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "9080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/public(/.*)?"}
        - {method: GET, path: "/chunked"}
        - {method: GET, path: "/cut"}
        - method: POST
          path: /upload
          headers: ["X-Token: yes"]
"""


def get(path: str, extra: str = "") -> str:
    return f"GET {path} HTTP/1.1\r\nHost: server:9080\r\n{extra}\r\n"


def post(path: str, body: str, extra: str = "") -> str:
    return (f"POST {path} HTTP/1.1\r\nHost: server:9080\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n{body}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("l7policy")
    (d / "policies").mkdir()
    return d


@pytest.fixture(scope="module")
def lab():
    lab = NetLab(PREFIX)
    lab.cleanup()
    procs: list[subprocess.Popen] = []
    try:
        n1, n2 = lab.add_node("n1", 1), lab.add_node("n2", 2)
        for i, name in enumerate(("client", "server", "other"), start=10):
            lab.add_pod(n1, name, i)
        lab.add_pod(n2, "remote", 10)
        srv = lab.popen(lab.pods["server"].netns, sys.executable, str(HELPERS / "http_server.py"),
                        str(PORT), stdout=subprocess.PIPE, text=True)
        procs.append(srv)
        assert srv.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        yield lab
    finally:
        for p in procs:
            p.kill()
            p.wait()
        lab.cleanup()


def start_agent(lab: NetLab, workdir: Path, *extra: str) -> AgentProc:
    eps = workdir / "endpoints.yaml"
    p = lab.pods
    eps.write_text(yaml.safe_dump({"endpoints": [
        pod_endpoint(p["client"], "client"),
        # Passive L7 visibility on the same port: it must step aside for the proxy.
        {**pod_endpoint(p["server"], "server"),
         "annotations": {"policy.cilium.io/proxy-visibility": "<Ingress/9080/TCP/HTTP>"}},
        pod_endpoint(p["other"], "other"), pod_endpoint(p["remote"], "client", version="v2")],
        "nodes": [{"name": "n1", "ips": [lab.nodes["n1"].ip]},
                  {"name": "n2", "ips": [lab.nodes["n2"].ip]}]}))
    a = AgentProc(workdir, "n1", lab.nodes["n1"].netns, eps,
                  extra=["--policy-dir", str(workdir / "policies"), "--l7-proxy-idle-timeout",
                         "3", *extra])
    a.start()
    try:
        a.wait_attached(["client", "server", "other"])
    except BaseException:
        a.stop()
        raise
    return a


@pytest.fixture(scope="module")
def agent(lab, workdir):
    a = start_agent(lab, workdir)
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def policy(agent):
    agent.admin.ApplyPolicies(apb.ApplyPoliciesRequest(documents=POLICY), timeout=10)
    yield
    agent.admin.DeletePolicy(apb.DeletePolicyRequest(name="server-l7", namespace="demo"),
                             timeout=10)


def http(lab: NetLab, pod: str, steps: list, host: str | None = None,
         timeout: float = 3.0) -> list:
    host = host or lab.pods["server"].ip4
    out = lab.exec(lab.pods[pod].netns, sys.executable, str(HELPERS / "http_client.py"), host,
                   str(PORT), str(timeout), timeout=60, input=json.dumps(steps))
    return json.loads(out.stdout)


def statuses(results: list) -> list:
    return [r["status"] if isinstance(r, dict) and "status" in r else r for r in results]


def peer(response: dict) -> str:
    """The client address the server saw (its socket is dual-stack)."""
    return response["headers"]["x-peer"].removeprefix("::ffff:")


def now_ts() -> Timestamp:
    t = Timestamp()
    t.GetCurrentTime()
    return t


def l7_flows(agent: AgentProc, since: Timestamp, want: int) -> list[fpb.Flow]:
    def got():
        req = opb.GetFlowsRequest(since=since, whitelist=[fpb.FlowFilter(
            event_type=[fpb.EventTypeFilter(type=129)])])
        fs = [r.flow for r in agent.observer.GetFlows(req, timeout=10) if r.HasField("flow")]
        return fs if len(fs) >= want else None
    return wait_for(got, 10, 0.2, f"{want} L7 flows")


def agent_fds(agent: AgentProc) -> int:
    return len(os.listdir(f"/proc/{agent.proc.pid}/fd"))


# -- tests -------------------------------------------------------------------------------

def test_allow_and_deny_by_method_path_and_header(lab, agent, policy):
    steps = [{"send": get("/public/a")}, {"send": get("/private")},
             {"send": post("/upload", "data", "X-Token: yes\r\n")},
             {"send": post("/upload", "data", "X-Token: no\r\n")},
             {"send": post("/upload", "data")}, {"send": get("/public/b")}]
    for pod, host in (("client", lab.pods["server"].ip4), ("client", lab.pods["server"].ip6),
                      ("remote", lab.pods["server"].ip4)):
        res = http(lab, pod, steps, host)
        assert statuses(res) == [200, 403, 200, 403, 403, 200], (pod, host, res)
        assert res[1]["body"] == "Access denied\r\n"
        assert res[1]["headers"]["content-type"] == "text/plain"
        assert res[0]["body"].startswith("GET /public/a ")
        assert res[2]["body"].endswith("body=4")
        want = {lab.pods["server"].ip6: lab.pods["client"].ip6}.get(host, lab.pods[pod].ip4)
        assert peer(res[0]) == want, (pod, host, res[0])  # the proxy kept the client's address
    # Not allowed at L3 at all: dropped in the kernel, as without L7 rules.
    assert http(lab, "other", [{"send": get("/public/a")}], timeout=1.5) == ["timeout"]


def test_flows_name_the_verdict_and_the_deciding_policy(lab, agent, policy):
    t0 = now_ts()
    assert statuses(http(lab, "client", [{"send": get("/public/x")}, {"send": get("/nope")}])) \
        == [200, 403]
    fs = l7_flows(agent, t0, 4)
    by = {(f.l7.type, f.l7.http.url, f.l7.http.code): f for f in fs}
    url = "http://server:9080"
    req_ok = by[(fpb.REQUEST, f"{url}/public/x", 0)]
    req_no = by[(fpb.REQUEST, f"{url}/nope", 0)]
    resp_no = by[(fpb.RESPONSE, f"{url}/nope", 403)]
    resp_ok = by[(fpb.RESPONSE, f"{url}/public/x", 200)]
    assert req_ok.verdict == fpb.FORWARDED and req_no.verdict == fpb.DROPPED
    assert resp_no.verdict == fpb.FORWARDED and resp_ok.verdict == fpb.FORWARDED
    assert req_ok.Type == fpb.L7 and req_ok.event_type.type == 129
    assert req_ok.source.pod_name == "client" and req_ok.destination.pod_name == "server"
    assert resp_ok.source.pod_name == "server" and resp_ok.is_reply
    assert req_no.traffic_direction == fpb.INGRESS == resp_no.traffic_direction
    assert [p.name for p in req_no.ingress_denied_by] == ["server-l7"]
    assert [p.name for p in req_ok.ingress_allowed_by] == ["server-l7"]
    assert req_no.l7.http.method == "GET" and req_no.l7.http.protocol == "HTTP/1.1"
    assert resp_no.l7.latency_ns > 0
    # The server's visibility annotation selects the same port: the proxy's flows are
    # the only L7 flows (the passive capture stepped aside), each message once.
    assert len([f for f in fs if f.l7.http.url == f"{url}/nope"]) == 2
    counters = agent.admin.GetStatus(apb.GetStatusRequest(), timeout=5).counters
    assert counters["l7proxy.requests"] >= 2 and counters["l7proxy.denied"] >= 1
    assert counters.get("l7.http_requests", 0) == 0 and counters.get("l7.http_responses", 0) == 0
    # `webb monitor -t l7` prints them as `cilium monitor -t l7` does.
    assert "<- Request http from " in monitor_line(req_no)
    assert monitor_line(req_no).endswith("verdict Denied GET http://server:9080/nope => 0")
    assert monitor_line(resp_no).endswith("verdict Forwarded GET http://server:9080/nope => 403")


def test_exporter_counts_the_proxy_verdicts_as_the_agent_flows_say(lab, agent, policy, workdir):
    """Issue 17: the exporter's httpV2 and policy families count the proxy's L7 flows
    exactly as the agent holds them (dns is not exercised here: this module has no DNS rule)."""
    exporter = Exporter(workdir, "metrics-l7", agent.address, ("policy",))
    try:
        exporter.start()
        since = Timestamp()
        since.FromNanoseconds(exporter.started_ns)  # the exporter counts from its start on
        assert statuses(http(lab, "client", [{"send": get("/public/metrics")},
                                             {"send": get("/metrics-denied")}])) == [200, 403]
        fs = l7_flows(agent, since, 4)
        url = "http://server:9080"
        # Only this test's flows since the exporter started: the comparison below is exact.
        assert sorted((f.l7.type, f.l7.http.url, f.verdict) for f in fs) == sorted([
            (fpb.REQUEST, f"{url}/public/metrics", fpb.FORWARDED),
            (fpb.REQUEST, f"{url}/metrics-denied", fpb.DROPPED),
            (fpb.RESPONSE, f"{url}/public/metrics", fpb.FORWARDED),
            (fpb.RESPONSE, f"{url}/metrics-denied", fpb.FORWARDED)])
        # What Hubble's handlers make of these flows: httpV2 one series per response
        # (reporter from the direction), policy every access-log flow, match l7/<record>.
        reporter = {fpb.INGRESS: "server", fpb.EGRESS: "client"}
        want_http: dict[tuple, int] = {}
        want_policy: dict[tuple, int] = {}
        for f in fs:
            direction = fpb.TrafficDirection.Name(f.traffic_direction).lower()
            key = (direction, "l7/http", fpb.Verdict.Name(f.verdict).lower())
            want_policy[key] = want_policy.get(key, 0) + 1
            if f.l7.type == fpb.RESPONSE:
                key = (f.l7.http.method, f.l7.http.protocol, str(f.l7.http.code),
                       reporter.get(f.traffic_direction, "unknown"))
                want_http[key] = want_http.get(key, 0) + 1
        assert want_http == {("GET", "HTTP/1.1", "200", "server"): 1,
                             ("GET", "HTTP/1.1", "403", "server"): 1}
        assert want_policy == {("ingress", "l7/http", "forwarded"): 3,
                               ("ingress", "l7/http", "dropped"): 1}

        def wanted() -> tuple[dict, dict, float, float] | None:
            """Also the connection's L3/L4 policy-verdict events (same family), re-read
            each time: the agent reads them from the kernel on its own schedule."""
            req = opb.GetFlowsRequest(since=since, whitelist=[fpb.FlowFilter(
                event_type=[fpb.EventTypeFilter(type=5)])])
            verdicts = [r.flow for r in agent.observer.GetFlows(req, timeout=10)
                        if r.HasField("flow")]
            if not verdicts:
                return None
            # Ingress L7 rules send the connection to the proxy: Cilium's "redirect".
            assert {f.verdict for f in verdicts} == {fpb.REDIRECTED}, verdicts
            policy = dict(want_policy)
            for f in verdicts:
                key = (fpb.TrafficDirection.Name(f.traffic_direction).lower(),
                       CILIUM_MATCH_TYPES[f.policy_match_type], fpb.Verdict.Name(f.verdict).lower())
                policy[key] = policy.get(key, 0) + 1
            return (want_http, policy, float(sum(want_http.values())),
                    float(sum(policy.values())))

        def counted(want: tuple | None) -> tuple | None:
            if want is None:
                return None
            got_http = {k: exporter.value("hubble_http_requests_total", method=k[0],
                                          protocol=k[1], status=k[2], reporter=k[3])
                        for k in want[0]}
            got_policy = {k: exporter.value("hubble_policy_verdicts_total", direction=k[0],
                                            match=k[1], action=k[2]) for k in want[1]}
            return (got_http, got_policy, exporter.value("hubble_http_requests_total"),
                    exporter.value("hubble_policy_verdicts_total"))

        def agree() -> bool:
            want = wanted()
            return want is not None and counted(want) == want
        try:
            wait_for(agree, 15, 0.2, "the exporter to count what the agent's flows say")
        except AssertionError:
            want = wanted()
            assert counted(want) == want
            raise
    finally:
        exporter.stop()


def test_keep_alive_pipelining_and_bodies(lab, agent, policy):
    res = http(lab, "client", [
        {"send": get("/public/1")}, {"send": post("/upload", "x" * 5000)},
        {"send": get("/public/2")}, {"send": get("/chunked")},
        {"pipeline": [get("/public/3"), get("/denied"), post("/upload", "y" * 300000,
                                                              "X-Token: yes\r\n"),
                      get("/public/4")]}])
    assert statuses(res) == [200, 403, 200, 200, 200, 403, 200, 200]
    assert res[3]["body"] == "hello chunked world"
    assert res[6]["body"].endswith("body=300000")
    assert res[7]["body"].startswith("GET /public/4 ")
    # Through the proxy the server still sees the client (transparent both ways).
    assert peer(res[0]) == lab.pods["client"].ip4


def to_proxy_traces(agent: AgentProc, since: Timestamp, want: int) -> list[fpb.Flow]:
    """Trace flows at TO_PROXY (Hubble's event sub type 1) since `since`."""
    def got():
        req = opb.GetFlowsRequest(since=since, whitelist=[fpb.FlowFilter(event_type=[
            fpb.EventTypeFilter(type=4, match_sub_type=True, sub_type=1)])])
        fs = [r.flow for r in agent.observer.GetFlows(req, timeout=10) if r.HasField("flow")]
        return fs if len(fs) >= want else None
    return wait_for(got, 10, 0.2, f"{want} to-proxy traces")


def test_a_steered_connection_is_a_to_proxy_trace(lab, agent, policy):
    """The client's side of a connection steered to the proxy is traced where it went,
    to-proxy with the proxy's port, per connection (its first packet, new TCP flags),
    and never to-endpoint; `webb observe` prints it as hubble does."""
    t0 = now_ts()
    assert statuses(http(lab, "client", [{"send": get("/public/a")},
                                         {"send": get("/private")}])) == [200, 403]
    req = l7_flows(agent, t0, 4)[0]
    sport = req.l4.TCP.source_port if req.l7.type == fpb.REQUEST else req.l4.TCP.destination_port
    port = agent.admin.GetStatus(apb.GetStatusRequest(), timeout=5).counters["l7proxy.port"]
    fs = [f for f in to_proxy_traces(agent, t0, 1) if f.l4.TCP.source_port == sport]
    syn = fs[0]
    assert syn.l4.TCP.flags.SYN and not syn.l4.TCP.flags.ACK
    assert (syn.verdict, syn.trace_observation_point, syn.proxy_port, syn.traffic_direction,
            syn.trace_reason) == (fpb.FORWARDED, fpb.TO_PROXY, port, fpb.INGRESS, fpb.NEW)
    assert syn.source.pod_name == "client" and syn.destination.pod_name == "server"
    assert syn.l4.TCP.destination_port == PORT and not syn.is_reply.value
    # One per new combination of TCP flags of the connection (the connection lasts far
    # less than the 10 s report interval), not one per packet.
    flags = [f.l4.TCP.flags.SerializeToString(deterministic=True) for f in fs]
    assert len(flags) == len(set(flags)) and all(f.proxy_port == port for f in fs)
    req = opb.GetFlowsRequest(since=t0, whitelist=[fpb.FlowFilter(
        event_type=[fpb.EventTypeFilter(type=4)], source_port=[str(sport)])])
    points = {r.flow.trace_observation_point for r in agent.observer.GetFlows(req, timeout=10)
              if r.HasField("flow")}
    # Seen leaving the client (from-endpoint at its interface), then given to the proxy
    # at the server's: never delivered to the server.
    assert points == {fpb.FROM_ENDPOINT, fpb.TO_PROXY}
    out = subprocess.run([str(Path(sys.executable).parent / "webb"), "observe", "--server",
                          agent.address, "--type", "trace:to-proxy", "--from-pod", "demo/client",
                          "--last", "1000"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert any(f":{sport} " in line and " to-proxy FORWARDED (TCP Flags: SYN)" in line
               for line in out.stdout.splitlines()), out.stdout


def test_bad_input_gets_an_answer_and_leaks_nothing(lab, agent, policy):
    before = agent_fds(agent)
    t0 = now_ts()
    res = http(lab, "client", [{"raw": "\x16\x03\x01\x00\x05hello\r\n\r\n"}])
    assert res[0]["raw"].startswith("HTTP/1.1 400 Bad Request\r\n")
    # Not HTTP: still a flow pair, the request DROPPED and the proxy's 400.
    fs = l7_flows(agent, t0, 2)
    assert {(f.l7.type, f.verdict, f.l7.http.code) for f in fs} == {
        (fpb.REQUEST, fpb.DROPPED, 0), (fpb.RESPONSE, fpb.FORWARDED, 400)}
    res = http(lab, "client", [{"raw": get("/public/a", "X-Big: " + "a" * 70000 + "\r\n")}])
    assert res[0]["raw"].startswith("HTTP/1.1 431 ")
    res = http(lab, "client", [{"raw": "GET /public/a HTTP/2.0\r\nHost: x\r\n\r\n"}])
    assert res[0]["raw"].startswith("HTTP/1.1 505 ")
    res = http(lab, "client", [{"raw": get("/public/a", "Content-Length: 1\r\n"
                                                        "Transfer-Encoding: chunked\r\n")}])
    assert res[0]["raw"].startswith("HTTP/1.1 400 ")
    # The server closes in the middle of its answer: so does the proxy.
    res = http(lab, "client", [{"send": get("/cut")}])
    assert res[0]["status"] == 200 and res[0].get("cut")
    # A client that stalls inside its head is closed after the idle timeout (3 s).
    t = time.monotonic()
    res = http(lab, "client", [{"raw": "GET /public/a HTTP/1.1\r\nHost"}], timeout=10)
    assert res == [{"raw": ""}] and 2.5 < time.monotonic() - t < 9
    assert statuses(http(lab, "client", [{"send": get("/public/ok")}])) == [200]
    wait_for(lambda: agent_fds(agent) <= before, 10, 0.2, "the agent's descriptors to be freed")


def test_policy_removed_traffic_goes_direct(lab, agent):
    agent.admin.ApplyPolicies(apb.ApplyPoliciesRequest(documents=POLICY), timeout=10)
    assert statuses(http(lab, "client", [{"send": get("/private")}])) == [403]
    agent.admin.DeletePolicy(apb.DeletePolicyRequest(name="server-l7", namespace="demo"),
                             timeout=10)
    res = http(lab, "client", [{"send": get("/private")}])
    assert statuses(res) == [200] and peer(res[0]) == lab.pods["client"].ip4



# Servers that misbehave right after accepting (tests/helpers/rude_server.py), and
# what a client of the proxy must get from each: the proxy's 503, or the server's own
# early answer, as without the proxy.
RUDE = {"close": (9081, 503), "reset": (9082, 503), "greet": (9083, 503),
        "early": (9084, 429)}
RUDE_POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-rude, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "9081", protocol: TCP}, {port: "9082", protocol: TCP},
              {port: "9083", protocol: TCP}, {port: "9084", protocol: TCP}]
      rules:
        http: [{method: GET}]
"""


def test_upstream_failures_after_accept_get_an_answer_at_once(lab, agent):
    """Servers that close, reset, send something else than HTTP or answer before
    reading, right after accepting (so often before the proxy's connect has returned):
    each request gets an answer within the client's 5 s (never a wait for the 300 s
    stream timeout), its request and response flows, and the agent's descriptors
    come back to what they were."""
    procs = []
    try:
        for mode, (port, _) in RUDE.items():
            p = lab.popen(lab.pods["server"].netns, sys.executable,
                          str(HELPERS / "rude_server.py"), str(port), mode,
                          stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        agent.admin.ApplyPolicies(apb.ApplyPoliciesRequest(documents=RUDE_POLICY), timeout=10)
        before = agent_fds(agent)
        n = 20
        for mode, (port, code) in RUDE.items():
            t0 = now_ts()
            out = lab.exec(lab.pods["client"].netns, sys.executable,
                           str(HELPERS / "http_burst.py"), lab.pods["server"].ip4, str(port),
                           str(n), "5", "/x", timeout=60)
            assert json.loads(out.stdout) == [code] * n, mode

            def flows():
                fs = [f for f in l7_flows(agent, t0, 0) if port in (
                    f.l4.TCP.source_port, f.l4.TCP.destination_port)]
                return fs if len(fs) >= 2 * n else None
            fs = wait_for(flows, 10, 0.2, f"the flows of {mode}")
            assert sorted((f.l7.type, f.verdict, f.l7.http.code) for f in fs) == \
                [(fpb.REQUEST, fpb.FORWARDED, 0)] * n + [(fpb.RESPONSE, fpb.FORWARDED, code)] * n, \
                mode
        wait_for(lambda: agent_fds(agent) <= before, 10, 0.2,
                 "the agent's descriptors to be freed")
    finally:
        agent.admin.DeletePolicy(apb.DeletePolicyRequest(name="server-rude", namespace="demo"),
                                 timeout=10)
        for p in procs:
            p.kill()
            p.wait()


def test_proxy_down_fails_closed_then_recovers(lab, workdir, agent):
    """Last in the module: it kills the module's agent."""
    pfile = workdir / "policies" / "l7.yaml"
    pfile.write_text(POLICY)
    others: list[AgentProc] = []
    try:
        wait_for(lambda: [p for p in agent.admin.ListPolicies(
            apb.ListPoliciesRequest(), timeout=5).policies if p.name == "server-l7"], 10, 0.2,
            "the policy file to be applied")
        assert statuses(http(lab, "client", [{"send": get("/private")}])) == [403]
        # The agent (and its proxy) dies: its programs stay and drop what they would steer.
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(10)
        assert http(lab, "client", [{"send": get("/public/a")}], timeout=1.5) == ["timeout"]
        # An agent without a proxy: the same, and the drops say why.
        a2 = start_agent(lab, workdir, "--l7-proxy", "false")
        others.append(a2)
        wait_for(lambda: a2.admin.ListPolicies(apb.ListPoliciesRequest(), timeout=5).policies,
                 10, 0.2, "the policy file to be applied")
        t0 = now_ts()
        assert http(lab, "client", [{"send": get("/public/a")}], timeout=1.5) == ["timeout"]
        req = opb.GetFlowsRequest(since=t0, whitelist=[fpb.FlowFilter(verdict=[fpb.DROPPED])])
        drops = wait_for(lambda: [r.flow for r in a2.observer.GetFlows(req, timeout=10)
                                  if r.HasField("flow")], 10, 0.2, "a drop")
        d = drops[0]
        assert d.drop_reason_desc == fpb.SOCKET_LOOKUP_FAILED
        assert d.source.pod_name == "client" and d.destination.pod_name == "server"
        assert d.traffic_direction == fpb.INGRESS and d.l4.TCP.destination_port == PORT
        a2.stop()
        # A proxy again: enforced again.
        a3 = start_agent(lab, workdir)
        others.append(a3)
        wait_for(lambda: a3.admin.ListPolicies(apb.ListPoliciesRequest(), timeout=5).policies,
                 10, 0.2, "the policy file to be applied")
        assert statuses(http(lab, "client", [{"send": get("/private")},
                                             {"send": get("/public/a")}])) == [403, 200]
    finally:
        pfile.unlink()
        for a in others:
            a.stop()


"""Egress L7 (HTTP) policy end to end: the client's own egress rules, enforced by the
proxy on the client's node (real eBPF steering at the client's interface), against
real HTTP servers on the same node and on another node. The servers see the client's
address (the proxy connects from it), and the L7 flows say EGRESS."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp

from support import AgentProc, lab_prefix, pod_endpoint, wait_for
from webb.api.admin import admin_pb2 as apb
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.netlab import NetLab
from test_metrics import Exporter

pytestmark = pytest.mark.root

PREFIX = lab_prefix("l7e")
HELPERS = Path(__file__).resolve().parent.parent / "helpers"
PORT = 9080

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts:
    - ports: [{port: "9080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/public(/.*)?"}
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchName: allowed.example.com}, {matchPattern: "*.good.example"},
              {matchPattern: "*.ext.example"}]
  - toFQDNs: [{matchPattern: "*.ext.example"}]
    toPorts: [{ports: [{port: "9080", protocol: TCP}]}]
"""
# api.ext.example lives long (nothing in the module waits for it to expire: a check
# right after its lookup cannot race the expiry); short.ext.example's TTL 1 is below
# the agent's floor (policy/fqdn.py TTL_FLOOR, 5 s), so it expires a few seconds after
# each answer.
FQDN_TTL = 300
SHORT_TTL = 1
ZONE = {"allowed.example.com.": [30, ["10.99.0.1", "fd99::1"]],
        "denied.example.com.": [30, ["10.99.0.2"]],
        "www.good.example.": [30, ["10.99.0.3"]],
        "silent.good.example.": None,  # allowed, never answered
        "whoami.good.example.": [5, "peer"]}  # answered with the asker's address
# The DNS proxy's upstream bound for this module's agent (--dnsproxy-concurrency-limit).
DNS_LIMIT = 16
# How long a UDP flow lives idle in this module's agent (--bpf-ct-timeout-regular-any;
# 1 min by default): short, to see one expire, and still above the clients' 3 s timeout,
# so no exchange of the module outlives its flow.
CT_TIMEOUT_ANY = 3.0
# Source ports of the proxy's connections from the client's address for this module's
# agent (--l7-proxy-upstream-ports): few, so that a test can use each many times.
UPSTREAM_PORTS = (20000, 20063)
# toFQDNs: "api.ext.example" is the pod "ext" (no endpoint: outside the cluster), added
# to ZONE once the lab knows its address; "short.ext.example" is "ext2", asked for only
# after the check that an address no answer gave stays denied.


def get(path: str) -> str:
    return f"GET {path} HTTP/1.1\r\nHost: server:9080\r\n\r\n"


@pytest.fixture(scope="module")
def lab():
    lab = NetLab(PREFIX)
    lab.cleanup()
    procs: list[subprocess.Popen] = []
    try:
        n1, n2 = lab.add_node("n1", 1), lab.add_node("n2", 2)
        lab.add_pod(n1, "client", 10)
        lab.add_pod(n1, "server", 11)
        lab.add_pod(n1, "dns", 12)
        lab.add_pod(n2, "remote", 10)
        ext, _ = lab.add_pod(n2, "ext", 20), lab.add_pod(n2, "ext2", 21)
        zone = {**ZONE, "api.ext.example.": [FQDN_TTL, [ext.ip4]],
                "short.ext.example.": [SHORT_TTL, [lab.pods["ext2"].ip4]]}
        dns = lab.popen(lab.pods["dns"].netns, sys.executable, str(HELPERS / "dns_server.py"),
                        "53", json.dumps(zone), stdout=subprocess.PIPE, text=True)
        procs.append(dns)
        assert dns.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        for pod in ("server", "remote", "ext", "ext2"):
            srv = lab.popen(lab.pods[pod].netns, sys.executable,
                            str(HELPERS / "http_server.py"), str(PORT),
                            stdout=subprocess.PIPE, text=True)
            procs.append(srv)
            assert srv.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        yield lab
    finally:
        for p in procs:
            p.kill()
            p.wait()
        lab.cleanup()


def start_agent(lab: NetLab, d: Path, *extra: str) -> AgentProc:
    eps = d / "endpoints.yaml"
    p = lab.pods
    eps.write_text(yaml.safe_dump({"endpoints": [
        pod_endpoint(p["client"], "client"), pod_endpoint(p["server"], "server"),
        pod_endpoint(p["remote"], "server", version="v2"), pod_endpoint(p["dns"], "dns")],
        "nodes": [{"name": "n1", "ips": [lab.nodes["n1"].ip]},
                  {"name": "n2", "ips": [lab.nodes["n2"].ip]}]}))
    (d / "policies").mkdir(exist_ok=True)
    (d / "policies" / "egress.yaml").write_text(POLICY)
    a = AgentProc(d, "n1", lab.nodes["n1"].netns, eps,
                  extra=["--policy-dir", str(d / "policies"), *extra])
    a.start()
    try:
        a.wait_attached(["client", "server", "dns"])
        wait_for(lambda: a.admin.ListPolicies(apb.ListPoliciesRequest(), timeout=5).policies,
                 10, 0.2, "the policy file to be applied")
    except BaseException:
        a.stop()
        raise
    return a


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("l7egress")


@pytest.fixture(scope="module")
def agent(lab, workdir):
    a = start_agent(lab, workdir, "--dnsproxy-concurrency-limit", str(DNS_LIMIT),
                    "--l7-proxy-upstream-ports", "%d-%d" % UPSTREAM_PORTS,
                    "--bpf-ct-timeout-regular-any", f"{CT_TIMEOUT_ANY}s")
    try:
        yield a
    finally:
        a.stop()


def http(lab: NetLab, host: str, steps: list, timeout: float = 3.0,
         sport: int | None = None) -> list:
    out = lab.exec(lab.pods["client"].netns, sys.executable, str(HELPERS / "http_client.py"),
                   host, str(PORT), str(timeout), *([str(sport)] if sport else []),
                   timeout=60, input=json.dumps(steps))
    return json.loads(out.stdout)


def statuses(results: list) -> list:
    return [r["status"] if isinstance(r, dict) and "status" in r else r for r in results]


def peer(response: dict) -> str:
    """The client address the server saw (its socket is dual-stack)."""
    return response["headers"]["x-peer"].removeprefix("::ffff:")


def test_egress_rules_allow_and_deny_and_keep_the_client_address(lab, agent):
    c = lab.pods["client"]
    steps = [{"send": get("/public/a")}, {"send": get("/private")}, {"send": get("/public/b")}]
    for server, host, client_ip in (("server", lab.pods["server"].ip4, c.ip4),
                                    ("server", lab.pods["server"].ip6, c.ip6),
                                    ("remote", lab.pods["remote"].ip4, c.ip4)):
        res = http(lab, host, steps)
        assert statuses(res) == [200, 403, 200], (server, host, res)
        assert res[1]["body"] == "Access denied\r\n"
        assert res[0]["body"].startswith("GET /public/a ")
        # Transparent both ways: the server saw the client's own address.
        assert peer(res[0]) == client_ip == peer(res[2]), (server, host, res)
    counters = agent.admin.GetStatus(apb.GetStatusRequest(), timeout=5).counters
    assert counters["l7proxy.requests"] >= 9 and counters["l7proxy.denied"] >= 3


def test_egress_flows(lab, agent):
    t0 = Timestamp()
    t0.GetCurrentTime()
    assert statuses(http(lab, lab.pods["remote"].ip4,
                         [{"send": get("/public/x")}, {"send": get("/nope")}])) == [200, 403]

    def got():
        req = opb.GetFlowsRequest(since=t0, whitelist=[fpb.FlowFilter(
            event_type=[fpb.EventTypeFilter(type=129)])])
        fs = [r.flow for r in agent.observer.GetFlows(req, timeout=10) if r.HasField("flow")]
        return fs if len(fs) >= 4 else None
    fs = wait_for(got, 10, 0.2, "4 L7 flows")
    by = {(f.l7.type, f.l7.http.url, f.l7.http.code): f for f in fs}
    url = "http://server:9080"
    req_ok, resp_ok = by[(fpb.REQUEST, f"{url}/public/x", 0)], by[(fpb.RESPONSE, f"{url}/public/x", 200)]
    req_no, resp_no = by[(fpb.REQUEST, f"{url}/nope", 0)], by[(fpb.RESPONSE, f"{url}/nope", 403)]
    assert {f.traffic_direction for f in fs} == {fpb.EGRESS}
    assert req_ok.verdict == fpb.FORWARDED and req_no.verdict == fpb.DROPPED
    assert resp_ok.verdict == resp_no.verdict == fpb.FORWARDED
    assert req_no.source.pod_name == "client" and req_no.destination.pod_name == "remote"
    assert resp_ok.source.pod_name == "remote" and resp_ok.is_reply.value
    assert not req_ok.is_reply.value
    assert [p.name for p in req_no.egress_denied_by] == ["client-egress"]
    assert [p.name for p in req_ok.egress_allowed_by] == ["client-egress"]
    assert not req_no.ingress_denied_by and not req_ok.ingress_allowed_by
    assert req_no.l7.http.method == "GET" and resp_no.l7.latency_ns > 0
    assert req_no.l4.TCP.destination_port == PORT
    assert req_no.IP.source == lab.pods["client"].ip4
    # The client's connection went to the proxy's egress listener: to-proxy traces,
    # EGRESS, with that listener's port.
    req = opb.GetFlowsRequest(since=t0, whitelist=[fpb.FlowFilter(
        event_type=[fpb.EventTypeFilter(type=4, match_sub_type=True, sub_type=1)],
        source_port=[str(req_no.l4.TCP.source_port)])])
    traces = [r.flow for r in agent.observer.GetFlows(req, timeout=10) if r.HasField("flow")]
    assert traces and traces[0].l4.TCP.flags.SYN
    assert {(f.trace_observation_point, f.traffic_direction) for f in traces} == {
        (fpb.TO_PROXY, fpb.EGRESS)}
    assert {f.proxy_port for f in traces} == {agent.admin.GetStatus(
        apb.GetStatusRequest(), timeout=5).counters["l7proxy.egress_port"]}


def dns(lab: NetLab, name: str, qtype: str = "A", server: str | None = None,
        transport: str = "udp", then_get: int | None = None,
        sport: int | None = None) -> dict | str:
    out = lab.exec(lab.pods["client"].netns, sys.executable, str(HELPERS / "dns_client.py"),
                   server or lab.pods["dns"].ip4, name, qtype, "3", transport,
                   str(then_get or 0), *([str(sport)] if sport else []), timeout=30)
    return json.loads(out.stdout)


def test_dns_queries_go_upstream_from_the_client_address(lab, agent):
    """As Cilium's transparent DNS proxy: the server (and its policy, its logs) sees the
    pod that asked, not the node, over UDP and TCP, IPv4 and IPv6; the answer comes back
    through the proxy (flows, names) to the client."""
    c, d = lab.pods["client"], lab.pods["dns"]
    for server, qtype, want in ((d.ip4, "A", c.ip4), (d.ip6, "AAAA", c.ip6)):
        for transport in ("udp", "tcp"):
            got = dns(lab, "whoami.good.example", qtype, server, transport)
            assert isinstance(got, dict) and got["ips"] == [want], (server, transport, got)
    counters = agent.admin.GetStatus(apb.GetStatusRequest(), timeout=5).counters
    assert counters.get("l7proxy.error_dns_upstream", 0) == 0


def sequence(lab: NetLab, mode: str, server: str, port: int, count: int, what: str) -> dict:
    out = lab.exec(lab.pods["client"].netns, sys.executable, str(HELPERS / "conn_sequence.py"),
                   mode, server, str(port), str(count), "60", what, timeout=90)
    return json.loads(out.stdout)


def test_more_connections_than_upstream_ports_one_after_another(lab, agent):
    """Each DNS query over TCP is a connection upstream of its own, from the client's
    address and a port of UPSTREAM_PORTS. Three times more of them, one after another,
    than there are ports: all are answered, and none is left in TIME_WAIT (the proxy
    resets the connection once the answer is read). HTTP connections the proxy closes
    first do sit in TIME_WAIT, and a new one still binds their ports (SO_REUSEADDR).
    Before, a port in TIME_WAIT for any destination refused bind() for 60 s: a client
    asking ~330 times a second used up the default range."""
    c, d, srv = lab.pods["client"], lab.pods["dns"], lab.pods["server"]
    n = 3 * (UPSTREAM_PORTS[1] - UPSTREAM_PORTS[0] + 1)
    status = lambda: agent.admin.GetStatus(apb.GetStatusRequest(), timeout=5).counters
    before = status()
    got = sequence(lab, "dns", d.ip4, 53, n, "allowed.example.com")
    assert got == {"answered": n, "outcomes": {"rcode 0": n}}, got
    node = lab.nodes["n1"].netns
    ss = lambda *f: lab.exec(node, "ss", "-Htan", "state", "time-wait", "src", c.ip4, *f).stdout
    assert ss("dst", d.ip4) == ""
    got = sequence(lab, "http", srv.ip4, PORT, n, "/public/seq")
    assert got == {"answered": n, "outcomes": {"status 200": n}}, got
    assert ss("dst", srv.ip4)  # the proxy closed those first
    after = status()
    for k in ("l7proxy.error_dns_upstream", "l7proxy.error_upstream_connect"):
        assert after.get(k, 0) == before.get(k, 0), k


def test_a_node_service_binds_the_port_of_a_proxied_connection(lab, agent, tmp_path):
    """A server of the node's namespace (hostNetwork) that binds its port with
    SO_REUSEADDR, as Go servers do, while a proxied connection holds that port on the
    client's address: it binds and listens (dual-stack and IPv4), and the connection
    goes on. Before, the proxy's socket held the port against it (EADDRINUSE)."""
    c, srv = lab.pods["client"], lab.pods["server"]
    gate = tmp_path / "go"
    steps = [{"send": get("/public/a")}, {"wait": str(gate)}, {"send": get("/public/b")}]
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    with open(tmp_path / "steps.json") as f:
        client = lab.popen(c.netns, sys.executable, str(HELPERS / "http_client.py"), srv.ip4,
                           str(PORT), "10", stdin=f, stdout=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: Path(f"{gate}.waiting").exists(), 20, 0.05, "the first answer")
        # The server's side says which port the proxy connected from.
        lines = lab.exec(srv.netns, "ss", "-Htn", "state", "established", "sport", "=",
                         f":{PORT}").stdout.splitlines()
        peers = [ln.split()[3] for ln in lines if f"{c.ip4}]:" in ln or f"{c.ip4}:" in ln]
        assert len(peers) == 1, lines  # Recv-Q Send-Q Local Peer
        port = int(peers[0].rsplit(":", 1)[1])
        assert UPSTREAM_PORTS[0] <= port <= UPSTREAM_PORTS[1], port
        code = f"""if True:
            import socket
            for fam, addr in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
                s = socket.socket(fam)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind((addr, {port}))
                s.listen()
                s.close()
            print("bound")"""
        res = lab.exec(lab.nodes["n1"].netns, sys.executable, "-c", code, check=False)
        assert res.stdout.strip() == "bound", res.stderr
        gate.touch()
        out, _ = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    res = json.loads(out)
    assert statuses(res) == [200, 200], res
    assert peer(res[1]) == c.ip4


def test_dns_rules_allow_and_refuse(lab, agent):
    d = lab.pods["dns"]
    t0 = Timestamp()
    t0.GetCurrentTime()
    ok = dns(lab, "allowed.example.com")
    assert ok == {"rcode": 0, "ips": ["10.99.0.1"], "ttl": 30, "from": f"{d.ip4}:53"}, ok
    assert dns(lab, "ALLOWED.example.com.", "AAAA", d.ip6)["ips"] == ["fd99::1"]
    assert dns(lab, "www.good.example")["ips"] == ["10.99.0.3"]
    # Denied: REFUSED at once from the server's address, the server never asked.
    no = dns(lab, "denied.example.com")
    assert no == {"rcode": 5, "ips": [], "ttl": None, "from": f"{d.ip4}:53"}, no
    assert dns(lab, "a.b.good.example")["rcode"] == 5  # `*` stays inside one label
    # Over TCP alike (protocol ANY).
    assert dns(lab, "allowed.example.com", transport="tcp")["ips"] == ["10.99.0.1"]
    assert dns(lab, "denied.example.com", transport="tcp")["rcode"] == 5

    def got():
        req = opb.GetFlowsRequest(since=t0, whitelist=[fpb.FlowFilter(
            event_type=[fpb.EventTypeFilter(type=129)])])
        fs = [r.flow for r in agent.observer.GetFlows(req, timeout=10) if r.HasField("flow")]
        return fs if len(fs) >= 14 else None
    fs = wait_for(got, 10, 0.2, "14 DNS flows")
    by = {(f.l7.type, f.l7.dns.query, f.IP.destination): f for f in fs if f.l4.HasField("UDP")}
    assert len([f for f in fs if f.l4.HasField("TCP")]) == 4
    req_ok = by[(fpb.REQUEST, "allowed.example.com.", d.ip4)]
    resp_ok = by[(fpb.RESPONSE, "allowed.example.com.", lab.pods["client"].ip4)]
    req_no = by[(fpb.REQUEST, "denied.example.com.", d.ip4)]
    resp_no = by[(fpb.RESPONSE, "denied.example.com.", lab.pods["client"].ip4)]
    assert {f.traffic_direction for f in fs} == {fpb.EGRESS}
    assert req_ok.verdict == fpb.FORWARDED and req_no.verdict == fpb.DROPPED
    assert resp_ok.l7.dns.ips == ["10.99.0.1"] and resp_ok.l7.dns.ttl == 30
    assert resp_ok.l7.dns.rrtypes == ["A"] and resp_ok.l7.dns.rcode == 0
    assert resp_no.l7.dns.rcode == 5 and not resp_no.l7.dns.ips
    assert req_ok.l7.dns.qtypes == ["A"] and req_ok.l7.dns.observation_source == "proxy"
    assert req_ok.source.pod_name == "client" and req_ok.destination.pod_name == "dns"
    assert req_ok.l4.UDP.destination_port == 53 and resp_ok.is_reply.value
    assert [p.name for p in req_no.egress_denied_by] == ["client-egress"]
    assert [p.name for p in req_ok.egress_allowed_by] == ["client-egress"]
    counters = agent.admin.GetStatus(apb.GetStatusRequest(), timeout=5).counters
    assert counters["l7proxy.dns_queries"] >= 7 and counters["l7proxy.dns_denied"] >= 3


def test_exporter_counts_the_dns_proxy_flows_as_the_agent_holds_them(lab, agent, workdir):
    """The exporter's dns family (Hubble's: queries by rcode "" or "Policy denied",
    responses by rcode, response record types) counts the DNS proxy's flows exactly
    as the agent holds them."""
    exporter = Exporter(workdir, "metrics-dns", agent.address)
    try:
        exporter.start()
        since = Timestamp()
        since.FromNanoseconds(exporter.started_ns)  # the exporter counts from its start on
        assert dns(lab, "allowed.example.com")["rcode"] == 0
        assert dns(lab, "www.good.example", transport="tcp")["rcode"] == 0
        assert dns(lab, "denied.example.com")["rcode"] == 5
        req = opb.GetFlowsRequest(since=since, whitelist=[fpb.FlowFilter(
            event_type=[fpb.EventTypeFilter(type=129)], protocol=["dns"])])

        def six() -> list | None:
            got = [r.flow for r in agent.observer.GetFlows(req, timeout=10) if r.HasField("flow")]
            return got if len(got) >= 6 else None
        fs = wait_for(six, 10, 0.2, "6 DNS flows (3 queries, 3 answers)")
        # What Hubble's dns handler makes of them (all A questions: ignoreAAAA keeps them).
        rcodes = {0: "No Error", 5: "Query Refused"}
        queries: dict[tuple, int] = {}
        responses: dict[tuple, int] = {}
        types: dict[tuple, int] = {}
        for f in fs:
            d = f.l7.dns
            assert d.observation_source == "proxy" and list(d.qtypes) == ["A"], f
            if f.verdict == fpb.DROPPED:
                key = ("Policy denied", d.query, str(len(d.ips)))
                queries[key] = queries.get(key, 0) + 1
            elif not f.is_reply.value:
                key = ("", d.query, str(len(d.ips)))
                queries[key] = queries.get(key, 0) + 1
            else:
                key = (rcodes[d.rcode], d.query, str(len(d.ips)))
                responses[key] = responses.get(key, 0) + 1
                for t in d.rrtypes:
                    types[(t, d.query)] = types.get((t, d.query), 0) + 1
        assert queries == {("", "allowed.example.com.", "0"): 1, ("", "www.good.example.", "0"): 1,
                           ("Policy denied", "denied.example.com.", "0"): 1}
        assert responses == {("No Error", "allowed.example.com.", "1"): 1,
                             ("No Error", "www.good.example.", "1"): 1,
                             ("Query Refused", "denied.example.com.", "0"): 1}
        want = ({("q",) + k: v for k, v in queries.items()}
                | {("r",) + k: v for k, v in responses.items()}
                | {("t",) + k: v for k, v in types.items()},
                float(sum(queries.values())), float(sum(responses.values())),
                float(sum(types.values())))

        def counted() -> tuple:
            got = {}
            for k in want[0]:
                if k[0] == "t":
                    got[k] = exporter.value("hubble_dns_response_types_total", type=k[1],
                                            query=k[2], qtypes="A")
                else:
                    got[k] = exporter.value(f"hubble_dns_{'queries' if k[0] == 'q' else 'responses'}"
                                            "_total", rcode=k[1], query=k[2], ips_returned=k[3],
                                            qtypes="A")
            return (got, exporter.value("hubble_dns_queries_total"),
                    exporter.value("hubble_dns_responses_total"),
                    exporter.value("hubble_dns_response_types_total"))
        try:
            wait_for(lambda: counted() == want, 15, 0.2, "the exporter to count the DNS flows")
        except AssertionError:
            assert counted() == want
            raise
    finally:
        exporter.stop()


def test_dns_upstream_queries_are_bounded(lab, agent):
    """A flood of allowed queries to a server that never answers: at most DNS_LIMIT
    wait for it (one socket each), every other is SERVFAIL at once with an ERROR flow
    (Cilium's --dnsproxy-concurrency-limit); no descriptor is left behind, and once the
    waiting ones time out a query is answered again."""
    flood = 100  # well inside the proxy socket's receive buffer
    status = lambda: agent.admin.GetStatus(apb.GetStatusRequest(), timeout=5).counters
    wait_for(lambda: status()["l7proxy.dns_upstream_active"] == 0, 15, 0.2,
             "no query upstream before the flood")
    fds = lambda: len(os.listdir(f"/proc/{agent.proc.pid}/fd"))
    before = fds()
    t0 = Timestamp()
    t0.GetCurrentTime()
    out = lab.exec(lab.pods["client"].netns, sys.executable, str(HELPERS / "dns_flood.py"),
                   lab.pods["dns"].ip4, "silent.good.example", str(flood), "3", timeout=60)
    got = json.loads(out.stdout)
    assert got["rcodes"] == {"2": flood - DNS_LIMIT}, got  # the rest never answered
    assert status()["l7proxy.dns_upstream_active"] <= DNS_LIMIT
    # + 1: the socket answering from the server's address, kept (MAX_REPLY_SOCKETS)
    assert fds() <= before + DNS_LIMIT + 1
    assert status()["l7proxy.error_dns_concurrency_limit"] >= flood - DNS_LIMIT
    req = opb.GetFlowsRequest(since=t0, whitelist=[fpb.FlowFilter(
        verdict=[fpb.ERROR], event_type=[fpb.EventTypeFilter(type=129)])])

    def errors():
        fs = [r.flow for r in agent.observer.GetFlows(req, timeout=10) if r.HasField("flow")]
        return fs if len(fs) >= 2 * (flood - DNS_LIMIT) else None
    fs = wait_for(errors, 10, 0.2, "an ERROR request and answer flow per SERVFAIL")
    assert {(f.l7.type, f.l7.dns.rcode) for f in fs} == {(fpb.REQUEST, 0), (fpb.RESPONSE, 2)}
    assert {f.l7.dns.query for f in fs} == {"silent.good.example."}
    # The waiting ones time out (no answer, as from the server) and close their sockets.
    wait_for(lambda: status()["l7proxy.dns_upstream_active"] == 0, 15, 0.2,
             "the unanswered queries to time out")
    assert fds() <= before + 1
    assert dns(lab, "allowed.example.com")["ips"] == ["10.99.0.1"]


def cidr_identity(agent: AgentProc, ip: str) -> bool:
    """Whether the agent's policy holds ip as a (learned) CIDR identity."""
    ids = agent.admin.ListIdentities(apb.ListIdentitiesRequest(), timeout=5).identities
    return any(f"cidr:{ip}/32" in i.labels for i in ids)


def test_to_fqdns_allows_answered_addresses_until_the_ttl_ends(lab, agent):
    ext, ext2 = lab.pods["ext"], lab.pods["ext2"]
    # Nothing resolved yet: outside the cluster, default deny.
    assert http(lab, ext.ip4, [{"send": get("/")}], timeout=1.5) == ["timeout"]
    # The answer reaches the client only once the datapath allows its address: a
    # connection right after it passes.
    got = dns(lab, "api.ext.example", then_get=PORT)
    assert got["ips"] == [ext.ip4] and got["ttl"] == FQDN_TTL and got["get"] == 200, got
    # An address no answer gave stays denied.
    assert http(lab, ext2.ip4, [{"send": get("/")}], timeout=1.5) == ["timeout"]
    assert not cidr_identity(agent, ext2.ip4)
    # A short TTL: learned before the answer reaches the client, then it expires, seen
    # as a connection to it dropped by policy (polled; each attempt a new connection).
    t0 = Timestamp()
    t0.GetCurrentTime()
    got = dns(lab, "short.ext.example")
    assert got["ips"] == [ext2.ip4] and got["ttl"] == SHORT_TTL, got
    assert cidr_identity(agent, ext2.ip4)
    req = opb.GetFlowsRequest(since=t0, whitelist=[fpb.FlowFilter(verdict=[fpb.DROPPED])])

    def policy_denied() -> bool:
        http(lab, ext2.ip4, [{"send": get("/")}], timeout=1.0)
        return any(r.flow.drop_reason_desc == fpb.POLICY_DENIED
                   and r.flow.IP.destination == ext2.ip4 and r.flow.l4.TCP.destination_port == PORT
                   for r in agent.observer.GetFlows(req, timeout=10) if r.HasField("flow"))
    wait_for(policy_denied, 60, 0.2, "the short-lived address to expire (a POLICY_DENIED drop)")
    # No connection uses it: it leaves the policy at the next look (every 5 s).
    wait_for(lambda: not cidr_identity(agent, ext2.ip4), 15, 0.2, "the address to go")
    assert cidr_identity(agent, ext.ip4)
    # Asked again: allowed again.
    dns(lab, "short.ext.example")
    assert cidr_identity(agent, ext2.ip4)


def test_a_connection_outlives_its_address_ttl(lab, agent, tmp_path):
    """As Cilium keeps an expired toFQDNs address for the connections that use it: a
    keep-alive connection made while the answer was valid goes on after its TTL ended,
    while a new connection to the address is dropped; once that connection is closed,
    the address leaves the policy."""
    ext2 = lab.pods["ext2"]
    go = tmp_path / "go"
    got = dns(lab, "short.ext.example")
    assert got["ips"] == [ext2.ip4], got
    client = lab.popen(lab.pods["client"].netns, sys.executable, str(HELPERS / "http_client.py"),
                       ext2.ip4, str(PORT), "30", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       text=True)
    try:
        client.stdin.write(json.dumps([{"send": get("/a")}, {"wait": str(go)},  # type: ignore[union-attr]
                                       {"send": get("/b")}]))
        client.stdin.close()  # type: ignore[union-attr]
        wait_for(lambda: (tmp_path / "go.waiting").exists(), 15, 0.05,
                 "the client's first answer")
        t0 = Timestamp()
        t0.GetCurrentTime()
        req = opb.GetFlowsRequest(since=t0, whitelist=[fpb.FlowFilter(verdict=[fpb.DROPPED])])

        def new_connection_denied() -> bool:
            http(lab, ext2.ip4, [{"send": get("/")}], timeout=1.0)
            return any(r.flow.drop_reason_desc == fpb.POLICY_DENIED
                       and r.flow.IP.destination == ext2.ip4
                       for r in agent.observer.GetFlows(req, timeout=10) if r.HasField("flow"))
        wait_for(new_connection_denied, 60, 0.2, "the address's TTL to end")
        # Past a look at its connections (every 5 s): still kept, for this one.
        def counters() -> dict:
            return dict(agent.admin.GetStatus(apb.GetStatusRequest(), timeout=5).counters)
        checks = counters()["policy.fqdn_kept_checks"]
        wait_for(lambda: counters()["policy.fqdn_kept_checks"] > checks, 15, 0.2,
                 "a look at the kept address's connections")
        assert cidr_identity(agent, ext2.ip4) and counters()["policy.fqdn_kept"] >= 1
        go.touch()
        out = client.stdout.read()  # type: ignore[union-attr]
        client.wait(30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    res = json.loads(out)
    assert statuses(res) == [200, 200], res
    assert res[1]["body"].startswith("GET /b ")
    # Closed: the address goes at the next look.
    wait_for(lambda: not cidr_identity(agent, ext2.ip4), 15, 0.2, "the address to go")
    assert http(lab, ext2.ip4, [{"send": get("/")}], timeout=1.0) == ["timeout"]


def test_proxied_answers_name_the_flows(lab, agent):
    """As Cilium's DNS proxy: an answer it let through names the L3/L4 flows to (and
    from) the answered address. No L7 visibility is configured here, so nothing but
    the proxy can have taught the name."""
    ext = lab.pods["ext"]
    t0 = Timestamp()
    t0.GetCurrentTime()
    got = dns(lab, "api.ext.example", then_get=PORT)
    assert got["ips"] == [ext.ip4] and got["get"] == 200, got
    req = opb.GetFlowsRequest(since=t0, whitelist=[fpb.FlowFilter(
        event_type=[fpb.EventTypeFilter(type=4)], destination_ip=[ext.ip4]),
        fpb.FlowFilter(event_type=[fpb.EventTypeFilter(type=4)], source_ip=[ext.ip4])])

    def flows():
        fs = [r.flow for r in agent.observer.GetFlows(req, timeout=10) if r.HasField("flow")]
        # both ways (the SYN, the SYN-ACK) at least
        return fs if {f.IP.destination for f in fs} == {ext.ip4, lab.pods["client"].ip4} \
            else None
    fs = wait_for(flows, 10, 0.2, "the L3/L4 flows of the connection")
    for f in fs:
        if f.IP.destination == ext.ip4:
            assert list(f.destination_names) == ["api.ext.example"], f
            assert not f.source_names
        else:
            assert list(f.source_names) == ["api.ext.example"], f
            assert not f.destination_names


# Source ports no other traffic of this module takes: above the pods' ephemeral range
# (32768-60999, where the kernel picks theirs) and the proxy's upstream ports (below
# it). A policy verdict comes with a new direction only, and a UDP query from the port
# of an earlier one (the kernel picks at random: ~1 in 2000 per module run with the
# dozen queries before) is the same flow, as for Cilium's connection tracking.
VERDICT_DNS_SPORT = 61053
REUSE_SPORTS = {"server": 61080, "ext": 61081}
IDLE_DNS_SPORT = 61054


def test_policy_verdicts_of_proxied_connections_are_redirected(lab, agent):
    """Cilium's policy-verdict event says action "redirect" for a connection that L7
    rules send to the proxy (Hubble: verdict REDIRECTED); an L3/L4 allow stays
    FORWARDED."""
    srv, d, ext = lab.pods["server"], lab.pods["dns"], lab.pods["ext"]
    t0 = Timestamp()
    t0.GetCurrentTime()
    # The TCP connections take the kernel's ports: one an earlier, closed connection had
    # is a new connection all the same (flow.c; test_a_closed_connections_tuple_...).
    assert statuses(http(lab, srv.ip4, [{"send": get("/public/v")}])) == [200]
    # DNS rules; then toFQDNs, L3/L4
    got = dns(lab, "api.ext.example", then_get=PORT, sport=VERDICT_DNS_SPORT)
    assert got["get"] == 200, got
    req = opb.GetFlowsRequest(since=t0, whitelist=[fpb.FlowFilter(
        event_type=[fpb.EventTypeFilter(type=5)], source_pod=[f"demo/{lab.pods['client'].name}"])])
    want = {(srv.ip4, PORT), (d.ip4, 53), (ext.ip4, PORT)}

    seen: set = set()

    def verdicts():
        fs = [r.flow for r in agent.observer.GetFlows(req, timeout=10) if r.HasField("flow")]
        by = {(f.IP.destination, f.l4.TCP.destination_port or f.l4.UDP.destination_port): f
              for f in fs}
        seen.update(by)
        return by if want <= by.keys() else None
    try:
        by = wait_for(verdicts, 10, 0.2, "the policy verdicts of the three connections")
    except AssertionError as e:
        raise AssertionError(f"{e}; verdicts seen {sorted(seen)}, wanted {sorted(want)}") from None
    assert by[(srv.ip4, PORT)].verdict == fpb.REDIRECTED
    assert by[(d.ip4, 53)].verdict == fpb.REDIRECTED
    assert by[(ext.ip4, PORT)].verdict == fpb.FORWARDED
    for key in want:
        f = by[key]
        assert f.traffic_direction == fpb.EGRESS, f
        assert [p.name for p in f.egress_allowed_by] == ["client-egress"], f


def test_a_closed_connections_tuple_makes_a_new_connection_with_its_verdict(lab, agent):
    """As Cilium reopens a closed connection's tracking entry on a SYN: a connection
    from the source port of an earlier, closed one to the same server is new, checked
    against the policy and given its own policy verdict (REDIRECTED to the proxy,
    FORWARDED on an L3/L4 allow), not taken for the old one (whose state the datapath
    kept: no verdict, its answers treated as replies)."""
    srv, ext = lab.pods["server"], lab.pods["ext"]
    assert dns(lab, "api.ext.example")["ips"] == [ext.ip4]  # toFQDNs: ext allowed
    t0 = Timestamp()
    t0.GetCurrentTime()
    for name, host, path in (("server", srv.ip4, "/public/r"), ("ext", ext.ip4, "/")):
        for _ in range(2):  # the client resets each: its port is free again at once
            res = http(lab, host, [{"send": get(path)}], sport=REUSE_SPORTS[name])
            assert statuses(res) == [200], (name, res)
    req = opb.GetFlowsRequest(since=t0, whitelist=[fpb.FlowFilter(
        event_type=[fpb.EventTypeFilter(type=5)], source_pod=[f"demo/{lab.pods['client'].name}"],
        source_port=[str(p) for p in REUSE_SPORTS.values()])])
    want = {srv.ip4: fpb.REDIRECTED, ext.ip4: fpb.FORWARDED}
    seen: list = []

    def verdicts():
        fs = [r.flow for r in agent.observer.GetFlows(req, timeout=10) if r.HasField("flow")]
        seen[:] = [(f.IP.destination, f.l4.TCP.source_port) for f in fs]
        return fs if len(fs) >= 4 else None
    try:
        fs = wait_for(verdicts, 10, 0.2, "a policy verdict for each of the 4 connections")
    except AssertionError as e:
        raise AssertionError(f"{e}; verdicts seen {seen}") from None
    assert sorted((f.IP.destination, f.l4.TCP.source_port, f.verdict) for f in fs) == sorted(
        (ip, REUSE_SPORTS[n], want[ip]) for n, ip in (("server", srv.ip4), ("ext", ext.ip4))
        for _ in range(2)), fs


def test_an_idle_udp_flow_is_new_again_after_its_lifetime(lab, agent):
    """As Cilium's CT entry of a UDP flow expires: a query from the port of one that
    was idle longer than --bpf-ct-timeout-regular-any is a new flow, with its own
    policy verdict (within the lifetime it is the same flow: no second verdict)."""
    d = lab.pods["dns"]
    t0 = Timestamp()
    t0.GetCurrentTime()
    assert dns(lab, "allowed.example.com", sport=IDLE_DNS_SPORT)["rcode"] == 0
    time.sleep(CT_TIMEOUT_ANY + 0.5)  # the idle time is what is tested, not a readiness wait
    assert dns(lab, "allowed.example.com", sport=IDLE_DNS_SPORT)["rcode"] == 0
    req = opb.GetFlowsRequest(since=t0, whitelist=[fpb.FlowFilter(
        event_type=[fpb.EventTypeFilter(type=5)], source_pod=[f"demo/{lab.pods['client'].name}"],
        source_port=[str(IDLE_DNS_SPORT)])])

    def verdicts():
        fs = [r.flow for r in agent.observer.GetFlows(req, timeout=10) if r.HasField("flow")]
        return fs if len(fs) >= 2 else None
    fs = wait_for(verdicts, 10, 0.2, "a policy verdict for each of the 2 queries")
    assert [(f.IP.destination, f.l4.UDP.destination_port, f.verdict) for f in fs] == [
        (d.ip4, 53, fpb.REDIRECTED)] * 2, fs


# A UDP flow the answering side keeps busy longer than CT_TIMEOUT_ANY (the server pod's
# port and the remote pod's; the probe's port after it).
PUSH_SPORT, PUSH_PORT, PUSH_PROBE_SPORT = 61055, 9999, 61056


def test_a_udp_flow_the_other_side_keeps_busy_does_not_expire(lab, agent):
    """As Cilium's one CT entry for both directions: a direction quiet for longer than
    --bpf-ct-timeout-regular-any while its opposite one goes on is the same flow, not
    a new one that answers the other side (its packets reported as replies and past
    its endpoint's policy)."""
    srv, rem = lab.pods["server"], lab.pods["remote"]
    count, interval = 18, CT_TIMEOUT_ANY / 12  # 1.5 x the lifetime of pushes
    push = lab.popen(rem.netns, sys.executable, str(HELPERS / "udp_push.py"), "push",
                     str(PUSH_PORT), str(count), str(interval), stdout=subprocess.PIPE, text=True)
    try:
        assert push.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        t0 = Timestamp()
        t0.GetCurrentTime()
        out = lab.exec(srv.netns, sys.executable, str(HELPERS / "udp_push.py"), "pull",
                       rem.ip4, str(PUSH_PORT), str(PUSH_SPORT), str(count), timeout=60)
        assert out.stdout.strip() == "ok"
    finally:
        push.kill()
        push.wait()
    # A packet after the flow's last one, from a port of its own: once its trace is
    # read, so is any trace of the flow's "again" sent before it.
    lab.exec(srv.netns, sys.executable, "-c",
             "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             f"s.bind(('0.0.0.0', {PUSH_PROBE_SPORT})); s.sendto(b'probe', "
             f"('{rem.ip4}', {PUSH_PORT}))")

    def traces(sport: int) -> list:
        req = opb.GetFlowsRequest(since=t0, whitelist=[fpb.FlowFilter(
            event_type=[fpb.EventTypeFilter(type=4)], source_pod=[f"demo/{srv.name}"],
            source_port=[str(sport)])])
        return [r.flow for r in agent.observer.GetFlows(req, timeout=10) if r.HasField("flow")]
    wait_for(lambda: traces(PUSH_PROBE_SPORT), 10, 0.2, "the probe's trace")
    fs = traces(PUSH_SPORT)
    assert fs and not any(f.is_reply.value for f in fs), fs


def test_policy_removed_traffic_goes_direct(lab, workdir, agent):
    (workdir / "policies" / "egress.yaml").unlink()  # test_no_proxy_fails_closed writes it again
    wait_for(lambda: not agent.admin.ListPolicies(apb.ListPoliciesRequest(), timeout=5).policies,
             10, 0.2, "the policy to be removed")
    res = http(lab, lab.pods["server"].ip4, [{"send": get("/private")}])
    assert statuses(res) == [200] and peer(res[0]) == lab.pods["client"].ip4
    counters = agent.admin.GetStatus(apb.GetStatusRequest(), timeout=5).counters
    before = counters["l7proxy.requests"]
    assert statuses(http(lab, lab.pods["server"].ip4, [{"send": get("/private")}])) == [200]
    assert agent.admin.GetStatus(apb.GetStatusRequest(), timeout=5).counters[
        "l7proxy.requests"] == before  # not through the proxy


def test_no_proxy_fails_closed(lab, workdir, agent):
    """Last in the module: it stops the module's agent."""
    agent.stop()
    a2 = start_agent(lab, workdir, "--l7-proxy", "false")
    try:
        t0 = Timestamp()
        t0.GetCurrentTime()
        assert http(lab, lab.pods["server"].ip4, [{"send": get("/public/a")}],
                    timeout=1.5) == ["timeout"]
        req = opb.GetFlowsRequest(since=t0, whitelist=[fpb.FlowFilter(verdict=[fpb.DROPPED])])
        drops = wait_for(lambda: [r.flow for r in a2.observer.GetFlows(req, timeout=10)
                                  if r.HasField("flow") and r.flow.l4.HasField("TCP")
                                  and r.flow.l4.TCP.destination_port == PORT],
                         10, 0.2, "a drop")
        d = drops[0]
        assert d.drop_reason_desc == fpb.SOCKET_LOOKUP_FAILED
        assert d.source.pod_name == "client" and d.destination.pod_name == "server"
        assert d.traffic_direction == fpb.EGRESS and d.l4.TCP.destination_port == PORT
        # DNS too: no proxy, no lookups (never answered unchecked).
        t1 = Timestamp()
        t1.GetCurrentTime()
        assert dns(lab, "allowed.example.com") == "timeout"
        req = opb.GetFlowsRequest(since=t1, whitelist=[fpb.FlowFilter(verdict=[fpb.DROPPED])])
        drops = wait_for(lambda: [r.flow for r in a2.observer.GetFlows(req, timeout=10)
                                  if r.HasField("flow") and r.flow.l4.HasField("UDP")],
                         10, 0.2, "a DNS drop")
        assert drops[0].drop_reason_desc == fpb.SOCKET_LOOKUP_FAILED
        assert drops[0].l4.UDP.destination_port == 53
    finally:
        a2.stop()

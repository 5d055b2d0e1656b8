"""L7 visibility end to end: HTTP/1.1 and DNS read from packets by the TC programs
(no proxy), on network-namespace endpoints with real servers (an asyncio HTTP
server, dnsmasq) and real clients; flows read back over gRPC."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import AgentProc, lab_prefix, pod_endpoint, wait_for, write_endpoints
from webb.api.flow import flow_pb2 as fpb
from webb.netlab import NetLab

pytestmark = pytest.mark.root

PREFIX = lab_prefix("wl7")
L7 = str(Path(__file__).resolve().parents[1] / "helpers" / "l7_traffic.py")
HTTP_PORT = 8080      # annotated on the server: parsed
PLAIN_PORT = 8081     # same server, not annotated: L3/L4 only


@pytest.fixture(scope="module")
def lab():
    lab = NetLab(PREFIX)
    lab.cleanup()
    try:
        n1 = lab.add_node("n1", 1)
        lab.add_pod(n1, "client", 10)
        lab.add_pod(n1, "server", 11)
        lab.add_pod(n1, "dns", 12)
        yield lab
    finally:
        lab.cleanup()


@pytest.fixture(scope="module")
def servers(lab):
    p = lab.pods
    procs = []
    try:
        for port in (HTTP_PORT, PLAIN_PORT):
            proc = lab.popen(p["server"].netns, sys.executable, L7, "http-server", str(port),
                             "--timeout", "240", stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout.readline().strip() == "ready"
        dns = lab.popen(p["dns"].netns, "dnsmasq", "--keep-in-foreground", "--no-resolv",
                        "--no-hosts", f"--listen-address={p['dns'].ip4}", "--bind-interfaces",
                        "--local=/test/", "--local-ttl=30",
                        f"--host-record=web.test,{p['server'].ip4},{p['server'].ip6}",
                        "--cname=alias.test,web.test", "--log-facility=-", "--user=root",
                        "--pid-file=", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(dns)
        yield p
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def agent(lab, servers, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("l7")
    p = lab.pods
    eps = workdir / "endpoints.yaml"
    server = pod_endpoint(p["server"], "server")
    server["annotations"] = {"policy.cilium.io/proxy-visibility": f"<Ingress/{HTTP_PORT}/TCP/HTTP>"}
    write_endpoints(eps, [pod_endpoint(p["client"], "client"), server,
                          pod_endpoint(p["dns"], "kube-dns", namespace="kube-system")])
    a = AgentProc(workdir, "n1", lab.nodes["n1"].netns, eps, ring=16383,
                  extra=["--l7-prefix", "1024"])
    try:
        a.start()
        a.wait_attached(["client", "server", "dns"])
        yield a
    finally:
        a.stop()


def client(lab: NetLab, *args: str, timeout: float = 30):
    out = lab.exec(lab.pods["client"].netns, sys.executable, L7, *args, timeout=timeout).stdout
    return json.loads(out) if out.strip() else None


def http(lab: NetLab, requests: list[dict], port: int = HTTP_PORT, **kw) -> list[dict]:
    args = ["http-client", lab.pods["server"].ip4, str(port), "--requests", json.dumps(requests),
            "--host-header", f"server:{port}"]
    if kw.get("pipeline"):
        args.append("--pipeline")
    if kw.get("pause"):
        args += ["--pause", str(kw["pause"])]
    return client(lab, *args)


def l7_flows(agent: AgentProc, want: int, **match) -> list[fpb.Flow]:
    """The L7 flows whose HTTP url or DNS query contains match['tag']."""
    tag = match["tag"]

    def got():
        fl = [f for f in agent.flows() if f.Type == fpb.L7
              and (tag in f.l7.http.url or tag in f.l7.dns.query)]
        return fl if len(fl) >= want else None
    return wait_for(got, 10, 0.2, f"{want} L7 flows for {tag}")


def test_keepalive_requests_paired_in_order(lab, agent):
    reqs = [{"path": f"/ka/{i}"} for i in range(4)] + [{"path": "/status/404?ka=1"},
                                                        {"path": "/status/503?ka=1"}]
    res = http(lab, reqs)
    assert [r["code"] for r in res] == [200, 200, 200, 200, 404, 503]
    flows = l7_flows(agent, 12, tag="ka")
    requests = [f for f in flows if f.l7.type == fpb.REQUEST]
    responses = [f for f in flows if f.l7.type == fpb.RESPONSE]
    assert len(requests) == 6 and len(responses) == 6, [f.Summary for f in flows]
    r0 = requests[0]
    assert r0.event_type.type == 129 and r0.verdict == fpb.FORWARDED
    assert r0.l7.http.method == "GET" and r0.l7.http.url == f"http://server:{HTTP_PORT}/ka/0"
    assert r0.l7.http.protocol == "HTTP/1.1"
    assert r0.Summary == f"HTTP/1.1 GET http://server:{HTTP_PORT}/ka/0"
    assert r0.source.pod_name == "client" and r0.destination.pod_name == "server"
    assert r0.traffic_direction == fpb.INGRESS and r0.is_reply.value is False
    assert r0.l4.TCP.destination_port == HTTP_PORT
    # Each response carries its own request's method and url: pairing follows order.
    for resp in responses:
        assert resp.is_reply.value is True
        assert resp.source.pod_name == "server" and resp.destination.pod_name == "client"
        want = 404 if "/status/404" in resp.l7.http.url else 503 if "503" in resp.l7.http.url else 200
        assert resp.l7.http.code == want, resp.Summary
        assert resp.l7.latency_ns > 0
    assert [r.l7.http.url for r in responses] == [r.l7.http.url for r in requests]
    assert responses[0].Summary.startswith("HTTP/1.1 200 ")
    assert responses[0].Summary.endswith(f"(GET http://server:{HTTP_PORT}/ka/0)")


def test_pipelined_requests(lab, agent):
    reqs = [{"path": f"/pipe/{i}"} for i in range(3)]
    res = http(lab, reqs, pipeline=True)
    assert [r["code"] for r in res] == [200, 200, 200]
    flows = l7_flows(agent, 6, tag="/pipe/")
    requests = [f.l7.http.url for f in flows if f.l7.type == fpb.REQUEST]
    responses = [f.l7.http.url for f in flows if f.l7.type == fpb.RESPONSE]
    assert requests == [f"http://server:{HTTP_PORT}/pipe/{i}" for i in range(3)]
    assert responses == requests


def test_latency_close_to_client_measurement(lab, agent):
    res = http(lab, [{"path": "/delay/150?lat=1"}])
    client_ms = res[0]["latency_ms"]
    resp = [f for f in l7_flows(agent, 2, tag="lat=1") if f.l7.type == fpb.RESPONSE][0]
    agent_ms = resp.l7.latency_ns / 1e6
    # Seen at the server's interface: a little less than the client's round trip.
    assert 150 <= agent_ms <= client_ms + 1, (agent_ms, client_ms)
    assert client_ms - agent_ms < 50, (agent_ms, client_ms)
    assert resp.Summary.startswith(f"HTTP/1.1 200 {int(agent_ms)}ms")


def test_sensitive_values_redacted(lab, agent):
    http(lab, [{"path": "/redact?token=abc123&page=2",
                "headers": {"Authorization": "Bearer hunter2", "Cookie": "sid=xyz",
                            "X-Request-Id": "req-7"}}])
    flows = l7_flows(agent, 2, tag="/redact")
    req = [f for f in flows if f.l7.type == fpb.REQUEST][0]
    headers = {h.key: h.value for h in req.l7.http.headers}
    assert headers["Authorization"] == "HUBBLE_REDACTED"
    assert headers["Cookie"] == "HUBBLE_REDACTED"
    assert headers["X-Request-Id"] == "req-7"
    assert req.l7.http.url == f"http://server:{HTTP_PORT}/redact?token=HUBBLE_REDACTED&page=2"
    assert "hunter2" not in str(req) and "abc123" not in str(req)
    resp = [f for f in flows if f.l7.type == fpb.RESPONSE][0]
    assert {h.key: h.value for h in resp.l7.http.headers}["Set-Cookie"] == "HUBBLE_REDACTED"


def test_request_larger_than_prefix_degrades_to_l4(lab, agent):
    big = "y" * 3000  # the head goes far beyond the 1024-byte capture
    res = http(lab, [{"path": "/toolarge", "headers": {"X-Big": big}}, {"path": "/after-big"}])
    assert [r["code"] for r in res] == [200, 200]
    after = l7_flows(agent, 2, tag="/after-big")
    assert {f.l7.type for f in after} == {fpb.REQUEST, fpb.RESPONSE}
    # The next request on the same connection still pairs with its own response.
    resp = [f for f in after if f.l7.type == fpb.RESPONSE][0]
    assert resp.l7.http.url.endswith("/after-big")
    flows = agent.flows()
    assert not [f for f in flows if f.Type == fpb.L7 and "toolarge" in f.l7.http.url]
    # ...and the connection is still there at L3/L4.
    port = after[0].l4.TCP.source_port
    assert [f for f in flows if f.Type == fpb.L3_L4 and f.l4.TCP.source_port == port]


def test_not_http_on_an_http_port_gives_no_l7_flow(lab, agent):
    tls_hello = "16030100" + "01" * 60
    h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".hex()
    for payload in (tls_hello, h2):
        lab.exec(lab.pods["client"].netns, sys.executable, L7, "raw-client",
                 lab.pods["server"].ip4, str(HTTP_PORT), "--hex", payload, "--timeout", "3")
    # The agent is alive and the next HTTP request is parsed; once its flows are in, so
    # are the garbage connections' events (sent before it, drained on the same timer).
    http(lab, [{"path": "/after-garbage"}])
    l7_flows(agent, 2, tag="/after-garbage")
    flows = agent.flows()
    l7 = [f for f in flows if f.Type == fpb.L7 and not f.l7.http.url and not f.l7.dns.query]
    assert not l7, [f.Summary for f in l7]


def test_unselected_port_has_no_l7_flows(lab, agent):
    http(lab, [{"path": "/plain"}], port=PLAIN_PORT)
    wait_for(lambda: [f for f in agent.flows() if f.l4.TCP.destination_port == PLAIN_PORT
                      and f.l4.TCP.flags.FIN], 10, 0.2, "L4 flows of the plain port")
    assert not [f for f in agent.flows() if f.Type == fpb.L7 and "/plain" in f.l7.http.url]


def test_http_filters(lab, agent):
    http(lab, [{"path": "/filt/ok"}, {"path": "/status/500?filt=1"},
               {"path": "/status/404?filt=1"}])
    l7_flows(agent, 6, tag="filt")

    def get(**ff):
        return [f for f in agent.flows(whitelist=[fpb.FlowFilter(**ff)])]
    five = get(http_status_code=["5+"])
    assert five and all(f.l7.http.code >= 500 for f in five)
    assert {f.l7.http.code for f in get(http_status_code=["404"])} == {404}
    posts = get(http_method=["POST"])
    assert posts == []
    paths = get(http_path=["^/filt/.*$"])
    assert paths and all(f.l7.http.url.endswith("/filt/ok") for f in paths)
    urls = get(http_url=[r"http://server:8080/status/5\d\d\?filt=1"])
    assert urls and all("/status/500" in f.l7.http.url for f in urls)
    hdr = get(http_header=[fpb.HTTPHeader(key="Content-Type", value="text/plain")])
    assert hdr and all(f.l7.type == fpb.RESPONSE for f in hdr)
    proto = get(protocol=["http"])
    assert proto and all(f.Type == fpb.L7 and f.l7.HasField("http") for f in proto)


def dns(lab: NetLab, name: str, qtype: str, *extra: str) -> dict:
    return client(lab, "dns-query", lab.pods["dns"].ip4, name, qtype, *extra)


def test_dns_answers(lab, agent):
    p = lab.pods
    a = dns(lab, "web.test", "A")
    assert a == {"rcode": 0, "answers": [p["server"].ip4]}
    dns(lab, "web.test", "AAAA")
    nx = dns(lab, "nope.test", "A")
    assert nx["rcode"] == 3
    dns(lab, "alias.test", "A")
    dns(lab, "web.test", "A", "--tcp")
    flows = l7_flows(agent, 10, tag=".test")
    q = [f for f in flows if f.l7.type == fpb.REQUEST and f.l7.dns.query == "web.test."]
    assert q and q[0].l7.dns.qtypes == ["A"] and q[0].Summary == "DNS Query web.test. A"
    assert q[0].traffic_direction == fpb.EGRESS and q[0].destination.pod_name == "dns"
    answers = [f for f in flows if f.l7.type == fpb.RESPONSE]
    a_resp = [f for f in answers if f.l7.dns.query == "web.test." and "A" in f.l7.dns.qtypes]
    assert list(a_resp[0].l7.dns.ips) == [p["server"].ip4]
    assert a_resp[0].l7.dns.ttl == 30 and a_resp[0].l7.latency_ns > 0
    assert a_resp[0].is_reply.value is True
    assert a_resp[0].Summary == f'DNS Answer "{p["server"].ip4}" TTL: 30 (Query web.test. A)'
    aaaa = [f for f in answers if "AAAA" in f.l7.dns.qtypes]
    assert list(aaaa[0].l7.dns.ips) == [p["server"].ip6]
    nxf = [f for f in answers if f.l7.dns.query == "nope.test."][0]
    assert nxf.l7.dns.rcode == 3 and nxf.Summary.startswith("DNS Answer RCode: Non-Existent Domain")
    cn = [f for f in answers if f.l7.dns.query == "alias.test."][0]
    assert list(cn.l7.dns.cnames) == ["web.test."] and list(cn.l7.dns.ips) == [p["server"].ip4]
    tcp = [f for f in answers if f.l4.HasField("TCP")]
    assert tcp and tcp[0].l7.dns.query == "web.test."
    by_filter = agent.flows(whitelist=[fpb.FlowFilter(dns_query=[r"^alias\..*"])])
    assert by_filter and all(f.l7.dns.query == "alias.test." for f in by_filter)
    assert all(f.l7.HasField("dns") for f in agent.flows(whitelist=[fpb.FlowFilter(protocol=["dns"])]))


def test_names_from_answers_attached_to_later_flows(lab, agent):
    p = lab.pods
    dns(lab, "web.test", "A")
    http(lab, [{"path": "/named"}], port=PLAIN_PORT)

    def named():
        fl = [f for f in agent.flows() if f.l4.TCP.destination_port == PLAIN_PORT
              and f.Type == fpb.L3_L4 and "web.test" in f.destination_names]
        return fl or None
    fl = wait_for(named, 10, 0.2, "flows to web.test named")
    assert fl[0].IP.destination == p["server"].ip4
    replies = [f for f in agent.flows() if f.l4.TCP.source_port == PLAIN_PORT
               and "web.test" in f.source_names]
    assert replies


def test_counters_show_what_gave_no_l7_flow(lab, agent):
    """After TLS, HTTP/2 and an oversized head on the HTTP port (the tests above, and
    again here so this one stands alone), the agent's counters say why those gave no
    L7 flow, over webb's admin API and in `webb status`."""
    from support import BIN
    from webb.api.admin import admin_pb2

    for payload in ("16030100" + "01" * 60, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".hex()):
        lab.exec(lab.pods["client"].netns, sys.executable, L7, "raw-client",
                 lab.pods["server"].ip4, str(HTTP_PORT), "--hex", payload, "--timeout", "3")
    http(lab, [{"path": "/toolarge-again", "headers": {"X-Big": "z" * 3000}},
               {"path": "/after-count"}])
    l7_flows(agent, 2, tag="/after-count")

    def counters():
        st = agent.admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
        c = dict(st.counters)
        ok = (c.get("l7.http_unparsable_tls", 0) > 0 and c.get("l7.http_unparsable_http2", 0) > 0
              and c.get("l7.http_truncated", 0) > 0)
        return (st, c) if ok else None
    st, c = wait_for(counters, 10, 0.2, "L7 counters")
    assert st.node_name == "n1" and st.version.endswith("+webb")
    assert c["l7.http_requests"] > 0 and c["l7.http_responses"] > 0
    assert c["datapath.l7_events"] >= c["l7.http_requests"] and c["datapath.events"] > 0
    out = subprocess.run([str(BIN / "webb"), "status", "--server", agent.address],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"Healthcheck (via {agent.address}): Ok\nCurrent/Max Flows: ")
    assert "\nL7:\n  HTTP: " in out.stdout and "tls " in out.stdout and "http2 " in out.stdout
    truncated = [line for line in out.stdout.splitlines() if "heads cut by the prefix" in line]
    assert truncated and not truncated[0].startswith("  HTTP without L7 flow: 0 ")


def test_visibility_annotation_through_the_admin_api(lab, agent):
    """`<Ingress/8081/TCP/HTTP>` added to the server over webb.admin: its plain port is
    parsed from then on; a malformed rule is refused and changes nothing."""
    import grpc
    from webb.api.admin import admin_pb2

    p = lab.pods
    server = {e.name: e for e in agent.admin.ListEndpoints(
        admin_pb2.ListEndpointsRequest(), timeout=5).endpoints}["server"]
    ep = admin_pb2.Endpoint()
    ep.CopyFrom(server)
    bad = admin_pb2.Endpoint()
    bad.CopyFrom(server)
    bad.annotations["policy.cilium.io/proxy-visibility"] = "<Ingress/8081/TCP/GOPHER>"
    with pytest.raises(grpc.RpcError) as err:
        agent.admin.PutEndpoint(admin_pb2.PutEndpointRequest(endpoint=bad), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GOPHER" in err.value.details()
    ep.annotations["policy.cilium.io/proxy-visibility"] = (
        f"<Ingress/{HTTP_PORT}/TCP/HTTP>,<Ingress/{PLAIN_PORT}/TCP/HTTP>")
    got = agent.admin.PutEndpoint(admin_pb2.PutEndpointRequest(endpoint=ep), timeout=5).endpoint
    assert dict(got.annotations) == dict(ep.annotations)
    http(lab, [{"path": "/annotated-by-api"}], port=PLAIN_PORT)
    flows = l7_flows(agent, 2, tag="/annotated-by-api")
    server_ports = {f.l4.TCP.source_port if f.l7.type == fpb.RESPONSE else f.l4.TCP.destination_port
                    for f in flows}
    assert server_ports == {PLAIN_PORT}

"""The L7 encoders' flow.Flow bytes (pipeline/l7/encode.py, and the proxy's messages from
l7proxy/flows.py) stay what they were when their field numbers and enum values were
literals (they now come from flow_pb2's descriptors, pipeline/flow_wire.py): a digest
over HTTP requests and responses (captured and proxied, allowed and denied), DNS queries
and answers (captured and proxied, UDP and TCP, NXDOMAIN), and a parse of each that
checks every field lands where flow.proto puts it."""
from __future__ import annotations

import hashlib

from webb.api.flow import flow_pb2 as fpb
from webb_agent.datapath.event import (L7_DNS, L7_HTTP, L7_RESPONSE_SIDE, POINT_FROM_ENDPOINT,
                                       POINT_TO_ENDPOINT, L7Event)
from webb_agent.l7proxy.dnsproxy import DNSFlow
from webb_agent.l7proxy.flows import dns_message, l7_message
from webb_agent.l7proxy.http1 import parse_request, parse_response
from webb_agent.l7proxy.proxy import ProxyFlow
from webb_agent.pipeline.l7.dns import DNSMessage
from webb_agent.pipeline.l7.encode import L7Encoder
from webb_agent.pipeline.l7.fqdn import FQDNCache
from webb_agent.pipeline.l7.http import parse_http
from webb_agent.pipeline.l7.tracker import L7Message
from webb_agent.pipeline.flow_wire import ld, s
from webb_agent.pipeline.threefour import encode_endpoint
from webb_agent.policy.compile import PolicyRef
from webb_agent.stores.endpoints import packed_ip

# sha256 of the encodings below as written, and re-serialized in field-number order;
# both computed from the literal-numbered encoders.
GOLDEN = "7ca517091a7131d3420c097fca8525ea1e469e0aa8fc4f7c01cb503e045ab3af"
GOLDEN_CONTENT = "028558a1415b79e3298fc5cbc5c20b3b497801620ef78bd82f697d9df40615d1"

T0 = 1_700_000_000_123_456_789
SEC = 10**9
REF = PolicyRef("CiliumNetworkPolicy", "demo", "l7-rule", 1, ())


def l7ev(saddr: str, daddr: str, sport: int, dport: int, *, proto: int = 6,
         point: int = POINT_FROM_ENDPOINT, kind: int = L7_HTTP, answer: bool = False) -> L7Event:
    return L7Event(ts=1, saddr=packed_ip(saddr), daddr=packed_ip(daddr), sport=sport,
                   dport=dport, ifindex=5, seq=0, payload_len=0, payload_off=0, cap_len=0,
                   family=6 if ":" in saddr else 4, proto=proto, point=point,
                   l7=kind | (L7_RESPONSE_SIDE if answer else 0), is_reply=int(answer),
                   tcp_flags=0)


def http(raw: bytes):
    return parse_http(raw).messages[0]


def dns(response: bool, query: str = "web.test.", rcode: int = 0, **kw) -> DNSMessage:
    return DNSMessage(id=7, is_response=response, opcode=0, rcode=rcode, query=query,
                      qtypes=("A",), **kw)


def captured() -> list[L7Message]:
    req = http(b"GET /api?token=s3cret&page=2 HTTP/1.1\r\nHost: server:8080\r\n"
               b"Authorization: Bearer x\r\nX-Id: 7\r\nAccept: */*\r\n\r\n")
    resp = http(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nServer: t\r\n\r\n")
    req6 = http(b"POST /p HTTP/1.0\r\nHost: [fd00::11]\r\nContent-Length: 0\r\n\r\n")
    c, v = "10.1.0.10", "10.1.0.11"
    answer = dns(True, ips=("10.1.0.11", "fd00::11"), ttl=30, cnames=("alias.test.",),
                 rrtypes=("CNAME", "A", "AAAA"))
    return [
        L7Message(l7ev(c, v, 40000, 8080), T0, False, 0, http=req),
        L7Message(l7ev(c, v, 40000, 8080, point=POINT_TO_ENDPOINT), T0, False, 0, http=req),
        L7Message(l7ev(v, c, 8080, 40000, answer=True), T0, True, 3_000_000, http=resp,
                  request=req),
        L7Message(l7ev(v, c, 8080, 40000, point=POINT_TO_ENDPOINT, answer=True), T0, True,
                  12, http=resp, request=req),
        L7Message(l7ev("fd00::10", "fd00::11", 41000, 80), T0, False, 0, http=req6),
        L7Message(l7ev(c, "10.1.0.2", 5353, 53, proto=17, kind=L7_DNS), T0, False, 0,
                  dns=dns(False)),
        L7Message(l7ev("10.1.0.2", c, 53, 5353, proto=17, kind=L7_DNS, answer=True,
                       point=POINT_TO_ENDPOINT), T0, True, 500, dns=answer),
        L7Message(l7ev("10.1.0.2", c, 53, 5353, proto=6, kind=L7_DNS, answer=True,
                       point=POINT_TO_ENDPOINT), T0, True, 700,
                  dns=dns(True, "nope.test.", rcode=3)),
    ]


def proxied() -> list[L7Message]:
    cl, sv = ("10.244.1.10", 41000), ("10.244.1.11", 9080)
    denied = parse_request(b"GET /private HTTP/1.1\r\nHost: server\r\n\r\n")
    allowed = parse_request(b"GET /public/a HTTP/1.1\r\nHost: server\r\nX-Trace: 1\r\n\r\n")
    ok = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", "GET")
    flows = [ProxyFlow(1, 4, cl, sv, False, False, (REF,), denied),
             ProxyFlow(2, 4, cl, sv, True, False, (REF,), denied, code=403, latency_ns=SEC),
             ProxyFlow(3, 4, cl, sv, False, True, (REF,), allowed, egress=True),
             ProxyFlow(4, 4, cl, sv, True, True, (REF,), allowed, code=200, response_head=ok,
                       latency_ns=2 * SEC, egress=True),
             ProxyFlow(5, 4, cl, sv, False, True, (REF,), None)]
    out = [l7_message(f, 3) for f in flows]
    ns = ("10.244.1.10", 5353), ("10.244.0.2", 53)
    for response, allowed_, tcp in ((False, True, False), (True, True, False),
                                    (False, False, True)):
        msg = dns(response, "api.test.", ips=("10.9.0.1",) if response else (),
                  ttl=60 if response else 0, rrtypes=("A",) if response else ())
        out.append(dns_message(DNSFlow(4, *ns, response, allowed_, (REF,), msg,
                                       latency_ns=900 if response else 0, tcp=tcp), 4))
    return out


def encoder() -> L7Encoder:
    fq = FQDNCache()
    fq.learn(["web.test."], ["10.1.0.11"], 60, T0 - SEC)
    enc = L7Encoder("node-a", "1.0+test", fqdn=fq)
    enc.policies = lambda set_id, field: ld(field, s(1, f"policy-{set_id}") + s(2, "ns"))
    return enc


def encodings() -> list[bytes]:
    enc = encoder()
    src = encode_endpoint(11, 1001, "ns", ("k8s:app=c",), "c", "c", "Deployment", "default")
    dst = encode_endpoint(12, 1002, "ns", ("k8s:app=s",), "s", "", "", "default")
    return [enc.encode(m, T0 + i, f"uuid-{i}", src, dst)
            for i, m in enumerate(captured() + proxied())]


def test_encoding_unchanged():
    enc = encodings()
    canon = [fpb.Flow.FromString(b).SerializeToString(deterministic=True) for b in enc]
    assert hashlib.sha256(b"|".join(enc)).hexdigest() == GOLDEN
    assert hashlib.sha256(b"|".join(canon)).hexdigest() == GOLDEN_CONTENT


def test_http_fields_where_flow_proto_puts_them():
    flows = [fpb.Flow.FromString(b) for b in encodings()]
    for f in flows:
        assert (f.Type, f.event_type.type, f.node_name) == (fpb.L7, 129, "node-a")
        assert (f.emitter.name, f.emitter.version) == ("webb", "1.0+test")
        assert f.source.ID == 11 and f.destination.pod_name == "s" and f.uuid.startswith("uuid-")
    rq, rq_in, rs, rs_in, rq6 = flows[:5]
    assert rq.time.ToNanoseconds() == T0 and rq.verdict == fpb.FORWARDED
    assert (rq.IP.source, rq.IP.destination, rq.IP.ipVersion) == ("10.1.0.10", "10.1.0.11",
                                                                  fpb.IPv4)
    assert (rq.l4.TCP.source_port, rq.l4.TCP.destination_port) == (40000, 8080)
    assert (rq.l7.type, rq.l7.latency_ns, rq.traffic_direction) == (fpb.REQUEST, 0, fpb.EGRESS)
    assert rq.HasField("is_reply") and not rq.is_reply.value and not rq.reply
    h = rq.l7.http
    assert (h.code, h.method, h.protocol) == (0, "GET", "HTTP/1.1")
    assert h.url == "http://server:8080/api?token=HUBBLE_REDACTED&page=2"
    assert [(x.key, x.value) for x in h.headers] == [
        ("Accept", "*/*"), ("Authorization", "HUBBLE_REDACTED"), ("Host", "server:8080"),
        ("X-Id", "7")]
    assert rq.Summary == "HTTP/1.1 GET http://server:8080/api?token=HUBBLE_REDACTED&page=2"
    assert list(rq.destination_names) == ["web.test"] and not rq.source_names
    assert rq_in.traffic_direction == fpb.INGRESS
    assert (rs.l7.type, rs.l7.latency_ns, rs.traffic_direction) == (fpb.RESPONSE, 3_000_000,
                                                                    fpb.INGRESS)
    assert rs.is_reply.value and rs.reply and list(rs.source_names) == ["web.test"]
    assert (rs.l7.http.code, rs.l7.http.method, rs.l7.http.url) == (404, "GET", h.url)
    assert rs.Summary == f"HTTP/1.1 404 3ms (GET {h.url})"
    assert rs_in.traffic_direction == fpb.EGRESS
    assert rq6.IP.ipVersion == fpb.IPv6 and rq6.IP.destination == "fd00::11"
    assert rq6.l7.http.protocol == "HTTP/1.0" and rq6.l7.http.method == "POST"


def test_dns_fields_where_flow_proto_puts_them():
    flows = [fpb.Flow.FromString(b) for b in encodings()]
    q, a, nx = flows[5:8]
    assert q.l4.UDP.destination_port == 53 and q.l7.type == fpb.REQUEST
    assert (q.l7.dns.query, list(q.l7.dns.qtypes), q.l7.dns.ttl) == ("web.test.", ["A"], 0)
    assert q.Summary == "DNS Query web.test. A" and not q.is_reply.value
    d = a.l7.dns
    assert (a.l7.type, a.l7.latency_ns, a.traffic_direction) == (fpb.RESPONSE, 500, fpb.EGRESS)
    assert (list(d.ips), d.ttl, list(d.cnames)) == (["10.1.0.11", "fd00::11"], 30,
                                                   ["alias.test."])
    assert (list(d.rrtypes), d.rcode, d.observation_source) == (["CNAME", "A", "AAAA"], 0, "")
    assert a.l4.UDP.source_port == 53
    assert nx.l4.TCP.source_port == 53 and nx.l7.dns.rcode == 3
    assert nx.Summary == "DNS Answer RCode: Non-Existent Domain TTL: 0 (Query nope.test. A)"


def test_proxy_fields_where_flow_proto_puts_them():
    flows = [fpb.Flow.FromString(b) for b in encodings()][8:]
    denied, forbidden, allowed, ok, empty, dq, da, ddenied = flows
    assert denied.verdict == fpb.DROPPED and denied.traffic_direction == fpb.INGRESS
    assert [p.name for p in denied.ingress_denied_by] == ["policy-3"]
    assert not denied.ingress_allowed_by and not denied.egress_denied_by
    assert forbidden.verdict == fpb.FORWARDED and forbidden.l7.http.code == 403
    assert [p.name for p in forbidden.ingress_denied_by] == ["policy-3"]
    assert forbidden.l7.latency_ns == SEC and forbidden.is_reply.value
    assert allowed.verdict == fpb.FORWARDED and allowed.traffic_direction == fpb.EGRESS
    assert [p.name for p in allowed.egress_allowed_by] == ["policy-3"]
    assert [(x.key, x.value) for x in allowed.l7.http.headers] == [("Host", "server"),
                                                                  ("X-Trace", "1")]
    assert ok.l7.http.code == 200 and [p.name for p in ok.egress_allowed_by] == ["policy-3"]
    assert ok.traffic_direction == fpb.EGRESS and ok.l7.http.url == "http://server/public/a"
    assert empty.l7.http.method == "" and empty.l7.http.protocol == "HTTP/1.1"
    assert dq.l7.dns.observation_source == "proxy" and dq.l4.UDP.destination_port == 53
    assert [p.name for p in dq.egress_allowed_by] == ["policy-4"] and dq.verdict == fpb.FORWARDED
    assert list(da.l7.dns.ips) == ["10.9.0.1"] and da.l7.dns.ttl == 60
    assert da.traffic_direction == fpb.EGRESS and da.l7.latency_ns == 900
    assert ddenied.verdict == fpb.DROPPED and ddenied.l4.TCP.destination_port == 53
    assert [p.name for p in ddenied.egress_denied_by] == ["policy-4"]

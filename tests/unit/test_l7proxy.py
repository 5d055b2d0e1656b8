"""The L7 proxy's pieces without a network: HTTP/1.x heads and framing, bodies framed
over the pieces they arrive in, and requests against HTTP rules (Cilium's semantics)."""
from __future__ import annotations

import pytest

from webb_agent.l7proxy import http1
from webb_agent.l7proxy.http1 import CHUNKED, TO_CLOSE, HTTPError, parse_request, parse_response
from webb_agent.l7proxy.proxy import error_response
from webb_agent.l7proxy.rules import decide
from webb_agent.policy.compile import L7Entry, PolicyRef
from webb_agent.policy.model import HeaderMatch, HTTPRule

REF_A = PolicyRef("CiliumNetworkPolicy", "demo", "a", 1, ())
REF_B = PolicyRef("CiliumNetworkPolicy", "demo", "b", 1, ())


def req(text: str):
    return parse_request(text.replace("\n", "\r\n").encode() + b"\r\n")


def test_request_heads_and_framing():
    h = req("POST /upload?x=1 HTTP/1.1\nHost: srv:80\nContent-Length: 12\n")
    assert h.start == ("POST", "/upload?x=1", "HTTP/1.1") and h.body == 12 and h.keep_alive
    assert h.header("host") == "srv:80"
    assert req("GET / HTTP/1.1\nTransfer-Encoding: gzip, chunked\n").body == CHUNKED
    assert not req("GET / HTTP/1.0\n").keep_alive
    assert req("GET / HTTP/1.0\nConnection: keep-alive\n").keep_alive
    assert not req("GET / HTTP/1.1\nConnection: close\n").keep_alive


@pytest.mark.parametrize("text,status", [
    ("GET / HTTP/2.0\n", 505),
    ("\x16\x03\x01 hello\n", 400),
    ("GET /a b HTTP/1.1\n", 400),
    ("GET / HTTP/1.1\nBad Header: x\n", 400),
    ("GET / HTTP/1.1\nX: a\x01b\n", 400),
    ("GET / HTTP/1.1\nContent-Length: 1\nTransfer-Encoding: chunked\n", 400),
    ("GET / HTTP/1.1\nContent-Length: 1\nContent-Length: 2\n", 400),
    ("GET / HTTP/1.1\nContent-Length: -1\n", 400),
    ("GET / HTTP/1.1\nTransfer-Encoding: gzip\n", 501),
])
def test_bad_requests_are_refused_with_a_status(text, status):
    with pytest.raises(HTTPError) as e:
        req(text)
    assert e.value.status == status


@pytest.mark.parametrize("field,status", [
    (b"Transfer-Encoding: chunked\xa0", 501),   # NBSP: another coding to a server
    (b"Transfer-Encoding: chunked\x85", 501),   # NEL
    (b"Transfer-Encoding: \xa0chunked", 501),
    (b"Content-Length: \xb2", 400),             # a superscript two is no length
    (b"Content-Length: 5\xa0", 400),
])
def test_framing_values_are_trimmed_of_http_blanks_only(field, status):
    # Latin-1 decoded values: Python's str.strip()/isdigit() know more blanks and
    # digits than HTTP does. A server that ignores a coding it does not know reads
    # the chunked body as the next request, one the proxy never judged.
    with pytest.raises(HTTPError) as e:
        parse_request(b"POST / HTTP/1.1\r\n" + field + b"\r\n\r\n")
    assert e.value.status == status
    with pytest.raises(HTTPError) as e:
        parse_response(b"HTTP/1.1 200 OK\r\n" + field + b"\r\n\r\n", "GET")
    assert e.value.status == status
    assert parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip ,\tchunked \r\n\r\n"
                         ).body == CHUNKED
    assert parse_request(b"POST / HTTP/1.1\r\nContent-Length: 7 , 7\r\n\r\n").body == 7


def test_response_framing():
    r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "GET")
    assert r.body == 5 and r.keep_alive
    assert parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD").body == 0
    assert parse_response(b"HTTP/1.1 304 Not Modified\r\n\r\n", "GET").body == 0
    r = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", "GET")
    assert r.body == TO_CLOSE and not r.keep_alive
    with pytest.raises(HTTPError):
        parse_response(b"HTTP/1.1 2000 OK\r\n\r\n", "GET")


def test_error_response_is_cilium_like():
    out = error_response(403, b"Access denied\r\n", close=False)
    head, body = out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n") and body == b"Access denied\r\n"
    assert b"content-length: 15" in head and b"connection: close" not in head


def _framed(body: http1.Body, data: bytes, piece: int) -> int:
    """Feeds data in pieces of `piece` bytes as they would arrive; the bytes that
    belong to the body (it stops taking at its end)."""
    taken = 0
    for i in range(0, len(data), piece):
        n = body.feed(data[i:i + piece])
        taken += n
        if n < len(data[i:i + piece]):
            assert body.done
            break
    return taken


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, 1 << 20])
def test_body_framing_over_pieces_as_they_arrive(piece):
    chunked = (b"5\r\nhello\r\n6;ext=1\r\n world\r\nA ; e=\"x\"\r\n0123456789\r\n0\r\n"
               b"X-Trailer: 1\r\n\r\nNEXT")
    b = http1.Body(CHUNKED)
    assert _framed(b, chunked, piece) == len(chunked) - 4 and b.done
    assert b.wire == len(chunked) - 4
    sized = b"x" * 300_000 + b"rest"
    b = http1.Body(300_000)
    assert _framed(b, sized, piece if piece > 64 else 65536) == 300_000 and b.done
    b = http1.Body(10)
    assert _framed(b, b"abc", piece) == 3 and not b.done and not b.eof()  # cut short
    b = http1.Body(TO_CLOSE)
    assert _framed(b, b"anything", piece) == 8 and not b.done and b.eof()
    assert http1.Body(0).done


@pytest.mark.parametrize("data,status", [
    (b"zz\r\n", 400), (b"-5\r\nhello\r\n", 400), (b"0x5\r\nhello\r\n", 400),
    (b"5" * 5000 + b"\r\n", 400), (b"0\r\n" + b"X: y\r\n" * 20000, 431),
    # Lenient forms a server may read otherwise than the proxy (request smuggling):
    (b"5\r\nhelloXY0\r\n\r\n", 400),                        # no CRLF after the data
    (b"5\r\nhello\n10\r\n\r\nGET /admin HTTP/1.1\r\n", 400),  # bare LF after the data
    (b"5\nhello\r\n0\r\n\r\n", 400),                         # bare LF after the size
    (b" 5\r\nhello\r\n0\r\n\r\n", 400),                     # blank before the size
    (b"5 \r\nhello\r\n0\r\n\r\n", 400),                     # blank after it, no extension
    (b"0\r\nX-Trailer: 1\n\r\n", 400),                         # bare LF in the trailers
    (b"0\r\nnot a field\r\n\r\n", 400),                       # a trailer line without a name
    (b"0\r\n\n", 400),                                         # the last line a bare LF
])
def test_bad_chunked_framing_is_refused(data, status):
    for piece in (1, 1 << 20):
        with pytest.raises(HTTPError) as e:
            _framed(http1.Body(CHUNKED), data, piece)
        assert e.value.status == status


def test_head_search_goes_on_where_it_stopped():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET"
    assert http1.find_head(raw, 0, 0) == len(raw) - 3
    assert http1.find_head(raw[:20], 0, 0) == -1
    assert http1.find_head(raw, 0, 17) == len(raw) - 3  # what was searched less 3 bytes
    assert http1.find_head(raw, len(raw) - 3, 0) == -1


def test_rules_match_whole_values_and_headers():
    rules = (HTTPRule(method="GET", path="/public/.*"),
             HTTPRule(method="POST|PUT", path="/upload", host="srv(:80)?",
                      headers=(HeaderMatch("X-Token", "yes"), HeaderMatch("X-Trace"))))
    entries = (L7Entry(frozenset({5}), rules, REF_A),)
    ok = lambda text: decide(entries, 5, req(text))[0]  # noqa: E731
    assert ok("GET /public/a HTTP/1.1\n")
    assert not ok("GET /public HTTP/1.1\n")            # whole path
    assert not ok("GETX /public/a HTTP/1.1\n")         # whole method
    assert not ok("GET /x/public/a HTTP/1.1\n")
    up = "PUT /upload HTTP/1.1\nHost: srv:80\nX-Token: yes\nX-Trace: 1\nContent-Length: 0\n"
    assert ok(up)
    assert not ok(up.replace("X-Token: yes", "X-Token: no"))
    assert not ok(up.replace("X-Trace: 1\n", ""))
    assert not ok(up.replace("srv:80", "other"))
    assert not ok(up.replace("/upload", "/upload?x=1"))  # the query is part of the path
    # Another identity: no entry covers it.
    assert decide(entries, 6, req("GET /public/a HTTP/1.1\n")) == (False, ())


def test_a_rule_without_http_rules_allows_every_request_of_its_peers():
    entries = (L7Entry(frozenset({5, 6}), (HTTPRule(method="GET"),), REF_A),
               L7Entry(frozenset({6}), None, REF_B))
    assert decide(entries, 5, req("DELETE /x HTTP/1.1\n")) == (False, (REF_A,))
    assert decide(entries, 6, req("DELETE /x HTTP/1.1\n")) == (True, (REF_B,))
    assert decide(entries, 5, req("GET /x HTTP/1.1\n")) == (True, (REF_A,))
    anyone = (L7Entry(frozenset({0}), (HTTPRule(path="/nopathallowed"),), REF_A),)
    assert decide(anyone, 77, req("GET /nopathallowed HTTP/1.1\n"))[0]


def test_policy_get_wide_names_the_l7_rules():
    import json
    from pathlib import Path

    import yaml

    from webb.api.admin import admin_pb2 as apb
    from webb_cli.policy import l7_summary, policies_table
    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" /
                          "reviews-l7.yaml").read_text())
    assert l7_summary(json.dumps(doc)) == "HTTP 9080/TCP (1 rule)"
    p = apb.Policy(kind="CiliumNetworkPolicy", name="reviews", namespace="bookinfo",
                   revision=3, document=json.dumps(doc), rule_count=2)
    table = policies_table([p], wide=True)
    assert "L7" in table.splitlines()[0] and "HTTP 9080/TCP (1 rule)" in table
    assert l7_summary("{}") == "-" and l7_summary("not json") == "-"


def test_proxy_flows_are_counted_by_the_exporter():
    """What the proxy reports, encoded as the agent does, through the exporter's
    httpV2 and policy handlers: a denied request counts as dropped, its 403 answer
    and the allowed exchange as an ordinary HTTP request/response."""
    from webb.api.flow import flow_pb2 as fpb
    from webb_agent.pipeline.l7.encode import L7Encoder
    from webb_agent.l7proxy.flows import l7_message
    from webb_agent.l7proxy.proxy import ProxyFlow
    from webb_metrics.config import parse_metrics
    from webb_metrics.handlers import PLUGINS
    from webb_metrics.pipeline import Pipeline

    enc = L7Encoder("n1", "test")
    enc.policies = lambda set_id, field: b""
    c, s = ("10.244.1.10", 41000), ("10.244.1.11", 9080)
    denied = req("GET /private HTTP/1.1\nHost: server\n")
    allowed = req("GET /public/a HTTP/1.1\nHost: server\n")
    ok = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", "GET")
    flows = [ProxyFlow(1, 4, c, s, False, False, (REF_A,), denied),
             ProxyFlow(2, 4, c, s, True, False, (REF_A,), denied, code=403, latency_ns=10**6),
             ProxyFlow(3, 4, c, s, False, True, (REF_A,), allowed),
             ProxyFlow(4, 4, c, s, True, True, (REF_A,), allowed, code=200, response_head=ok,
                       latency_ns=2 * 10**6)]
    p = Pipeline(parse_metrics(["httpV2", "policy"], PLUGINS))
    for i, f in enumerate(flows):
        p.process(fpb.Flow.FromString(enc.encode(l7_message(f, 1), f.time_ns, str(i), b"", b"")))
    got = {}
    for vec in p.store.vecs:
        for smp in vec.collect().samples:
            if smp.name in ("hubble_http_requests_total", "hubble_policy_verdicts_total"):
                got[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
    policy = {dict(k)["action"]: v for (n, k), v in got.items()
              if n == "hubble_policy_verdicts_total"}
    assert policy == {"dropped": 1, "forwarded": 3}
    codes = {dict(k)["status"]: v for (n, k), v in got.items() if n == "hubble_http_requests_total"}
    assert codes == {"403": 1, "200": 1}


def _outcome(parse, raw, *args):
    try:
        h = parse(raw, *args)
    except HTTPError as e:
        return ("error", e.status, e.reason)
    return (h.start, h.headers, h.raw, h.body, h.keep_alive)


_REQUESTS = [
    b"GET /a HTTP/1.1\r\nHost: srv:80\r\nAccept:  */*  \r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nconnection: upgrade, CLOSE\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Note: connection close\r\n\r\n",    # the word, not the field
    b"GET / HTTP/1.1\r\nX-Latin: caf\xe9\r\n\r\n",
    b"POST /u HTTP/1.1\r\nContent-Length: 12\r\n\r\n",
    b"POST /u HTTP/1.1\r\ncontent-length: 1, 1\r\n\r\n",
    b"POST /u HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST /u HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
    b"POST /u HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /u HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
    b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    b"POST /u HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n",
    b"POST /u HTTP/1.1\r\nX-Content-Length: 5\r\n\r\n",
    b"GET / HTTP/1.1\r\r\nHost: a\r\n\r\n",                 # start line ending in CR
    b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",        # obs-fold
    b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length : 1\r\n\r\n",        # blank before the colon
    b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",                         # bare LF line ends
    b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"\r\n",
    b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n",
    b"GET  / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.2\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"GET / http/1.1\r\n\r\n",
    b"G\xe9T / HTTP/1.1\r\n\r\n",
    b"GET /\xe9 HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1 \r\n\r\n",
    b"\x16\x03\x01 hello\r\n\r\n",
]
_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 27\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 200\r\n\r\n",
    b"HTTP/1.1 200 \r\n\r\n",
    b"HTTP/1.1 200 Very  Fine\t\xe9\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 007 Odd\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1  200 OK\r\n\r\n",
    b"HTTP/1.2 200 OK\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length:  27 \t\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length:0123\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 123456789012345\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\xb2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Note: content-length\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Content-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\x7fb\r\n\r\n",
    b"HTTP/1.1 200 OK\r\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n",
]


def _mutants(raw: bytes, n: int, seed: int) -> list[bytes]:
    """Deterministic variants of a head: a byte inserted, replaced or dropped; the
    head stays CRLF CRLF-ended so that it reaches the parsers."""
    import random
    rnd = random.Random(seed)
    alphabet = b" \t\r\n:,;\x00\x01\x7f\x80\xe9aZ09-/"
    out = []
    body = raw[:-4]
    for _ in range(n):
        i = rnd.randrange(len(body) + 1)
        c = bytes([rnd.choice(alphabet)])
        op = rnd.randrange(3)
        m = (body[:i] + c + body[i:] if op == 0 else body[:i] + c + body[i + 1:] if op == 1
             else body[:i] + body[i + 1:])
        out.append(m + b"\r\n\r\n")
    return out


def test_plain_head_parse_is_the_strict_parse():
    """parse_request / parse_response take one regex match for a plain head and the
    strict line-by-line parse for anything else: both give the same Head, or the
    same error, for every head (hand-picked edge cases and seeded mutations of them)."""
    reqs = list(_REQUESTS)
    resps = list(_RESPONSES)
    for i, r in enumerate(_REQUESTS[:8]):
        reqs += _mutants(r, 300, i)
    for i, r in enumerate(_RESPONSES[:8]):
        resps += _mutants(r, 300, 100 + i)
    plain = 0
    for raw in reqs:
        assert _outcome(parse_request, raw) == _outcome(http1._parse_request_strict, raw), raw
        plain += http1._PLAIN_REQUEST.fullmatch(raw.decode("latin-1")) is not None
    for raw in resps:
        for method in ("GET", "HEAD"):
            assert _outcome(parse_response, raw, method) == \
                _outcome(http1._parse_response_strict, raw, method), (raw, method)
    assert plain > len(reqs) // 4  # the fast path is taken, not only the fallback


def test_proxy_messages_name_each_flows_own_policies():
    """The agent interns a run of flows' policies once (agent._proxy_messages): flows
    with other policies in between, or none, still get their own set."""
    from types import SimpleNamespace

    from webb_agent.agent import Agent
    from webb_agent.l7proxy.proxy import ProxyFlow
    from webb_agent.policy.compile import PolicySets

    sets = PolicySets()
    head = req("GET /a HTTP/1.1\nHost: s\n")
    c, s = ("10.0.0.1", 40000), ("10.0.0.2", 80)
    a, b = (REF_A,), (REF_A, REF_B)
    order = [a, a, b, a, (), (), b]
    fake = SimpleNamespace(policy=SimpleNamespace(sets=sets),
                           _proxy_flows=[ProxyFlow(i, 4, c, s, False, True, p, head)
                                         for i, p in enumerate(order)])
    msgs = Agent._proxy_messages(fake)  # type: ignore[arg-type]
    assert [m.policy_set for m in msgs] == [sets.intern(p) for p in order]
    assert len({sets.intern(a), sets.intern(b), sets.intern(())}) == 3
    assert fake._proxy_flows == []

"""The L7 pipeline without the kernel: hand-built l7_events records (the header of
bpf/l7.h and the packet bytes the kernel appends) through L7Tracker (stream
tracking, pairing, counters), L7Encoder (Flow wire bytes), the FQDN cache, the
visibility rules and the agent's ingest, as the agent runs them."""
from __future__ import annotations

import random
import socket
import struct

import pytest

from webb.api.flow import flow_pb2 as fpb
from webb_agent.datapath.event import (EVENT_TRACE, L7_DNS, L7_HTTP, L7_MODE_SPORT,
                                       L7_RESPONSE_SIDE, POINT_FROM_ENDPOINT, POINT_TO_ENDPOINT,
                                       REASON_NEW, FlowEvent, L7Event, decode_l7, pack_l7)
from webb_agent.pipeline.threefour import FlowEncoder
from webb_agent.stores.endpoints import Endpoint, EndpointError, EndpointRegistry, packed_ip, parse_endpoint
from webb_agent.stores.identities import IdentityAllocator
from webb_agent.pipeline.ingest import Ingest
from webb_agent.pipeline.l7.encode import L7Encoder
from webb_agent.pipeline.l7.fqdn import FQDNCache
from webb_agent.pipeline.l7.http import HTTPRequest, HTTPResponse
from webb_agent.pipeline.l7.redact import REDACTED
from webb_agent.pipeline.l7.tracker import L7Message, L7Tracker
from webb_agent.pipeline.l7.visibility import (ANNOTATION, DEFAULT_RULES, VisibilityError,
                                               parse_visibility, selection_keys)
from webb_agent.pipeline.wire_cache import FlowWireCache
from webb_agent.pipeline.record import L7Record
from webb_agent.stores.ring import Ring

CLIENT = ("10.1.0.10", 40000)
SERVER = ("10.1.0.11", 8080)
DNS_SERVER = ("10.1.0.12", 53)
SEC = 1_000_000_000
OFFSET = 1_700_000_000 * SEC  # kernel monotonic -> wall clock, as ingest passes it


# --- records as the kernel writes them ----------------------------------------------------

def _headers(src: tuple[str, int], dst: tuple[str, int], proto: int, seq: int,
             payload_len: int) -> bytes:
    """Ethernet + IP + TCP/UDP headers of a frame carrying payload_len bytes."""
    v6 = ":" in src[0]
    l4 = (struct.pack("!HHIIBBHHH", src[1], dst[1], seq, 0, 5 << 4, 0x18, 65535, 0, 0)
          if proto == 6 else struct.pack("!HHHH", src[1], dst[1], 8 + payload_len, 0))
    if v6:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4) + payload_len, proto, 64,
                         socket.inet_pton(socket.AF_INET6, src[0]),
                         socket.inet_pton(socket.AF_INET6, dst[0]))
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4) + payload_len, 0, 0, 64, proto,
                         0, socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    eth += struct.pack("!H", 0x86DD if v6 else 0x0800)
    return eth + ip + l4


def record(payload: bytes, *, ts: int, src: tuple[str, int] = CLIENT,
           dst: tuple[str, int] = SERVER, seq: int = 1, kind: int = L7_HTTP,
           answers: bool = False, point: int = POINT_TO_ENDPOINT, proto: int = 6,
           prefix: int = 1024, ifindex: int = 5) -> bytes:
    """One l7_events record: header + the first bytes of the frame (cut at prefix)."""
    hdr = _headers(src, dst, proto, seq, len(payload))
    frame = hdr + payload
    cap = min(len(frame), len(hdr) + prefix)
    ev = L7Event(ts=ts, saddr=packed_ip(src[0]), daddr=packed_ip(dst[0]), sport=src[1],
                 dport=dst[1], ifindex=ifindex, seq=seq if proto == 6 else 0,
                 payload_len=len(payload), payload_off=len(hdr), cap_len=cap,
                 family=6 if ":" in src[0] else 4, proto=proto, point=point,
                 l7=kind | (L7_RESPONSE_SIDE if answers else 0), is_reply=int(answers),
                 tcp_flags=0x18 if proto == 6 else 0)
    return pack_l7(ev, frame[:cap])


class Conn:
    """A TCP connection's two directions with their sequence numbers, as seen at one
    endpoint interface: the server's (ingress rule) or the client's (egress rule)."""

    def __init__(self, client: tuple[str, int] = CLIENT, server: tuple[str, int] = SERVER,
                 at_server: bool = True, prefix: int = 1024) -> None:
        self.client, self.server, self.prefix = client, server, prefix
        self.req_point = POINT_TO_ENDPOINT if at_server else POINT_FROM_ENDPOINT
        self.resp_point = POINT_FROM_ENDPOINT if at_server else POINT_TO_ENDPOINT
        self.req_seq, self.resp_seq = 1_000_000, 4_294_967_000  # the latter wraps

    def req(self, payload: bytes, ts: int, seq: int | None = None) -> bytes:
        s = self.req_seq if seq is None else seq
        if seq is None:
            self.req_seq = (self.req_seq + len(payload)) & 0xFFFFFFFF
        return record(payload, ts=ts, src=self.client, dst=self.server, seq=s,
                      point=self.req_point, prefix=self.prefix)

    def resp(self, payload: bytes, ts: int, seq: int | None = None) -> bytes:
        s = self.resp_seq if seq is None else seq
        if seq is None:
            self.resp_seq = (self.resp_seq + len(payload)) & 0xFFFFFFFF
        return record(payload, ts=ts, src=self.server, dst=self.client, seq=s, answers=True,
                      point=self.resp_point, prefix=self.prefix)

    def body(self, n: int, direction: str = "resp") -> None:
        """Body bytes the kernel kept to itself (they did not start like a head)."""
        if direction == "resp":
            self.resp_seq = (self.resp_seq + n) & 0xFFFFFFFF
        else:
            self.req_seq = (self.req_seq + n) & 0xFFFFFFFF


def get(path: str, host: str = "server:8080", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def ok(body: bytes = b"hello", code: int = 200, reason: str = "OK") -> bytes:
    return (f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def http_msgs(out: list[L7Message]) -> list[tuple[str, str, int]]:
    """(kind, request target, latency) of each message, in output order."""
    res = []
    for m in out:
        if m.response:
            assert isinstance(m.http, HTTPResponse) and m.request is not None
            res.append((f"resp {m.http.code}", m.request.target, m.latency_ns))
        else:
            assert isinstance(m.http, HTTPRequest)
            res.append(("req", m.http.target, 0))
    return res


# --- HTTP streams -------------------------------------------------------------------------

def test_keepalive_requests_pair_in_order_with_latency():
    t, c = L7Tracker(), Conn()
    raws = []
    for i in range(3):
        raws += [c.req(get(f"/ka/{i}"), ts=1000 + 100 * i), c.resp(ok(), ts=1030 + 100 * i + i)]
    out = t.process(raws, OFFSET)
    assert http_msgs(out) == [("req", "/ka/0", 0), ("resp 200", "/ka/0", 30),
                              ("req", "/ka/1", 0), ("resp 200", "/ka/1", 31),
                              ("req", "/ka/2", 0), ("resp 200", "/ka/2", 32)]
    assert out[0].time_ns == 1000 + OFFSET and out[1].time_ns == 1030 + OFFSET
    assert t.counters["http_requests"] == 3 and t.counters["http_responses"] == 3
    assert t.http.pending() == 0


def test_marks_of_ended_connections_expire_and_are_counted():
    """A connection per request (the demo's clients): each direction leaves a
    next-message mark; marks of quiet directions go after STREAM_IDLE_NS, counted,
    instead of piling up to MAX_STREAMS (agent memory growing after the ring is full)."""
    from webb_agent.pipeline.l7 import tracker as tr
    t = L7Tracker()
    step = 10**8  # 10 connections per second of kernel time
    conns = 2000  # 200 s: far longer than the idle limit
    for i in range(conns):
        c = Conn(client=("10.1.0.10", 20000 + i))
        ts = 1_000_000_000 + i * step
        t.process([c.req(get(f"/c/{i}"), ts=ts), c.resp(ok(), ts=ts + 1000)], OFFSET)
    per_s = 2 * 10**9 // step  # directions that start per second
    assert t.streams() <= per_s * (tr.STREAM_IDLE_NS // 10**9 + 2)
    assert t.counters["tcp_stream_marks_expired"] == 2 * conns - t.streams()
    assert t.counters["http_requests"] == conns == t.counters["http_responses"]
    # a direction still talking keeps its mark (and its retransmission check)
    c = Conn(client=("10.1.0.10", 9999))
    t0 = 1_000_000_000 + conns * step
    first = c.req(get("/again"), ts=t0)
    for k in range(40):  # one request a second for 40 s, past the idle limit
        t.process([c.req(get(f"/ka/{k}"), ts=t0 + (k + 1) * 10**9)], OFFSET)
    out = t.process([first], OFFSET)  # an old retransmission: still recognised
    assert not out and t.counters["http_skipped_segments"] >= 1


def test_pipelined_requests_in_one_segment():
    t, c = L7Tracker(), Conn()
    seg = get("/pipe/0") + get("/pipe/1") + b"POST /pipe/2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    # Two answers in one segment, the third in its own.
    out = t.process([c.req(seg, ts=100), c.resp(ok() + ok(code=404, reason="Not Found"), ts=150),
                     c.resp(ok(code=201, reason="Created"), ts=170)], OFFSET)
    assert http_msgs(out) == [("req", "/pipe/0", 0), ("req", "/pipe/1", 0), ("req", "/pipe/2", 0),
                              ("resp 200", "/pipe/0", 50), ("resp 404", "/pipe/1", 50),
                              ("resp 201", "/pipe/2", 70)]
    # Without a Host header the URL names the server's address and port.
    assert out[2].http.url == "http://10.1.0.11:8080/pipe/2"  # type: ignore[union-attr]


def test_responses_arriving_before_their_requests_in_a_batch():
    """Per-CPU perf buffers: the tracker orders a batch by kernel time."""
    t, c = L7Tracker(), Conn()
    reqs = [c.req(get(f"/o/{i}"), ts=1000 + 100 * i) for i in range(3)]
    resps = [c.resp(ok(), ts=1050 + 100 * i) for i in range(3)]
    batch = resps[::-1] + reqs[::-1]
    random.Random(7).shuffle(batch)
    out = t.process(batch, OFFSET)
    assert http_msgs(out) == [("req", "/o/0", 0), ("resp 200", "/o/0", 50),
                              ("req", "/o/1", 0), ("resp 200", "/o/1", 50),
                              ("req", "/o/2", 0), ("resp 200", "/o/2", 50)]
    assert t.counters["http_unmatched_responses"] == 0


def test_retransmitted_request_is_not_counted_twice():
    t, c = L7Tracker(), Conn()
    first_seq = c.req_seq
    out = t.process([c.req(get("/rtx"), ts=100)], OFFSET)
    # The same segment again (same sequence number), in a later batch.
    out += t.process([c.req(get("/rtx"), ts=300, seq=first_seq), c.resp(ok(), ts=350)], OFFSET)
    assert http_msgs(out) == [("req", "/rtx", 0), ("resp 200", "/rtx", 250)]
    assert t.counters["http_requests"] == 1 and t.counters["http_skipped_segments"] == 1
    # A retransmitted answer is skipped too, so it does not show as unmatched.
    resp_seq = (c.resp_seq - len(ok())) & 0xFFFFFFFF
    assert t.process([c.resp(ok(), ts=400, seq=resp_seq)], OFFSET) == []
    assert t.counters["http_skipped_segments"] == 2 and t.counters["http_unmatched_responses"] == 0


def test_body_segment_that_starts_like_a_head_is_skipped_by_seq():
    t, c = L7Tracker(), Conn()
    fake = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    body = b"x" * 1000 + fake + b"x" * (2000 - len(fake))      # 3000 bytes
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n"
    raws = [c.req(get("/file"), ts=100),
            c.resp(head + body[:100], ts=200)]        # head and the start of the body
    c.body(900)                                       # body the kernel kept to itself
    raws.append(c.resp(body[1000:1500], ts=210))      # inside the body, starts like a head
    c.body(1500)
    raws += [c.req(get("/next"), ts=300), c.resp(ok(), ts=320)]
    out = t.process(raws, OFFSET)
    # Read as a head, the fake would have answered /next and shifted every later pair.
    assert http_msgs(out) == [("req", "/file", 0), ("resp 200", "/file", 100),
                              ("req", "/next", 0), ("resp 200", "/next", 20)]
    assert t.counters["http_skipped_segments"] == 1
    assert t.counters["http_unmatched_responses"] == 0


def test_head_cut_by_the_prefix_gives_no_flow_and_its_response_is_not_emitted():
    t, c = L7Tracker(), Conn(prefix=256)
    big = get("/toolarge", extra="X-Big: " + "y" * 600 + "\r\n")
    out = t.process([c.req(big, ts=100), c.resp(ok(), ts=150),
                     c.req(get("/after"), ts=200), c.resp(ok(), ts=260)], OFFSET)
    assert http_msgs(out) == [("req", "/after", 0), ("resp 200", "/after", 60)]
    assert t.counters["http_truncated"] == 1 and t.counters["http_truncated_pairs"] == 1
    # A response head cut by the prefix: no flow, and the request it answered is used up.
    big_resp = ok().replace(b"\r\n\r\n", b"\r\nX-Big: " + b"z" * 600 + b"\r\n\r\n")
    out = t.process([c.req(get("/big-answer"), ts=300), c.resp(big_resp, ts=330),
                     c.req(get("/last"), ts=400), c.resp(ok(), ts=410)], OFFSET)
    assert http_msgs(out) == [("req", "/big-answer", 0), ("req", "/last", 0),
                              ("resp 200", "/last", 10)]
    assert t.counters["http_truncated"] == 2


def test_pipelined_request_whose_start_line_is_cut_keeps_pairing_in_order():
    """A second pipelined request whose start line is cut at the segment's end must
    still hold its place in the queue, or its answer would pair with the request
    after it."""
    t, c = L7Tracker(), Conn()
    r1, r2 = get("/one"), get("/two")
    raws = [c.req(r1 + r2[:7], ts=100)]               # "GET /tw" ends the segment
    c.body(len(r2) - 7, "req")                        # the rest: not a head, kernel keeps it
    raws += [c.req(get("/three"), ts=110),
             c.resp(ok(), ts=150), c.resp(ok(), ts=160), c.resp(ok(), ts=170)]
    out = t.process(raws, OFFSET)
    assert http_msgs(out) == [("req", "/one", 0), ("req", "/three", 0),
                              ("resp 200", "/one", 50), ("resp 200", "/three", 60)]
    assert t.counters["http_truncated"] == 1 and t.counters["http_truncated_pairs"] == 1


def test_unmatched_response_is_counted_not_emitted():
    t, c = L7Tracker(), Conn()
    assert t.process([c.resp(ok(), ts=100)], OFFSET) == []
    # It waits one batch for a request that another CPU's buffer may still hold...
    assert t.counters["http_unmatched_responses"] == 0
    assert t.process([], OFFSET) == []
    # ...and is counted when none came.
    assert t.counters["http_unmatched_responses"] == 1 and t.counters["http_responses"] == 0


def test_answer_drained_before_its_request_still_pairs():
    """The answer's CPU buffer was read in one drain, the request's (written earlier)
    only in the next: the answer waits one batch and pairs with the right request."""
    t, c = L7Tracker(), Conn()
    first = [c.req(get("/one"), ts=100), c.resp(ok(), ts=150)]
    req2, resp2 = c.req(get("/two"), ts=200), c.resp(ok(code=404, reason="Not Found"), ts=260)
    out = t.process(first + [resp2], OFFSET)
    assert http_msgs(out) == [("req", "/one", 0), ("resp 200", "/one", 50)]
    out = t.process([req2, c.req(get("/three"), ts=300), c.resp(ok(), ts=330)], OFFSET)
    assert http_msgs(out) == [("req", "/two", 0), ("resp 404", "/two", 60),
                              ("req", "/three", 0), ("resp 200", "/three", 30)]
    assert t.counters["http_unmatched_responses"] == 0


@pytest.mark.parametrize("payload,reason", [
    (bytes.fromhex("160301") + b"\x00\x40" + b"\x01" * 64, "tls"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "http2"),
    (bytes(range(0, 40)), "binary"),
    (b"hello there, this is not http\r\n", "malformed"),
    (b"GET / HTTP/2.0\r\n\r\n", "http2"),
])
def test_not_http_on_an_http_port_is_counted_by_reason(payload, reason):
    t, c = L7Tracker(), Conn()
    assert t.process([c.req(payload, ts=100)], OFFSET) == []
    assert t.counters[f"http_unparsable_{reason}"] == 1
    assert t.counters["http_requests"] == 0


def test_request_on_the_answer_side_is_not_trusted():
    t, c = L7Tracker(), Conn()
    assert t.process([c.resp(get("/wrong-way"), ts=100)], OFFSET) == []
    assert t.counters["http_unparsable_direction"] == 1


def test_informational_response_precedes_the_final_one():
    t, c = L7Tracker(), Conn()
    post = b"POST /upload HTTP/1.1\r\nHost: s\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n"
    raws = [c.req(post, ts=100), c.resp(b"HTTP/1.1 100 Continue\r\n\r\n", ts=110)]
    c.body(10, "req")
    raws.append(c.resp(ok(code=201, reason="Created"), ts=200))
    out = t.process(raws, OFFSET)
    assert http_msgs(out) == [("req", "/upload", 0), ("resp 100", "/upload", 10),
                              ("resp 201", "/upload", 100)]
    assert t.http.pending() == 0


# --- DNS ----------------------------------------------------------------------------------

def dns_name(n: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in n.rstrip(".").split(".")) + b"\0"


def dns_query(ident: int, name: str, qtype: int = 1) -> bytes:
    return (struct.pack("!6H", ident, 0x0100, 1, 0, 0, 0) + dns_name(name)
            + struct.pack("!HH", qtype, 1))


def dns_answer(ident: int, name: str, ips: list[str], ttl: int = 30, rcode: int = 0,
               cname: str = "") -> bytes:
    rrs = b""
    owner = b"\xc0\x0c"
    if cname:
        target = dns_name(cname)
        rrs += owner + struct.pack("!HHIH", 5, 1, ttl, len(target)) + target
    for ip in ips:
        v6 = ":" in ip
        rdata = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, ip)
        rrs += owner + struct.pack("!HHIH", 28 if v6 else 1, 1, ttl, len(rdata)) + rdata
    qtype = 28 if ips and ":" in ips[0] else 1
    return (struct.pack("!6H", ident, 0x8180 | rcode, 1, len(ips) + bool(cname), 0, 0)
            + dns_name(name) + struct.pack("!HH", qtype, 1) + rrs)


def dns_pair(q: bytes, a: bytes, ts_q: int, ts_a: int, proto: int = 17,
             client: tuple[str, int] = (CLIENT[0], 53535)) -> list[bytes]:
    """Query and answer as seen at the client's interface (an Egress rule)."""
    if proto == 6:
        q, a = struct.pack("!H", len(q)) + q, struct.pack("!H", len(a)) + a
    return [record(q, ts=ts_q, src=client, dst=DNS_SERVER, kind=L7_DNS, proto=proto,
                   point=POINT_FROM_ENDPOINT, seq=77),
            record(a, ts=ts_a, src=DNS_SERVER, dst=client, kind=L7_DNS, proto=proto,
                   answers=True, point=POINT_TO_ENDPOINT, seq=99)]


def test_dns_query_and_answer_pair_with_latency():
    t = L7Tracker()
    out = t.process(dns_pair(dns_query(0x4242, "web.test"),
                             dns_answer(0x4242, "web.test", ["10.1.0.11"]), 5000, 5400), OFFSET)
    assert [(m.response, m.dns.query, m.latency_ns) for m in out] == [  # type: ignore[union-attr]
        (False, "web.test.", 0), (True, "web.test.", 400)]
    assert out[1].dns.ips == ("10.1.0.11",) and out[1].dns.ttl == 30  # type: ignore[union-attr]
    assert t.counters["dns_queries"] == 1 and t.counters["dns_responses"] == 1
    # Another query id from the same socket does not pair with this answer.
    out = t.process([dns_pair(dns_query(1, "a.test"), b"", 0, 0)[0],
                     dns_pair(b"", dns_answer(2, "a.test", ["10.9.9.9"]), 6000, 6100)[1]], OFFSET)
    out += t.process([], OFFSET)  # an answer with no query waits one batch for it
    assert out[1].response and out[1].latency_ns == 0


def test_dns_nxdomain_teaches_no_names():
    t = L7Tracker()
    out = t.process(dns_pair(dns_query(7, "nope.test"), dns_answer(7, "nope.test", [], rcode=3),
                             100, 180), OFFSET)
    assert out[1].dns.rcode == 3 and out[1].latency_ns == 80  # type: ignore[union-attr]
    assert len(t.fqdn) == 0 and not t.fqdn.active


def test_dns_over_tcp():
    t = L7Tracker()
    out = t.process(dns_pair(dns_query(9, "web.test", 28), dns_answer(9, "web.test", ["fd00::11"]),
                             100, 150, proto=6), OFFSET)
    assert [m.response for m in out] == [False, True]
    assert out[1].dns.ips == ("fd00::11",) and out[1].latency_ns == 50  # type: ignore[union-attr]
    assert t.fqdn.names(packed_ip("fd00::11"), 150 + OFFSET) == ["web.test"]


def test_not_dns_on_port_53_is_counted():
    t = L7Tracker()
    raw = record(b"\x00" * 5, ts=1, src=CLIENT, dst=DNS_SERVER, kind=L7_DNS, proto=17,
                 point=POINT_FROM_ENDPOINT)
    assert t.process([raw], OFFSET) == [] and t.counters["dns_unparsable"] == 1


# --- names from DNS answers ---------------------------------------------------------------

def test_fqdn_names_are_valid_at_flow_time():
    c = FQDNCache()
    ip = packed_ip("10.1.0.11")
    c.learn(["alias.test.", "web.test."], ["10.1.0.11"], 30, 100 * SEC)
    assert c.names(ip, 100 * SEC) == ["web.test", "alias.test"]
    assert c.names(ip, 130 * SEC) == ["web.test", "alias.test"]   # TTL end inclusive
    assert c.names(ip, 131 * SEC) == []                             # expired at flow time
    assert c.names(ip, 99 * SEC) == []                              # before the answer
    # A later answer with a different name: both are known, each for its own time.
    c.learn(["other.test"], ["10.1.0.11"], 10, 200 * SEC)
    assert c.names(ip, 205 * SEC) == ["other.test"] and c.names(ip, 120 * SEC)[0] == "web.test"


def test_fqdn_entries_kept_one_hour_past_expiry_then_pruned():
    ip = packed_ip("10.1.0.11")
    c = FQDNCache()
    c.learn(["old.test"], ["10.1.0.11"], 10, 0)
    c.learn(["new.test"], ["10.1.0.11"], 10, 10 * SEC + 3500 * SEC)  # 58 min after expiry
    assert c.names(ip, 5 * SEC) == ["old.test"]                       # a flow read late
    c.learn(["newer.test"], ["10.1.0.11"], 10, 10 * SEC + 3700 * SEC)  # > 1 h after expiry
    assert c.names(ip, 5 * SEC) == []
    assert c.names(ip, 3515 * SEC) == ["new.test"]


def test_fqdn_cache_is_bounded():
    c = FQDNCache(max_ips=2, max_names_per_ip=3)
    for i in range(3):
        c.learn([f"n{i}.test"], [f"10.2.0.{i}"], 60, SEC)
    assert len(c) == 2 and c.evicted == 1
    assert c.names(packed_ip("10.2.0.0"), SEC) == []
    assert c.names(packed_ip("10.2.0.2"), SEC) == ["n2.test"]
    c.learn([f"m{i}.test" for i in range(5)], ["10.2.0.2"], 60, 2 * SEC)
    assert c.names(packed_ip("10.2.0.2"), 2 * SEC) == ["m4.test", "m3.test", "m2.test"]
    c.learn(["x.test"], ["not-an-ip", "10.2.0.9"], 60, 3 * SEC)  # a bad address is skipped
    assert c.names(packed_ip("10.2.0.9"), 3 * SEC) == ["x.test"]


def _l4_event(saddr: str, daddr: str, sport: int, dport: int, reply: int = 0) -> FlowEvent:
    return FlowEvent(ts=0, packets=1, bytes=60, saddr=packed_ip(saddr), daddr=packed_ip(daddr),
                     smac=b"\x02" * 6, dmac=b"\x04" * 6, sport=sport, dport=dport, ifindex=5,
                     pkt_len=60, event_type=EVENT_TRACE, reason=REASON_NEW, family=4, proto=6,
                     tcp_flags=0x02, point=POINT_FROM_ENDPOINT, is_reply=reply, icmp_type=0,
                     icmp_code=0)


def test_names_on_l3_l4_flows_through_the_flow_encoder():
    t = L7Tracker()
    t.process(dns_pair(dns_query(3, "alias.test"),
                       dns_answer(3, "alias.test", ["10.1.0.11"], cname="web.test", ttl=60),
                       1000, 1200), OFFSET)
    enc = FlowEncoder("n1", "v", {})
    enc.fqdn = t.fqdn
    src = Endpoint("client", "default", (), ("10.1.0.10",)).with_wire().wire
    dst = Endpoint("server", "default", (), ("10.1.0.11",)).with_wire().wire
    at = OFFSET + 1200 + 10 * SEC
    f = fpb.Flow.FromString(enc.encode(_l4_event("10.1.0.10", "10.1.0.11", 40000, 8081),
                                       at, 1, src, dst))
    assert list(f.destination_names) == ["web.test", "alias.test"] and not f.source_names
    back = fpb.Flow.FromString(enc.encode(_l4_event("10.1.0.11", "10.1.0.10", 8081, 40000, 1),
                                          at, 2, dst, src))
    assert list(back.source_names) == ["web.test", "alias.test"]
    late = fpb.Flow.FromString(enc.encode(_l4_event("10.1.0.10", "10.1.0.11", 40000, 8081),
                                          OFFSET + 1200 + 61 * SEC, 3, src, dst))
    assert not late.destination_names


# --- L7 flows on the wire -----------------------------------------------------------------

SRC_EP = Endpoint("client", "default", (("app", "client"),), ("10.1.0.10",), id=10,
                  identity=1001, identity_labels=("k8s:app=client",)).with_wire().wire
DST_EP = Endpoint("server", "default", (("app", "server"),), ("10.1.0.11",), id=11,
                  identity=1002, identity_labels=("k8s:app=server",)).with_wire().wire


def _wire(enc: L7Encoder, m: L7Message, seq: int = 1) -> fpb.Flow:
    src, dst = (DST_EP, SRC_EP) if m.response else (SRC_EP, DST_EP)
    return fpb.Flow.FromString(enc.encode(m, m.time_ns, f"uuid-{seq}", src, dst))


@pytest.mark.parametrize("at_server,req_dir,resp_dir", [
    (True, fpb.INGRESS, fpb.INGRESS),    # ingress rule: captured where requests enter
    (False, fpb.EGRESS, fpb.EGRESS),     # egress rule: captured where requests leave
])
def test_http_flows_on_the_wire(at_server, req_dir, resp_dir):
    t, c = L7Tracker(), Conn(at_server=at_server)
    req = get("/api/v1?token=s3cret&page=2", extra="Authorization: Bearer x\r\nX-Id: 7\r\n")
    out = t.process([c.req(req, ts=1000), c.resp(ok(), ts=1000 + 3_000_000)], OFFSET)
    enc = L7Encoder("node-1", "1.2.3+webb")
    rq, rs = _wire(enc, out[0], 1), _wire(enc, out[1], 2)
    for f in (rq, rs):
        assert f.Type == fpb.L7 and f.event_type.type == 129 and f.verdict == fpb.FORWARDED
        assert f.node_name == "node-1" and f.emitter.name and f.emitter.version == "1.2.3+webb"
        assert f.l4.TCP.destination_port in (8080, 40000)
    assert rq.uuid == "uuid-1" and rq.time.ToNanoseconds() == 1000 + OFFSET
    assert rq.l7.type == fpb.REQUEST and rq.l7.latency_ns == 0
    assert rq.traffic_direction == req_dir and rq.HasField("is_reply") and not rq.is_reply.value
    assert rq.IP.source == "10.1.0.10" and rq.IP.destination == "10.1.0.11"
    assert rq.IP.ipVersion == fpb.IPv4 and rq.l4.TCP.destination_port == 8080
    assert rq.source.pod_name == "client" and rq.destination.pod_name == "server"
    assert rq.l7.http.method == "GET" and rq.l7.http.protocol == "HTTP/1.1"
    assert rq.l7.http.url == f"http://server:8080/api/v1?token={REDACTED}&page=2"
    hdrs = {h.key: h.value for h in rq.l7.http.headers}
    assert hdrs == {"Authorization": REDACTED, "Host": "server:8080", "X-Id": "7"}
    assert rq.Summary == f"HTTP/1.1 GET http://server:8080/api/v1?token={REDACTED}&page=2"
    assert rs.l7.type == fpb.RESPONSE and rs.l7.latency_ns == 3_000_000
    assert rs.traffic_direction == resp_dir and rs.is_reply.value and rs.reply
    assert rs.IP.source == "10.1.0.11" and rs.l4.TCP.source_port == 8080
    assert rs.l7.http.code == 200 and rs.l7.http.method == "GET"
    assert rs.l7.http.url == rq.l7.http.url
    assert rs.Summary == f"HTTP/1.1 200 3ms (GET {rq.l7.http.url})"


@pytest.mark.parametrize("point,response,want", [
    (POINT_TO_ENDPOINT, False, fpb.INGRESS),     # request entering the server
    (POINT_FROM_ENDPOINT, True, fpb.INGRESS),    # its answer leaving the server
    (POINT_FROM_ENDPOINT, False, fpb.EGRESS),    # request leaving the client
    (POINT_TO_ENDPOINT, True, fpb.EGRESS),       # its answer entering the client
])
def test_traffic_direction_for_all_four_combinations(point, response, want):
    payload = ok() if response else get("/d")
    src, dst = (SERVER, CLIENT) if response else (CLIENT, SERVER)
    ev, data = decode_l7(record(payload, ts=5, src=src, dst=dst, point=point, answers=response))
    from webb_agent.pipeline.l7.http import parse_http

    msg = parse_http(data).messages[0]
    req = parse_http(get("/d")).messages[0]
    m = L7Message(ev, 5, response, 1, http=msg,
                  request=req if response else None)  # type: ignore[arg-type]
    f = _wire(L7Encoder("n", "v"), m)
    assert f.traffic_direction == want and f.is_reply.value == response


def test_dns_flows_on_the_wire_with_names():
    t = L7Tracker()
    out = t.process(dns_pair(dns_query(5, "web.test"), dns_answer(5, "web.test", ["10.1.0.11"]),
                             2000, 2500), OFFSET)
    enc = L7Encoder("n1", "v", fqdn=t.fqdn)
    q, a = _wire(enc, out[0]), _wire(enc, out[1])
    assert q.l7.type == fpb.REQUEST and q.l7.dns.query == "web.test."
    assert list(q.l7.dns.qtypes) == ["A"]
    assert q.traffic_direction == fpb.EGRESS and not q.is_reply.value
    assert q.l4.UDP.destination_port == 53 and q.Summary == "DNS Query web.test. A"
    assert a.l7.type == fpb.RESPONSE and a.l7.latency_ns == 500 and a.is_reply.value
    assert list(a.l7.dns.ips) == ["10.1.0.11"] and a.l7.dns.ttl == 30
    assert list(a.l7.dns.rrtypes) == ["A"] and a.traffic_direction == fpb.EGRESS
    assert a.Summary == 'DNS Answer "10.1.0.11" TTL: 30 (Query web.test. A)'
    # The answer itself taught the name; an HTTP flow to that address carries it.
    c = Conn()
    hm = t.process([c.req(get("/n"), ts=3000)], OFFSET)
    assert list(_wire(enc, hm[0]).destination_names) == ["web.test"]


async def test_l7_records_through_ingest_ring_and_parser():
    """The agent's own path: a drain's L7 records -> Ingest -> ring -> FlowWireCache wire
    bytes (the drain itself: tests/unit/test_ringbuf.py)."""
    registry = EndpointRegistry("n1", IdentityAllocator(None))
    await registry.upsert(parse_endpoint({"name": "client", "ips": ["10.1.0.10"],
                                          "labels": {"app": "client"}}))
    await registry.upsert(parse_endpoint({"name": "server", "ips": ["10.1.0.11"],
                                          "labels": {"app": "server"}}))
    ring: Ring = Ring(63)
    ingest = Ingest(ring, registry, set())
    ingest.l7 = L7Tracker()
    c = Conn()
    ingest.on_l7_batch([c.resp(ok(), ts=2000), c.req(get("/ring"), ts=1000)])
    assert ingest.process() == 2
    wire_cache = FlowWireCache("n1", {}, "v")
    recs = [ring.get(i) for i in range(ring.oldest_seq, ring.next_seq)]
    assert all(isinstance(r, L7Record) for r in recs)
    flows = [wire_cache.flow(r) for r in recs]  # type: ignore[arg-type]
    assert [f.l7.type for f in flows] == [fpb.REQUEST, fpb.RESPONSE]
    assert flows[0].source.pod_name == "client" and flows[0].destination.pod_name == "server"
    assert flows[1].source.pod_name == "server" and "k8s:app=server" in flows[1].source.labels
    assert flows[1].l7.http.url == "http://server:8080/ring" and flows[1].l7.latency_ns == 1000
    assert wire_cache.flow(recs[0]).uuid == flows[0].uuid  # encoded once, read again the same


# --- visibility rules ---------------------------------------------------------------------

@pytest.mark.parametrize("text,words", [
    ("<Inbound/80/TCP/HTTP>", "direction must be Ingress or Egress"),
    ("<Ingress/0/TCP/HTTP>", "port must be 1-65535"),
    ("<Ingress/65536/TCP/HTTP>", "port must be 1-65535"),
    ("<Ingress/http/TCP/HTTP>", "port must be 1-65535"),
    ("<Ingress/80/SCTP/HTTP>", "L4 protocol must be TCP, UDP or ANY"),
    ("<Ingress/80/TCP/Kafka>", "'Kafka' is not supported"),
    ("<Ingress/80/TCP>", "want <Direction/Port/L4Protocol/L7Protocol>"),
    ("junk <Ingress/80/TCP/HTTP>", "'junk' is not inside <...>"),
    ("<Ingress/80/TCP/HTTP>, <Egress/53/UDP/DNS> trailing", "'trailing'"),
])
def test_visibility_errors_say_what_is_wrong(text, words):
    with pytest.raises(VisibilityError) as e:
        parse_visibility(text)
    assert words in str(e.value)


def test_visibility_rules_and_selection_keys():
    assert parse_visibility("") == () and parse_visibility("  ") == ()
    rules = parse_visibility("<Ingress/9080/TCP/HTTP>, <Egress/53/ANY/DNS>")
    assert [str(r) for r in rules] == ["<Ingress/9080/TCP/HTTP>", "<Egress/53/ANY/DNS>"]
    assert [str(r) for r in parse_visibility(DEFAULT_RULES)] == [
        "<Egress/53/UDP/DNS>", "<Egress/53/TCP/DNS>"]
    keys = selection_keys(7, rules)
    assert keys == {
        # requests enter the endpoint (TC egress of its host-side veth) to the port...
        (7, 9080, 6, POINT_TO_ENDPOINT): L7_HTTP,
        # ...and its answers leave it from the port.
        (7, 9080, 6, POINT_FROM_ENDPOINT | L7_MODE_SPORT): L7_HTTP,
        (7, 53, 6, POINT_FROM_ENDPOINT): L7_DNS,
        (7, 53, 17, POINT_FROM_ENDPOINT): L7_DNS,
        (7, 53, 6, POINT_TO_ENDPOINT | L7_MODE_SPORT): L7_DNS,
        (7, 53, 17, POINT_TO_ENDPOINT | L7_MODE_SPORT): L7_DNS,
    }
    # The first rule for a key wins (agent rules before the annotation's).
    assert selection_keys(7, parse_visibility("<Ingress/53/UDP/DNS>,<Ingress/53/UDP/HTTP>")) == {
        (7, 53, 17, POINT_TO_ENDPOINT): L7_DNS, (7, 53, 17, POINT_FROM_ENDPOINT | 2): L7_DNS}


def test_malformed_visibility_annotation_is_an_endpoint_error():
    base = {"name": "web", "namespace": "shop", "ips": ["10.1.0.11"]}
    with pytest.raises(EndpointError) as e:
        parse_endpoint({**base, "annotations": {ANNOTATION: "<Ingress/80/TCP/HTTP"}})
    msg = str(e.value)
    assert msg.startswith("endpoint web: annotation policy.cilium.io/proxy-visibility:")
    assert "not inside <...>" in msg
    with pytest.raises(EndpointError, match="direction must be Ingress or Egress"):
        parse_endpoint({**base, "annotations": {ANNOTATION: "<In/80/TCP/HTTP>"}})
    with pytest.raises(EndpointError, match="annotations must be a mapping"):
        parse_endpoint({**base, "annotations": ["x"]})
    ep = parse_endpoint({**base, "annotations": {ANNOTATION: "<Ingress/80/TCP/HTTP>"}})
    assert dict(ep.annotations) == {ANNOTATION: "<Ingress/80/TCP/HTTP>"}


# --- hostile input ------------------------------------------------------------------------

def test_random_records_never_break_the_tracker():
    """Random payloads, headers, kinds and sequence numbers, plus mutated real
    messages: no exception escapes, none is swallowed either (counters["error"]),
    and every message that comes out encodes into a valid Flow."""
    rng = random.Random(1234)
    t = L7Tracker(FQDNCache(max_ips=64))
    enc = L7Encoder("n", "v", fqdn=t.fqdn)
    seeds = [get("/a"), ok(), get("/b") + get("/c"), ok(b"x" * 50) + ok(),
             dns_query(1, "a.test"), dns_answer(1, "a.test", ["10.0.0.1"], cname="b.test"),
             b"HTTP/1.1 100 Continue\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]
    emitted = 0
    for i in range(1500):
        batch = []
        for _ in range(rng.randint(1, 6)):
            roll = rng.random()
            if roll < 0.1:   # a record shorter than its header, or garbage of any length
                batch.append(rng.randbytes(rng.randint(0, 90)))
                continue
            if roll < 0.5:
                payload = rng.randbytes(rng.randint(0, 300))
            else:            # a real message, cut, spliced or with bytes flipped
                p = bytearray(rng.choice(seeds))
                for _ in range(rng.randint(0, 4)):
                    if p:
                        p[rng.randrange(len(p))] = rng.randrange(256)
                payload = bytes(p[:rng.randint(0, len(p))]) + rng.choice(seeds)[:rng.randint(0, 20)]
            raw = record(payload, ts=rng.randint(0, 10**12),
                         src=(CLIENT[0], rng.choice([40000, 40001])),
                         dst=rng.choice([SERVER, DNS_SERVER]), seq=rng.getrandbits(32),
                         kind=rng.choice([L7_HTTP, L7_DNS, 0, 7]), answers=rng.random() < 0.5,
                         proto=rng.choice([6, 17]), prefix=rng.randint(0, 400),
                         point=rng.choice([POINT_TO_ENDPOINT, POINT_FROM_ENDPOINT]))
            if rng.random() < 0.1:   # header fields that lie about the packet bytes
                raw = bytearray(raw)
                raw[rng.randrange(40, 72)] = rng.randrange(256)
                raw = bytes(raw)
            batch.append(raw)
        for m in t.process(batch, OFFSET):
            emitted += 1
            f = fpb.Flow.FromString(enc.encode(m, m.time_ns, "u", SRC_EP, DST_EP))
            assert f.Type == fpb.L7
    assert t.counters["error"] == 0, t.counters
    assert t.counters["bad_record"] > 0 and emitted > 0
    assert len(t._next_seq) <= 65536  # bounded state


# --- counters a user can read -------------------------------------------------------------

class _KernelStats:
    """Stands in for the datapath's stats map (the e2e test reads the real one)."""

    def stats(self) -> dict[str, int]:
        return {"events": 120, "parse_errors": 0, "policy_drops": 2, "l7_events": 9}


async def test_agent_counters_over_the_admin_api_and_as_webb_status_prints_them():
    import grpc

    from webb.api.admin import admin_pb2 as apb
    from webb.api.admin import admin_pb2_grpc
    from webb_agent.api.admin import AdminService
    from webb_agent.pipeline.counters import agent_counters
    from webb_cli.agent_counters import format_counters

    registry = EndpointRegistry("n1", IdentityAllocator(None))
    ingest = Ingest(Ring(15), registry, set())
    ingest.l7 = L7Tracker()
    ingest.lost_events = 3
    c, big = Conn(prefix=128), get("/x", extra="X-Big: " + "y" * 300 + "\r\n")
    ingest.l7.process([c.req(bytes.fromhex("160301004001") + b"\0" * 60, ts=1),
                       Conn(client=("10.1.0.10", 3)).req(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", ts=2),
                       Conn(client=("10.1.0.10", 1)).req(get("/a"), ts=3),
                       Conn(client=("10.1.0.10", 2), prefix=128).req(big, ts=4)], OFFSET)
    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(
        registry, lambda ep: (False, ""), None,
        status=lambda: ("n1", "9.9+webb", agent_counters(_KernelStats(), ingest))), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            st = await admin_pb2_grpc.AdminStub(ch).GetStatus(apb.GetStatusRequest(), timeout=5)
    finally:
        await server.stop(None)
    assert (st.node_name, st.version) == ("n1", "9.9+webb")
    cn = dict(st.counters)
    assert cn["datapath.events"] == 120 and cn["datapath.l7_events"] == 9
    assert cn["datapath.lost_events"] == 3 and cn["l7.http_requests"] == 1
    assert cn["l7.http_unparsable_tls"] == 1 and cn["l7.http_unparsable_http2"] == 1
    assert cn["l7.http_truncated"] == 1 and cn["l7.http_pending"] == 2
    text = format_counters(st)
    assert text.startswith("Datapath Events: 120 (L7: 9, lost: 3, parse errors: 0, "
                           "policy drops: 2)\nL7:\n  HTTP: 1 requests, 0 responses, "
                           "2 awaiting an answer\n")
    assert "1 heads cut by the prefix" in text and "\n  Not HTTP/1.x: tls 1, http2 1\n" in text
    assert "Other:" not in text  # every counter the agent has is on a line of its own
    assert "L7.HTTP_UNPARSABLE_TLS: 1\n" in format_counters(st, dict_style=True)


async def test_get_status_without_a_source_is_unimplemented():
    import grpc

    from webb.api.admin import admin_pb2 as apb
    from webb.api.admin import admin_pb2_grpc
    from webb_agent.api.admin import AdminService

    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminService(EndpointRegistry("n1", IdentityAllocator(None)), lambda ep: (False, "")),
        server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await admin_pb2_grpc.AdminStub(ch).GetStatus(apb.GetStatusRequest(), timeout=5)
    finally:
        await server.stop(None)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_message_captured_at_both_ends_gives_one_flow():
    """Client (egress rule) and server (ingress rule) on one node: every message passes
    two selected interfaces; the sequence check keeps the first capture of each."""
    t = L7Tracker()
    req, resp = get("/both"), ok()
    raws = [record(req, ts=100, seq=10, point=POINT_FROM_ENDPOINT, ifindex=4),   # client veth
            record(req, ts=101, seq=10, point=POINT_TO_ENDPOINT, ifindex=5),     # server veth
            record(resp, ts=150, src=SERVER, dst=CLIENT, seq=90, answers=True,
                   point=POINT_FROM_ENDPOINT, ifindex=5),
            record(resp, ts=151, src=SERVER, dst=CLIENT, seq=90, answers=True,
                   point=POINT_TO_ENDPOINT, ifindex=4)]
    out = t.process(raws, OFFSET)
    assert http_msgs(out) == [("req", "/both", 0), ("resp 200", "/both", 50)]
    assert [m.ev.ifindex for m in out] == [4, 5] and t.counters["http_skipped_segments"] == 2


async def test_pathological_http_path_over_a_full_ring_through_the_agents_getflows(tmp_path):
    """A backtracking-killer pattern from a client, `(a+)+$`, against a full ring of HTTP
    flows with long paths, through the agent's own GetFlows over gRPC: RE2 answers in
    one linear pass per flow (Python's re would backtrack 2^300 times on each). A
    pattern Go rejects is INVALID_ARGUMENT with RE2's reason."""
    import grpc

    from webb.api.admin import admin_pb2_grpc
    from webb.api.observer import observer_pb2 as opb
    from webb.api.observer import observer_pb2_grpc
    from webb.api.peer import peer_pb2_grpc
    from webb_agent.api.agent_events import AgentEventLog
    from webb_agent.api.observer import NodeState, ObserverService
    from webb_agent.api.server import start_server

    registry = EndpointRegistry("n1", IdentityAllocator(None))
    ring: Ring = Ring(4095)
    ingest = Ingest(ring, registry, set())
    ingest.l7 = L7Tracker()
    c = Conn()
    path = "/" + "a" * 300 + "!"
    for i in range(2100):  # 4200 flows: the ring is full and has wrapped
        ingest.on_l7_batch([c.req(get(path), ts=(2 * i + 1) * 1000),
                            c.resp(ok(), ts=(2 * i + 2) * 1000)])
    ingest.process()
    assert len(ring) == ring.capacity == 4095
    wire_cache = FlowWireCache("n1", {}, "v")
    node = NodeState("n1", "v", "", ring, lambda: ingest.seen_events)
    sock = tmp_path / "agent.sock"
    server, _ = await start_server(ObserverService(node, wire_cache, AgentEventLog()),
                                   peer_pb2_grpc.PeerServicer(), admin_pb2_grpc.AdminServicer(),
                                   "", str(sock))
    try:
        async with grpc.aio.insecure_channel(f"unix://{sock}") as ch:
            observer = observer_pb2_grpc.ObserverStub(ch)

            async def count(pattern: str) -> int:
                req = opb.GetFlowsRequest(number=4095,
                                          whitelist=[fpb.FlowFilter(http_path=[pattern])])
                return len([r async for r in observer.GetFlows(req, timeout=60)
                            if r.HasField("flow")])

            assert await count("(a+)+$") == 0
            assert await count("^/(a+)+!$") == 4095
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await count(r"(a)\1")
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "invalid http_path filter" in e.value.details()
            assert r"invalid escape sequence: \1" in e.value.details()
    finally:
        await server.stop(None)

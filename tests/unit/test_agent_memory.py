"""What the agent keeps in memory stays bounded (issue 16, item 9): the ring keeps a
flow's body, not copies of its endpoints; start-up data (BTF) is not kept; every
table that grows with traffic (DNS names, L7 pairing, TCP stream marks, namespaces,
interfaces, small parse caches, the L7 encoder's tables) stops at its bound and counts
what it evicted.

Each bound is fed its size plus 1,000 distinct keys."""
from __future__ import annotations

import gc
import os
import socket
import struct

import pytest

from webb.api.flow import flow_pb2 as fpb
from webb_agent.pipeline.counters import bounded_state_counters
from webb_agent.datapath.event import (EVENT_TRACE, L7_HTTP, POINT_FROM_ENDPOINT,
                                       POINT_TO_ENDPOINT, FlowEvent, L7Event, pack_l7)
from webb_agent.pipeline.flow_wire import timestamp
from webb_agent.pipeline.threefour import MAX_INTERFACES, FlowEncoder
from webb_agent.stores.endpoints import Endpoint, packed_ip
from webb_agent.pipeline.ingest import Ingest
from webb_agent.pipeline.l7 import tracker as tracker_mod
from webb_agent.pipeline.l7.fqdn import FQDNCache
from webb_agent.pipeline.l7.http import canonical_header_key
from webb_agent.pipeline.l7.pairing import DNSPairer, HTTPPairer
from webb_agent.pipeline.l7.tracker import L7Tracker
from webb_agent.api.observer import MAX_NAMESPACES, NodeState
from webb_agent.pipeline.wire_cache import FlowWireCache
from webb_agent.pipeline.record import FlowRecord, L7Record
from webb_agent.stores.ring import Ring

SEC = 1_000_000_000
LABELS = tuple(f"k8s:io.kubernetes.pod.label-{i}=value-{i}" for i in range(6))


def endpoint(name: str, ip: str, namespace: str = "bookinfo") -> Endpoint:
    return Endpoint(name=name, namespace=namespace, labels=(("app", name),), ips=(ip,),
                    identity=1000 + len(name), identity_labels=LABELS, id=7).with_wire()


def trace(saddr: str, daddr: str, sport: int, dport: int, ifindex: int = 7) -> FlowEvent:
    return FlowEvent(ts=1000, packets=1, bytes=60, saddr=packed_ip(saddr), daddr=packed_ip(daddr),
                     smac=b"\x02" * 6, dmac=b"\x04" * 6, sport=sport, dport=dport,
                     ifindex=ifindex, pkt_len=60, event_type=EVENT_TRACE, reason=0, family=4,
                     proto=6, tcp_flags=0x02, point=POINT_FROM_ENDPOINT, is_reply=0,
                     icmp_type=0, icmp_code=0)


def http_record(payload: bytes, ts: int, sport: int, answers: bool = False) -> bytes:
    cli, srv = ("10.1.0.10", sport), ("10.1.0.11", 8080)
    src, dst = (srv, cli) if answers else (cli, srv)
    l4 = struct.pack("!HHIIBBHHH", src[1], dst[1], 1000, 0, 5 << 4, 0x18, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4) + len(payload), 0, 0, 64, 6, 0,
                     socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    hdr = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + l4
    ev = L7Event(ts=ts, saddr=packed_ip(src[0]), daddr=packed_ip(dst[0]), sport=src[1],
                 dport=dst[1], ifindex=5, seq=1000, payload_len=len(payload),
                 payload_off=len(hdr), cap_len=len(hdr) + len(payload), family=4, proto=6,
                 point=POINT_FROM_ENDPOINT if answers else POINT_TO_ENDPOINT,
                 l7=L7_HTTP | (0x10 if answers else 0), is_reply=int(answers), tcp_flags=0x18)
    return pack_l7(ev, hdr + payload)


# -- the ring's per-flow storage -------------------------------------------------------

def test_ring_records_keep_the_flow_body_not_copies_of_the_endpoints():
    """A read flow is whole (uuid, source, destination), but what its record keeps is
    the body: the endpoints' messages (two thirds of a flow here) are added per read."""
    p = FlowWireCache("n1", {7: "lxc7"}, "test")
    c, s = endpoint("productpage", "10.1.0.10"), endpoint("details", "10.1.0.11")
    rec = FlowRecord(trace("10.1.0.10", "10.1.0.11", 40000, 9080), 1_700_000_000 * SEC, c, s)
    rec.seq = 42
    whole = p.cache_wire(rec)
    f = fpb.Flow.FromString(whole)
    assert f.uuid == p.flow_uuid(42) and f.source.pod_name == "productpage"
    assert f.destination.pod_name == "details" and list(f.source.labels) == list(LABELS)
    assert f.l4.TCP.destination_port == 9080 and f.interface.name == "lxc7"
    assert rec.raw is None and rec.wire is not None
    kept = rec.wire
    assert c.wire not in kept and s.wire not in kept and p.flow_uuid(42).encode() not in kept
    assert len(kept) + len(c.wire) + len(s.wire) < len(whole)
    assert p.cache_wire(rec) == whole  # every read gives the same bytes
    # L7 records the same way.
    t = L7Tracker()
    msgs = t.process([http_record(b"GET /p HTTP/1.1\r\nHost: details\r\n\r\n", 5000, 40001)],
                     1_700_000_000 * SEC)
    assert len(msgs) == 1
    l7 = L7Record(msgs[0], msgs[0].time_ns, c, s)
    l7.seq = 43
    lf = fpb.Flow.FromString(p.cache_wire(l7))
    assert lf.l7.http.url == "http://details/p" and lf.uuid == p.flow_uuid(43)
    assert lf.source.pod_name == "productpage" and lf.destination.pod_name == "details"
    assert l7.msg is None and c.wire not in l7.wire and s.wire not in l7.wire


@pytest.mark.skipif(not os.path.exists("/sys/kernel/btf/vmlinux"), reason="no kernel BTF")
def test_kernel_btf_is_not_kept_after_use():
    """The kernel's BTF (~11 MiB as Python objects) is read at start-up only."""
    from webb_agent.datapath.btf import BTF, vmlinux
    from webb_agent.datapath.kernel_drops import drop_reasons

    assert drop_reasons(vmlinux())  # what the agent reads from it
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, BTF)]


# -- tables that grow with traffic -----------------------------------------------------

def test_dns_names_are_bounded_per_address_and_in_total():
    c = FQDNCache()
    n = c.max_addresses + 1000
    for i in range(n):
        c.learn([f"svc-{i}.example.com"], [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"],
                30, i)
    assert len(c) == c.max_addresses and c.evicted == 1000
    one = FQDNCache()
    for i in range(one.max_entries_per_address + 1000):
        one.learn([f"alias-{i}.example.com"], ["10.9.9.9"], 30, i)
    assert len(one.names(packed_ip("10.9.9.9"), one.max_entries_per_address + 999)) <= one.max_entries_per_address


def test_l7_pairing_state_is_bounded_with_evictions_counted():
    h: HTTPPairer[int] = HTTPPairer()
    for i in range(h.max_conns + 1000):
        h.request(("c", i), i, i)
    assert len(h._conns) == h.max_conns and h.evicted == 1000 and h.pending() == h.max_conns
    for i in range(h.max_pending + 1000):  # one connection, never answered
        h.request(("one",), i, i)
    assert len(h._conns[("one",)]) == h.max_pending
    d: DNSPairer[int] = DNSPairer()
    for i in range(d.max_pending + 1000):
        d.query(("c", i, "s", i & 0xFFFF), i, i)
    assert len(d._pending) == d.max_pending and d.evicted == 1000


def test_tcp_stream_marks_are_bounded_with_evictions_counted(monkeypatch):
    """MAX_STREAMS marks at most, whatever the idle limit (a smaller bound, so that the
    test feeds it through the tracker's own path in little time)."""
    monkeypatch.setattr(tracker_mod, "MAX_STREAMS", 512)
    t = L7Tracker()
    recs = [http_record(b"GET /x HTTP/1.1\r\nHost: s\r\n\r\n", 1000 + i, 1024 + i)
            for i in range(512 + 1000)]  # distinct client ports, within one second
    for i in range(0, len(recs), 256):
        t.process(recs[i:i + 256], 0)
    assert t.counters["http_requests"] == 1512
    assert t.streams() == 512 and t.counters["tcp_stream_marks_evicted"] == 1000


class _Rec:
    __slots__ = ("src", "dst", "time_ns")

    def __init__(self, src: Endpoint, dst: Endpoint, time_ns: int) -> None:
        self.src, self.dst, self.time_ns = src, dst, time_ns


def test_namespaces_seen_are_bounded_with_evictions_counted():
    node = NodeState("n1", "v", "", Ring(7), lambda: 0)
    base = 1_700_000_000 * SEC
    world = endpoint("w", "10.9.0.1", namespace="")
    for i in range(MAX_NAMESPACES + 1000):  # all within the last hour
        ep = endpoint("p", "10.9.0.2", namespace=f"ns-{i}")
        node.note_batch([_Rec(ep, world, base + i)])
    assert len(node.namespaces) == MAX_NAMESPACES and node.namespaces_evicted == 1000
    assert ("default", f"ns-{MAX_NAMESPACES + 999}") in node.namespaces  # the newest stay
    assert ("default", "ns-0") not in node.namespaces
    enc = FlowEncoder("n1", "v", {})
    counters = bounded_state_counters(node, enc)
    assert counters["agent.namespaces"] == MAX_NAMESPACES
    assert counters["agent.namespaces_evicted"] == 1000


def test_interface_fields_are_bounded_with_evictions_counted():
    enc = FlowEncoder("n1", "v", {})
    for i in range(1, MAX_INTERFACES + 1001):
        enc.encode(trace("10.1.0.1", "10.1.0.2", 1, 2, ifindex=i), SEC, i, b"", b"")
    assert len(enc._iface) == MAX_INTERFACES and enc.interfaces_evicted == 1000
    f = fpb.Flow.FromString(enc.encode(trace("10.1.0.1", "10.1.0.2", 1, 2, ifindex=3), SEC, 1,
                                       b"", b""))
    assert f.interface.index == 3  # an evicted one is encoded again


def test_small_parse_caches_are_bounded():
    from webb_agent.pipeline.flow_wire import _SECONDS
    from webb_agent.pipeline.l7 import http
    from webb_agent.pipeline.l7.redact import _redact_url_cached

    for i in range(http._CANONICAL_MAX + 1000):
        canonical_header_key(f"x-header-{i}")
    assert len(http._CANONICAL) <= http._CANONICAL_MAX
    for i in range(4096 + 1000):
        timestamp((1_700_000_000 + i) * SEC + 1)
    assert len(_SECONDS) <= 4096
    assert _redact_url_cached.cache_info().maxsize == 4096
    # header lines decoded once per distinct line; default hosts spelled out once
    for i in range(http._HEADER_LINES_MAX + 1000):
        assert http.parse_http(b"GET / HTTP/1.1\r\nX-Id: %d\r\n\r\n" % i).messages
    assert len(http._HEADER_LINES) <= http._HEADER_LINES_MAX
    for i in range(tracker_mod._HOSTS_MAX + 1000):
        tracker_mod._default_host(4, packed_ip(f"10.{i >> 8 & 255}.{i & 255}.1"), 80)
    assert len(tracker_mod._HOSTS) <= tracker_mod._HOSTS_MAX


def test_ingest_holds_no_per_event_objects_beyond_the_ring():
    """A ring of N: after 3N events the ring holds N records and ingest holds none."""
    ring: Ring = Ring(255)
    from webb_agent.stores.endpoints import EndpointRegistry
    from webb_agent.stores.identities import IdentityAllocator
    from webb_agent.datapath.event import pack

    ing = Ingest(ring, EndpointRegistry("n1", IdentityAllocator()), set())
    raws = [pack(trace("10.1.0.1", "10.1.0.2", 1024 + i, 80)._replace(ts=i + 1))
            for i in range(3 * 255)]
    ing.process(raws)
    assert len(ring) == 255 and ing.seen_events == 765
    assert not ing._raw and not ing._held and not ing._l7_raw
    mine = {id(r) for r in raws}
    gc.collect()
    alive = [o for o in gc.get_objects() if type(o) is FlowRecord and id(o.raw) in mine]
    assert len(alive) == 255 and {id(o) for o in alive} == {id(ring.get(s)) for s in
                                                           range(ring.oldest_seq, ring.next_seq)}


def test_l7_encoder_tables_are_bounded_in_bytes_too():
    """The L7 encoder's tables of encoded values (pipeline/l7/encode.py) are bounded in
    count and, as the values come from clients (a proxied head may be 60 KiB: long URLs,
    long header names), in bytes: a value too long to repeat is encoded, not kept (nor
    is a long URL's redaction, pipeline/l7/redact.py)."""
    from webb_agent.l7proxy.flows import l7_message
    from webb_agent.l7proxy.http1 import parse_request
    from webb_agent.l7proxy.proxy import ProxyFlow
    from webb_agent.pipeline.l7 import encode, redact
    from webb_agent.pipeline.l7.encode import L7Encoder

    enc = L7Encoder("node", "v")
    redact._redact_url_cached.cache_clear()

    def held() -> int:
        return (sum(len(a) + len(b) + len(c) + len(d) for (a, b), (c, d) in enc._requests.items())
                + sum(len(a) + len(b) + len(c) for (a, b), c in enc._headers.items()))

    for i in range(encode._CACHED + 1000):
        long = f"{i:08d}" * 1000  # 8 KB
        head = parse_request(f"GET /{long} HTTP/1.1\r\nHost: s\r\nX-{long}: v\r\n\r\n".encode())
        f = ProxyFlow(1, 4, ("10.0.0.1", 40000), ("10.0.0.2", 80), False, True, (), head)
        m = l7_message(f, 0)
        assert long in fpb.Flow.FromString(enc.encode(m, SEC, "u", b"", b"")).l7.http.url
    assert len(enc._requests) <= encode._CACHED and len(enc._headers) <= encode._CACHED
    assert held() < 4 << 20, f"{held() >> 20} MiB of encoded values kept"
    assert redact._redact_url_cached.cache_info().currsize == 0  # nor redacted long URLs

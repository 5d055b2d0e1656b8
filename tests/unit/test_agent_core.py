"""Agent internals without the kernel: ring, GetFlows selection, identities,
endpoint validation and the L3/L4 parser, on hand-made datapath records."""
from __future__ import annotations

import asyncio
import socket
from dataclasses import replace

import pytest

from webb.api.flow import flow_pb2 as fpb
from webb_agent.datapath.event import (EVENT_SIZE, EVENT_TRACE, POINT_FROM_ENDPOINT,
                                       POINT_TO_ENDPOINT, REASON_FLAGS, REASON_NEW, FlowEvent,
                                       decode, pack)
from webb_agent.stores.endpoints import (Endpoint, EndpointError, EndpointRegistry, packed_ip,
                                         parse_endpoint)
from webb_agent.pipeline.selection import Lost, ReadRequest, RequestError, read_flows, validate
from webb_agent.stores.identities import IdentityAllocator
from webb_agent.pipeline.ingest import Ingest
from webb_agent.pipeline.wire_cache import FlowWireCache, tcp_flags_summary
from webb_agent.pipeline.record import WORLD, FlowRecord, LostRecord
from webb_agent.stores.ring import Ring, valid_capacity


def ev(saddr="10.0.0.1", daddr="10.0.0.2", sport=40000, dport=80, proto=socket.IPPROTO_TCP,
       flags=0x02, point=POINT_FROM_ENDPOINT, reply=0, reason=REASON_NEW, ts=1000,
       icmp_type=0) -> FlowEvent:
    fam = 6 if ":" in saddr else 4
    return FlowEvent(ts=ts, packets=1, bytes=60, saddr=packed_ip(saddr), daddr=packed_ip(daddr),
                     smac=b"\x02\x00\x00\x00\x00\x01", dmac=b"\x02\x00\x00\x00\x00\x02",
                     sport=sport, dport=dport, ifindex=7, pkt_len=60, event_type=EVENT_TRACE,
                     reason=reason, family=fam, proto=proto, tcp_flags=flags, point=point,
                     is_reply=reply, icmp_type=icmp_type, icmp_code=0)


def test_event_layout_round_trips():
    e = ev()
    raw = pack(e)
    assert len(raw) == EVENT_SIZE == 104
    assert decode(raw) == e


def test_ring_capacity_rule_and_overwrite():
    assert valid_capacity(65535) and valid_capacity(1) and not valid_capacity(65536)
    with pytest.raises(ValueError):
        Ring(100)
    r: Ring[int] = Ring(3)
    r.write_many([1, 2, 3, 4, 5])
    assert len(r) == 3 and r.oldest_seq == 2 and r.next_seq == 5
    assert r.get(1) is None and r.get(2) == 3 and r.get(4) == 5 and r.get(5) is None


async def test_ring_wait_wakes_on_write():
    r: Ring[int] = Ring(7)
    waiter = asyncio.create_task(r.wait_beyond(0, timeout=2))
    await asyncio.sleep(0.01)
    r.write_many([1])
    assert await waiter is True
    assert await r.wait_beyond(5, timeout=0.05) is False


def test_tcp_summary_order_matches_hubble():
    assert tcp_flags_summary(0x02) == "SYN"
    assert tcp_flags_summary(0x12) == "SYN, ACK"
    assert tcp_flags_summary(0x18) == "ACK, PSH"
    assert tcp_flags_summary(0x11) == "ACK, FIN"
    assert tcp_flags_summary(0x14) == "ACK, RST"


def make_wire_cache() -> FlowWireCache:
    return FlowWireCache("node-a", {7: "lxc1"}, "test")


def run_sync(coro):
    """Runs a coroutine that never suspends (no listeners), also inside a running loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("coroutine suspended")


def client_server():
    ids = IdentityAllocator()
    reg = EndpointRegistry("node-a", ids)
    c = parse_endpoint({"name": "c", "namespace": "ns", "labels": {"app": "c"},
                        "ips": ["10.0.0.1"], "interface": "lxc1"})
    s = parse_endpoint({"name": "s", "namespace": "ns", "labels": {"app": "s"},
                        "ips": ["10.0.0.2"], "interface": "lxc2"})
    run_sync(reg.upsert(c))
    run_sync(reg.upsert(s))
    return reg


def test_parser_directions_and_fields():
    reg = client_server()
    p = make_wire_cache()
    c, s = reg.by_ip("10.0.0.1"), reg.by_ip("10.0.0.2")
    syn = p.flow(FlowRecord(ev(), 1_700_000_000_123_456_789, c, s))
    assert syn.Summary == "TCP Flags: SYN" and syn.verdict == fpb.FORWARDED
    assert syn.traffic_direction == fpb.EGRESS and syn.trace_observation_point == fpb.FROM_ENDPOINT
    assert syn.event_type.type == 4 and syn.event_type.sub_type == 5
    assert syn.time.seconds == 1_700_000_000 and syn.time.nanos == 123_456_789
    assert syn.source.pod_name == "c" and syn.destination.pod_name == "s"
    assert syn.interface.name == "lxc1" and syn.trace_reason == fpb.NEW
    # The reply arriving back at the client's interface: to-endpoint, still EGRESS.
    synack = p.flow(FlowRecord(ev(saddr="10.0.0.2", daddr="10.0.0.1", sport=80, dport=40000,
                                   flags=0x12, point=POINT_TO_ENDPOINT, reply=1), 1, s, c))
    assert synack.is_reply.value and synack.reply
    assert synack.traffic_direction == fpb.EGRESS and synack.trace_observation_point == fpb.TO_ENDPOINT
    assert synack.event_type.sub_type == 0 and synack.trace_reason == fpb.REPLY
    est = p.flow(FlowRecord(ev(flags=0x10, reason=REASON_FLAGS), 2, c, s))
    assert est.trace_reason == fpb.ESTABLISHED
    icmp6 = p.flow(FlowRecord(ev(saddr="fd00::1", daddr="fd00::2", proto=socket.IPPROTO_ICMPV6,
                                  sport=0, dport=0, icmp_type=128, flags=0), 3, WORLD, WORLD))
    assert icmp6.Summary == "ICMPv6 EchoRequest" and icmp6.IP.ipVersion == fpb.IPv6
    assert icmp6.IP.source == "fd00::1" and icmp6.source.labels == ["reserved:world"]


def test_uuids_are_stable_and_distinct():
    p = make_wire_cache()
    assert p.flow_uuid(5) == p.flow_uuid(5) != p.flow_uuid(6)
    assert make_wire_cache().flow_uuid(5) != p.flow_uuid(5)  # per-process salt


def test_identity_allocation_is_shared_through_file(tmp_path):
    path = str(tmp_path / "ids.json")
    a, b = IdentityAllocator(path), IdentityAllocator(path)
    x = a.allocate(["k8s:app=x"])
    y = b.allocate(["k8s:app=y"])
    assert x.id == 256 and y.id == 257
    assert b.allocate(["k8s:app=x"]).id == 256  # learnt from the file, not re-numbered
    assert a.get(257).labels == ("k8s:app=y",)
    assert a.get(1).labels == ("reserved:host",) and a.get(2).labels == ("reserved:world",)


@pytest.mark.parametrize("raw,msg", [
    ({}, "name"),
    ({"name": "x", "ips": ["10.0.0.300"]}, "10.0.0.300"),
    ({"name": "x", "labels": ["a"]}, "labels"),
    ({"name": "x", "id": "one"}, "id"),
    ("just a string", "mapping"),
])
def test_endpoint_validation_names_the_field(raw, msg):
    with pytest.raises(EndpointError, match=msg):
        parse_endpoint(raw)


def test_registry_identity_labels_and_local():
    reg = client_server()
    c = reg.by_ip("10.0.0.1")
    assert c.identity >= 256 and c.id > 0
    assert "k8s:io.kubernetes.pod.namespace=ns" in c.identity_labels
    assert reg.is_local(c)
    remote = parse_endpoint({"name": "r", "namespace": "ns", "ips": ["10.1.0.1"],
                             "interface": "x", "node": "node-b"})
    stored = run_sync(reg.upsert(remote))
    assert not reg.is_local(stored) and stored.id == 0
    assert reg.by_packed[packed_ip("10.1.0.1")] is stored


async def test_endpoint_ids_are_this_nodes_unique_and_stable():
    """As in Cilium: a node's endpoints have IDs 1..4095, unique on the node and kept
    for the endpoint's life; another node's pods have none (0 on flows) and are not
    this node's endpoints."""
    reg = EndpointRegistry("n1", IdentityAllocator())

    def ep(name: str, node: str = "n1", iface: str | None = None, **kw):
        return parse_endpoint({"name": name, "namespace": "ns", "labels": {"app": name},
                               "ips": [f"10.0.{len(reg.list())}.1"], "node": node,
                               "interface": f"lxc-{name}" if iface is None else iface, **kw})

    mine = [await reg.upsert(ep(f"p{i}")) for i in range(50)]
    ids = [e.id for e in mine]
    assert all(1 <= i <= 4095 for i in ids) and len(set(ids)) == 50
    remote = await reg.upsert(ep("far", node="n2", id=7))
    waiting = await reg.upsert(ep("starting", iface=""))  # its interface not found yet
    assert remote.id == 0 and not reg.owns(remote)
    assert waiting.id > 0 and reg.owns(waiting) and not reg.is_local(waiting)
    assert {e.key for e in reg.local()} == {e.key for e in mine} | {waiting.key}
    # The ID is on the flow's endpoint message as the `ID` field (flow.Endpoint.ID = 1).
    assert fpb.Endpoint.FromString(mine[3].wire).ID == mine[3].id
    assert fpb.Endpoint.FromString(remote.wire).ID == 0
    # Updates keep the ID; other endpoints coming and going do not move it.
    relabelled = await reg.upsert(replace(ep("p3"), labels=(("app", "new"),)))
    assert relabelled.id == mine[3].id and relabelled.identity != mine[3].identity
    await reg.remove(mine[0].key)
    fresh = await reg.upsert(ep("p50"))
    assert fresh.id not in {e.id for e in reg.local() if e.key != fresh.key}
    assert (await reg.upsert(ep("p4"))).id == mine[4].id
    # A definition naming another endpoint's ID is an error, not a duplicate.
    with pytest.raises(EndpointError, match=f"endpoint ID {mine[5].id} is already in use by ns/p5"):
        await reg.upsert(ep("p99", id=mine[5].id))
    with pytest.raises(EndpointError, match="out of range"):
        await reg.upsert(ep("p99", id=4096))
    # A pod that moves to another node gives its ID back.
    moved = await reg.upsert(ep("p6", node="n2"))
    assert moved.id == 0 and mine[6].key not in {e.key for e in reg.local()}


def test_endpoint_id_follows_the_name_across_agent_restarts():
    """Without state on disk, a restarted agent gives the same pods the same IDs."""
    from webb_agent.stores.endpoint_ids import EndpointIDs

    keys = [f"ns/pod-{i}" for i in range(300)]
    first, second = EndpointIDs(), EndpointIDs()
    a = {k: first.allocate(k) for k in keys}
    b = {k: second.allocate(k) for k in keys}
    assert a == b and len(set(a.values())) == 300


def filled_ring(n: int, cap: int = 15) -> tuple[Ring, FlowWireCache]:
    reg = client_server()
    c, s = reg.by_ip("10.0.0.1"), reg.by_ip("10.0.0.2")
    ring: Ring = Ring(cap)
    recs = []
    for i in range(n):
        r = FlowRecord(ev(sport=30000 + i), 1_000_000_000 * (i + 1), c, s)
        r.seq = i
        recs.append(r)
    ring.write_many(recs)
    return ring, make_wire_cache()


async def collect(ring, wire_cache, req, match=None):
    out = []
    async for item in read_flows(ring, req, match):
        out.append(item if isinstance(item, Lost) else wire_cache.flow(item).l4.TCP.source_port - 30000)
    return out


async def test_reader_number_first_since_until():
    ring, p = filled_ring(10)
    assert await collect(ring, p, ReadRequest()) == list(range(10))
    assert await collect(ring, p, ReadRequest(number=3)) == [7, 8, 9]
    assert await collect(ring, p, ReadRequest(number=3, first=True)) == [0, 1, 2]
    odd = lambda rec: p.flow(rec).l4.TCP.source_port % 2 == 1  # noqa: E731
    assert await collect(ring, p, ReadRequest(number=2), odd) == [7, 9]
    assert await collect(ring, p, ReadRequest(since_ns=4_000_000_000, until_ns=6_000_000_000)) == [3, 4, 5]
    assert await collect(ring, p, ReadRequest(number=2, first=True, since_ns=5_000_000_000)) == [4, 5]


async def test_reader_follow_gets_new_entries_and_lost_records():
    ring, p = filled_ring(3)
    got: list = []

    async def follow():
        async for item in read_flows(ring, ReadRequest(number=1, follow=True), None):
            got.append(item)
            if len(got) == 3:
                return
    task = asyncio.create_task(follow())
    await asyncio.sleep(0.01)
    lost = LostRecord(1, 42, 0, 5)
    lost.seq = 3
    rec = FlowRecord(ev(sport=30003), 4_000_000_000, WORLD, WORLD)
    rec.seq = 4
    ring.write_many([lost, rec])
    await asyncio.wait_for(task, 2)
    assert isinstance(got[1], Lost) and got[1].count == 42 and got[1].source == 1
    assert p.flow(got[2]).l4.TCP.source_port == 30003


async def test_reader_reports_ring_overwrite():
    ring, p = filled_ring(5, cap=7)
    gen = read_flows(ring, ReadRequest(number=5, follow=True), None)
    first = await gen.__anext__()
    assert p.flow(first).l4.TCP.source_port == 30000
    more = []
    for i in range(5, 25):  # overwrite far past the reader
        r = FlowRecord(ev(sport=30000 + i), 10**9 * (i + 1), WORLD, WORLD)
        r.seq = i
        more.append(r)
    ring.write_many(more)
    nxt = await gen.__anext__()
    assert isinstance(nxt, Lost) and nxt.source == 3 and nxt.count == 18 - 1
    await gen.aclose()


async def test_reader_without_follow_loses_nothing_for_entries_newer_than_its_request():
    """Entries written after a request started are no part of its answer: the ring
    overwriting them under a slow reader is no loss (only its own span counts)."""
    ring, p = filled_ring(5, cap=7)
    gen = read_flows(ring, ReadRequest(), None)
    first = await gen.__anext__()
    assert p.flow(first).l4.TCP.source_port == 30000
    more = []
    for i in range(5, 9):  # overwrites entries 0 and 1 of the request's span
        r = FlowRecord(ev(sport=30000 + i), 10**9 * (i + 1), WORLD, WORLD)
        r.seq = i
        more.append(r)
    ring.write_many(more)
    rest = [x async for x in gen]
    assert isinstance(rest[0], Lost) and rest[0].count == 1  # entry 1 only
    assert [p.flow(x).l4.TCP.source_port - 30000 for x in rest[1:]] == [2, 3, 4]
    gen = read_flows(ring, ReadRequest(), None)
    await gen.__anext__()
    more = []
    for i in range(9, 40):  # far past the request's end (9)
        r = FlowRecord(ev(sport=30000 + i), 10**9 * (i + 1), WORLD, WORLD)
        r.seq = i
        more.append(r)
    ring.write_many(more)
    rest = [x async for x in gen]
    assert len(rest) == 1 and isinstance(rest[0], Lost) and rest[0].count == 6  # seqs 3..8


@pytest.mark.parametrize("req", [ReadRequest(first=True, follow=True),
                                 ReadRequest(number=3, since_ns=1),
                                 ReadRequest(since_ns=5, until_ns=1)])
def test_invalid_requests(req):
    with pytest.raises(RequestError):
        validate(req)


def test_ingest_orders_by_kernel_time_and_resolves_endpoints():
    reg = client_server()
    ring: Ring = Ring(15)
    ing = Ingest(ring, reg, {packed_ip("10.0.0.254")})
    raws = [pack(ev(ts=3000)), pack(ev(ts=1000, daddr="10.0.0.254")),
            pack(ev(ts=2000, daddr="8.8.8.8"))]
    ing.on_lost(1, 5)
    assert ing.process(raws) == 4
    entries = [ring.get(i) for i in range(4)]
    assert isinstance(entries[0], LostRecord) and entries[0].count == 5
    assert [e.ev.ts for e in entries[1:]] == [1000, 2000, 3000]
    assert entries[1].dst.identity == 1  # reserved:host
    assert entries[2].dst.identity == 2  # reserved:world
    assert entries[3].dst.name == "s"
    assert [e.seq for e in entries] == [0, 1, 2, 3]
    assert ing.seen_events == 3 and ing.lost_events == 5


def test_timer_drain_holds_back_the_newest_so_a_late_cpu_keeps_time_order():
    """Per-CPU buffers are read one after the other: an event stamped on CPU 1 just
    before a drain can reach its buffer after that buffer was read, and so arrive one
    drain after newer events of CPU 0. Records within the hold-back margin of the
    drain's start wait for the next drain, so the ring stays in time order."""
    reg = client_server()
    ring: Ring = Ring(15)
    ing = Ingest(ring, reg, set())
    start = 10_000_000
    # Drain 1 sees CPU 0's event at start - 1 µs; CPU 1's at start - 5 µs is late.
    assert ing.process([pack(ev(ts=start - 1_000)), pack(ev(ts=start - 9_000_000))],
                       hold_from_ns=start - 2_000_000) == 1
    # Drain 2 brings the late one: it leaves before the held, newer one.
    assert ing.process([pack(ev(ts=start - 5_000))], hold_from_ns=start + 8_000_000) == 2
    assert [ring.get(i).ev.ts for i in range(3)] == [start - 9_000_000, start - 5_000,
                                                     start - 1_000]
    assert [ring.get(i).seq for i in range(3)] == [0, 1, 2]
    # A drain without a margin (the chunked path) releases whatever is held.
    assert ing.process([pack(ev(ts=start + 9_000_000))], hold_from_ns=start) == 0
    assert ing.process([]) == 1 and ing.seen_events == 4


def test_response_bytes_parse_as_get_flows_response():
    from webb.api.observer import observer_pb2 as opb
    reg = client_server()
    c, s = reg.by_ip("10.0.0.1"), reg.by_ip("10.0.0.2")
    p = make_wire_cache()
    rec = FlowRecord(ev(), 1_700_000_000_000_000_001, c, s)
    resp = opb.GetFlowsResponse.FromString(p.response(rec))
    assert resp.node_name == "node-a" and resp.HasField("flow")
    assert resp.time.seconds == 1_700_000_000 and resp.time.nanos == 1
    assert resp.flow == p.flow(rec)
    assert resp.flow.source.workloads == [] and resp.flow.source.cluster_name == "default"
    assert list(resp.flow.source.labels) == list(c.identity_labels)
    # Encoding is stable: reading twice gives the same bytes and uuid.
    assert p.response(rec) == p.response(rec)


async def test_plain_follow_starts_at_the_next_flow():
    ring, p = filled_ring(5)
    gen = read_flows(ring, ReadRequest(follow=True), None)
    nxt = asyncio.ensure_future(gen.__anext__())
    await asyncio.sleep(0.01)
    assert not nxt.done()  # no history
    rec = FlowRecord(ev(sport=30077), 9_000_000_000, WORLD, WORLD)
    rec.seq = 5
    ring.write_many([rec])
    got = await asyncio.wait_for(nxt, 2)
    assert p.flow(got).l4.TCP.source_port == 30077
    await gen.aclose()


def test_records_keep_raw_bytes_until_encoded():
    from webb_agent.datapath.event import HEAD_STRUCT
    e = ev(saddr="fd00::1", daddr="fd00::2", ts=123456789)
    raw = pack(e)
    assert HEAD_STRUCT.unpack_from(raw) == (e.ts, e.saddr, e.daddr, e.family)
    reg = client_server()
    ring: Ring = Ring(15)
    ing = Ingest(ring, reg, set())
    ing.process([raw, pack(ev(ts=5))])
    rec = ring.get(1)
    assert rec.raw is raw and type(rec.raw) is bytes  # no decoded tuple kept
    assert rec.ev == e and rec.ev.ts == 123456789
    p = make_wire_cache()
    flow = p.flow(rec)
    assert rec.raw is None and rec.wire is not None  # encoded: raw bytes dropped
    assert flow.IP.source == "fd00::1" and flow.l4.TCP.source_port == 40000
    assert p.flow(rec) == flow
    with pytest.raises(AttributeError):
        rec.ev  # noqa: B018
    # A FlowEvent given by hand is kept packed, like the datapath's bytes.
    assert FlowRecord(e, 1, WORLD, WORLD).raw == raw


def test_ingest_drains_in_bounded_chunks():
    import ctypes
    reg = client_server()
    ring: Ring = Ring(63)
    batches: list[int] = []
    ing = Ingest(ring, reg, set(), on_batch=lambda recs: batches.append(len(recs)), chunk=4)
    bufs = [ctypes.create_string_buffer(pack(ev(ts=1000 + i, sport=30000 + i)), EVENT_SIZE)
            for i in range(10)]
    peak = 0
    for b in bufs:  # what bcc's consume does with a backlog: one callback per event
        ing.on_event(0, ctypes.addressof(b), EVENT_SIZE)
        peak = max(peak, len(ing._raw))
    assert peak < 4 and batches == [4, 4] and ring.next_seq == 8
    assert ing.process() == 2 and batches == [4, 4, 2]
    assert [ring.get(i).ev.sport for i in range(10)] == list(range(30000, 30010))
    assert ing.seen_events == 10


def test_flows_rate_from_per_second_counters(monkeypatch):
    from webb_agent.api import observer
    from webb_agent.api.observer import NodeState

    class NoWalk(Ring):
        def get(self, seq):  # flows_rate must not walk the ring
            raise AssertionError("ring walked")

    now = [1_000 * 10**9]
    monkeypatch.setattr(observer.time, "time_ns", lambda: now[0])
    node = NodeState("n", "v", "", NoWalk(7), lambda: 0)
    node.started_ns -= 3600 * 10**9  # up for an hour: a full minute's window
    reg = client_server()
    c, s = reg.by_ip("10.0.0.1"), reg.by_ip("10.0.0.2")
    node.note_batch([FlowRecord(ev(), now[0], c, s)] * 30)
    now[0] += 30 * 10**9
    node.count_flows(90, now[0] // 10**9)
    assert node.flows_rate() == pytest.approx(120 / 60)
    assert node.namespaces == {("default", "ns"): 1_000 * 10**9}
    now[0] += 31 * 10**9  # the first 30 flows are now more than a minute old
    assert node.flows_rate() == pytest.approx(90 / 60)
    now[0] += 60 * 10**9
    assert node.flows_rate() == 0
    # A slot reused a minute later starts from zero.
    node.count_flows(6, now[0] // 10**9)
    assert node.flows_rate() == pytest.approx(6 / 60)


def test_memory_settings():
    import gc
    from webb_agent.memory import GC_THRESHOLD, release_freed_heap, tune_gc
    before = gc.get_threshold()
    try:
        assert tune_gc() is True
        assert gc.get_threshold() == GC_THRESHOLD and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert release_freed_heap() is True  # glibc here


def test_drop_clean_file_pages(tmp_path):
    import mmap
    import re
    from webb_agent.memory import drop_clean_file_pages

    def resident(name):
        rss, cur = 0, False
        for line in open("/proc/self/smaps"):
            if "-" in line.split(" ", 1)[0]:
                cur = line.rstrip().endswith(name)
            elif cur and line.startswith("Rss:"):
                rss += int(line.split()[1])
        return rss

    f = tmp_path / "libwebbtest.so"
    f.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    with open(f, "rb") as fh:
        m = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    try:
        assert sum(m[i] for i in range(0, len(m), 4096)) == 0  # touch every page
        assert resident("libwebbtest.so") >= 1024
        assert drop_clean_file_pages(re.compile(r"/libwebbtest\.so$")) >= 1024 * 1024
        assert resident("libwebbtest.so") == 0
        assert m[4097] == 1 and m[-1] == 255  # read again from the file
    finally:
        m.close()
    # A mapping with a copied-on-write page (relocated library data) is left alone.
    with open(f, "r+b") as fh:
        w = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_PRIVATE)
    try:
        w[0] = 42
        assert drop_clean_file_pages(re.compile(r"/libwebbtest\.so$")) == 0
        assert w[0] == 42
    finally:
        w.close()


@pytest.mark.parametrize("name", ["", "hubble.server.Observer", "observer.Observer", "peer.Peer"])
async def test_agent_health_serves_the_names_hubble_clients_ask(name, tmp_path):
    """`hubble status` asks grpc.health.v1 about "hubble.server.Observer" (Cilium's
    v1.ObserverServiceName); a name the server does not know is NotFound."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from webb.api.admin import admin_pb2_grpc
    from webb.api.observer import observer_pb2_grpc
    from webb.api.peer import peer_pb2_grpc
    from webb_agent.api.server import start_server

    server, _ = await start_server(observer_pb2_grpc.ObserverServicer(),
                                   peer_pb2_grpc.PeerServicer(), admin_pb2_grpc.AdminServicer(),
                                   "", str(tmp_path / "agent.sock"))
    try:
        async with grpc.aio.insecure_channel(f"unix://{tmp_path / 'agent.sock'}") as ch:
            r = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert r.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(None)

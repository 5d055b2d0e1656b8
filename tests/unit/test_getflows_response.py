"""GetFlows' per-message bytes (FlowWireCache.response: one join of the ring's body, the
UUID and the endpoint pair's fields, encoded once per pair) are exactly what assembling
the whole flow and wrapping it gives (encoder.response(cache_wire(rec))), for every kind
of record, across endpoint changes, UUID salts and the pair table's bound."""
from __future__ import annotations

from dataclasses import replace

from history_support import EPS, records
from test_agent_memory import SEC, endpoint, http_record

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb_agent.pipeline.flow_wire import SEQ_48
from webb_agent.pipeline.l7.tracker import L7Tracker
from webb_agent.pipeline.record import L7Record
from webb_agent.pipeline.wire_cache import MAX_PAIRS, FlowWireCache


def assembled(cache: FlowWireCache, rec) -> bytes:  # type: ignore[no-untyped-def]
    """The response as it was built before: the whole flow, then the envelope."""
    return cache.encoder.response(cache.cache_wire(rec), rec.time_ns)


def check(cache: FlowWireCache, rec) -> opb.GetFlowsResponse:  # type: ignore[no-untyped-def]
    got = cache.response(rec)
    assert got == assembled(cache, rec)
    r = opb.GetFlowsResponse.FromString(got)
    assert r.flow == fpb.Flow.FromString(cache.cache_wire(rec))
    assert r.node_name == cache.node_name and r.time == r.flow.time
    assert r.flow.uuid == cache.flow_uuid(rec.seq)
    return r


def test_response_is_the_assembled_flow_for_every_kind_of_record():
    cache = FlowWireCache("n1", {7: "lxc7"}, "test")
    recs = records(0, 200)  # TCP/UDP/ICMP, drops, verdicts, the world endpoint
    for i, r in enumerate(recs):
        r.seq = i * 977
    recs[-1].seq = SEQ_48 - 1
    recs[-2].seq = SEQ_48 + 5  # the UUID's high part in use: the slow path, same bytes
    msgs = L7Tracker().process([http_record(b"GET /p HTTP/1.1\r\nHost: details\r\n\r\n",
                                            5000, 40001)], 1_700_000_000 * SEC)
    l7 = L7Record(msgs[0], msgs[0].time_ns, EPS[0], EPS[1])
    l7.seq = 12345
    for rec in recs + [l7]:
        check(cache, rec)  # first read encodes the body
        check(cache, rec)  # later reads use the kept body and the pair's fields
    assert l7.msg is None and all(r.raw is None for r in recs)


def test_a_record_read_back_from_history_keeps_its_whole_flow():
    cache = FlowWireCache("n1", {}, "test")
    rec = records(0, 1)[0]
    rec.seq = 7
    whole = cache.cache_wire(rec)
    stored = records(0, 1)[0]
    stored.src = stored.dst = None  # as the history store's reader gives it
    stored.wire, stored.raw, stored.seq = whole, None, 7
    assert cache.response(stored) == cache.encoder.response(whole, stored.time_ns)
    assert cache.response(stored) == cache.response(rec)


def test_an_endpoint_change_and_a_new_salt_show_in_the_next_response():
    cache = FlowWireCache("n1", {}, "test")
    c, s = endpoint("productpage", "10.1.0.10"), endpoint("details", "10.1.0.11")
    rec = records(0, 1)[0]
    rec.src, rec.dst, rec.seq = c, s, 3
    assert check(cache, rec).flow.source.pod_name == "productpage"
    # The endpoint store replaces a snapshot when a pod changes: new labels, new object.
    c2 = replace(c, name="productpage-v2").with_wire()
    later = records(0, 1)[0]
    later.src, later.dst, later.seq = c2, s, 4
    assert check(cache, later).flow.source.pod_name == "productpage-v2"
    assert check(cache, rec).flow.source.pod_name == "productpage"  # its own snapshot
    cache.encoder.set_uuid_salt("0123456789abcdef0123")
    r = check(cache, rec)
    assert r.flow.uuid == "01234567-89ab-cdef-0000-000000000003"


def test_the_pair_table_is_bounded():
    cache = FlowWireCache("n1", {}, "test")
    eps = [endpoint(f"pod-{i}", f"10.2.{i // 250}.{i % 250 + 1}") for i in range(80)]
    rec = records(0, 1)[0]
    n = 0
    for a in eps:
        for b in eps:  # 6,400 pairs: beyond the bound by more than 1,000
            rec.src, rec.dst, rec.seq = a, b, n
            n += 1
            if n % 97 == 0:
                check(cache, rec)
            else:
                cache.response(rec)
            assert len(cache._pairs) <= MAX_PAIRS
    assert n > MAX_PAIRS + 1000
    rec.src, rec.dst = eps[0], eps[1]
    assert check(cache, rec).flow.destination.pod_name == "pod-1"

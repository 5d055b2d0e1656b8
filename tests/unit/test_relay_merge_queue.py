"""The relay's time-ordered merge and its `number` selection, without gRPC: runs of
entries (time, serialized response, node) through the upstreams' real buffers."""
from __future__ import annotations

import random

import pytest

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.relay import relay_pb2 as rpb
from webb_relay.entries import Columns, is_flow, scan
from webb_relay.merge_queue import MergeQueue
from webb_relay.number import Selection, response_time_ns
from webb_relay.upstream import Upstream

S = 1_000_000_000
MS = 1_000_000


def source(name: str, maxsize: int = 10**6) -> Upstream:
    return Upstream(name, name, 0, maxsize, True, 1.0, lambda: None)


def put(src: Upstream, times: list[int], now: int = 0) -> None:
    src.put(list(times), [b"%s:%d" % (src.name.encode(), t) for t in times],
            [src.name] * len(times), now)


def labels(c: Columns) -> list[str]:
    return [r.decode() for r in c.raws]


def merged_exact(streams: dict[str, list[int]], maxsize: int, batch: int) -> list[int]:
    """Drives a non-follow merge the way the relay does: a source delivers a batch
    only while its buffer has room; sources take turns."""
    q = MergeQueue(100, S, follow=False)
    srcs = {s: source(s, maxsize) for s in streams}
    pos = dict.fromkeys(streams, 0)
    out: list[int] = []
    while True:
        progressed = False
        for s, items in streams.items():
            src = srcs[s]
            if pos[s] < len(items) and len(src) < maxsize:
                put(src, items[pos[s]:pos[s] + batch])
                pos[s] += batch
                progressed = True
            elif pos[s] >= len(items):
                src.finished = True
        out.extend(q.release(list(srcs.values()), 0).times)
        assert all(len(src) < maxsize + batch for src in srcs.values())
        if not progressed:
            assert all(pos[s] >= len(v) for s, v in streams.items()), "merge stalled"
            break
    out.extend(q.drain(list(srcs.values())).times)
    return out


@pytest.mark.parametrize("maxsize,batch", [(1, 1), (2, 7), (100, 64)])
def test_exact_merge_of_sorted_streams_is_sorted_with_small_buffers(maxsize, batch):
    rnd = random.Random(1)
    streams = {f"n{i}": sorted(rnd.randrange(10**9) for _ in range(500)) for i in range(3)}
    out = merged_exact(streams, maxsize, batch)
    assert out == sorted(x for v in streams.values() for x in v)


def test_exact_merge_holds_entries_until_every_open_source_has_one():
    q = MergeQueue(100, S, follow=False)
    a, b = source("a"), source("b")
    put(a, [5, 7])
    assert len(q.release([a, b], 10 * S)) == 0  # b may still send something older
    put(b, [3])
    assert labels(q.release([a, b], 0)) == ["b:3"]  # b is empty again: a:5 must wait
    b.finished = True
    assert labels(q.release([a, b], 0)) == ["a:5", "a:7"]


def test_runs_of_several_sources_interleave_by_time():
    q = MergeQueue(100, S, follow=False)
    a, b, c = source("a"), source("b"), source("c")
    put(a, [1, 4, 9])
    put(b, [2, 3, 10])
    put(c, [5, 8])
    out = q.release([a, b, c], 0)  # up to 8: the oldest of the newest times
    assert out.times == [1, 2, 3, 4, 5, 8] and out.nodes == ["a", "b", "b", "a", "c", "c"]
    assert (a.times, b.times, len(c)) == ([9], [10], 0)


def test_follow_window_releases_entries_of_an_idle_cluster():
    q = MergeQueue(100, S, follow=True)
    a, idle = source("a"), source("idle")
    put(a, [50], now=0)
    put(a, [100], now=int(0.5 * S))
    assert len(q.release([a, idle], int(0.9 * S))) == 0
    assert q.next_deadline([a, idle]) == S
    assert labels(q.release([a, idle], S)) == ["a:50"]  # waited a full window
    assert q.next_deadline([a, idle]) == int(1.5 * S)
    assert labels(q.release([a, idle], int(1.5 * S))) == ["a:100"]
    assert q.next_deadline([a, idle]) is None


@pytest.mark.parametrize("idle_source", [False, True])
def test_follow_merge_is_ordered_when_nodes_lag_less_than_the_window(idle_source):
    """Each node sends in time order but late by up to 0.3 s (varying), in batches:
    with a 1 s window the merged stream is sorted, also with an idle node open."""
    rnd = random.Random(7)
    q = MergeQueue(10_000, S, follow=True)
    names = ["a", "b", "c"]
    srcs = {n: source(n) for n in names + (["idle"] if idle_source else [])}
    deliveries = []
    last = dict.fromkeys(names, 0)
    for i in range(3000):
        t = (i + 1) * MS
        n = rnd.choice(names)
        last[n] = max(last[n], t + rnd.randrange(300 * MS))  # in order per node
        deliveries.append((last[n], n, t))
    out: list[int] = []
    for now, n, t in sorted(deliveries):
        put(srcs[n], [t], now)
        out.extend(q.release(list(srcs.values()), now).times)
    out.extend(q.drain(list(srcs.values())).times)
    assert len(out) == 3000 and out == sorted(out)


def test_follow_buffer_overflow_releases_oldest():
    q = MergeQueue(3, 10 * S, follow=True)
    a, idle = source("a"), source("idle")
    put(a, [1, 2, 3, 4, 5])
    assert q.release([a, idle], 0).times == [1, 2]  # bounded: 3 stay buffered
    assert len(a) == 3
    assert q.drain([a, idle]).times == [3, 4, 5]


def test_equal_times_keep_source_order():
    q = MergeQueue(10, S)
    a, b = source("a"), source("b")
    put(a, [1, 1])
    put(b, [1])
    a.finished = b.finished = True
    assert labels(q.release([a, b], 0)) == ["a:1", "a:1", "b:1"]


def test_invalid_parameters():
    with pytest.raises(ValueError):
        MergeQueue(0, S)
    with pytest.raises(ValueError):
        MergeQueue(1, 0)


# -- entries -----------------------------------------------------------------------

def flow(t_ns: int, node: str = "n") -> opb.GetFlowsResponse:
    r = opb.GetFlowsResponse(flow=fpb.Flow(node_name=node), node_name=node)
    r.time.FromNanoseconds(t_ns)
    r.flow.time.FromNanoseconds(t_ns)
    return r


def lost(t_ns: int) -> opb.GetFlowsResponse:
    r = opb.GetFlowsResponse(lost_events=fpb.LostEvent(num_events_lost=1))
    r.time.FromNanoseconds(t_ns)
    return r


def test_scan_reads_times_without_decoding_and_keeps_the_bytes():
    for r in (flow(1_700_000_000_123_456_789), lost(42), opb.GetFlowsResponse(
            node_status=rpb.NodeStatusEvent(node_names=["a"]), time=flow(7).time)):
        raw = r.SerializeToString()
        assert scan(raw, 5) == (response_time_ns(r, 5), raw)
    assert is_flow(flow(1).SerializeToString()) and not is_flow(lost(1).SerializeToString())
    # no response time: the flow's, else the arrival time
    r = opb.GetFlowsResponse(flow=fpb.Flow())
    r.flow.time.FromNanoseconds(42)
    assert scan(r.SerializeToString(), 7)[0] == 42
    assert scan(opb.GetFlowsResponse(flow=fpb.Flow()).SerializeToString(), 7)[0] == 7
    # fields out of number order (another serializer): put in order
    raw = flow(9).SerializeToString()
    swapped = raw[raw.index(b"\xc2>"):] + raw[:raw.index(b"\xc2>")]
    t, fixed = scan(swapped, 0)
    assert t == 9 and fixed == raw and is_flow(fixed)


# -- number ----------------------------------------------------------------------

def cols(*rs: opb.GetFlowsResponse) -> Columns:
    c = Columns()
    for r in rs:
        c.append(response_time_ns(r, 0), r.SerializeToString(), "n")
    return c


def times(c: Columns) -> list[int]:
    return [t for t, r in zip(c.times, c.raws) if is_flow(r)]


def test_first_n_across_nodes():
    sel = Selection(number=3, first=True, follow=False, t0_ns=0, settle_ns=S, now_ns=0)
    out = Columns()
    out.extend(sel.offer(cols(flow(1), lost(2)), 0))
    out.extend(sel.offer(cols(flow(2), flow(3), flow(4)), 0))
    out.extend(sel.offer(cols(flow(5)), 0))
    assert times(out) == [1, 2, 3] and len(out) == 4 and sel.done


def test_last_n_without_follow_keeps_the_newest_n_of_the_merged_stream():
    sel = Selection(number=4, first=False, follow=False, t0_ns=0, settle_ns=S, now_ns=0)
    for t in range(1, 13):  # 3 nodes x 4 flows each, merged
        assert len(sel.offer(cols(flow(t)), 0)) == 0
    assert times(sel.finish()) == [9, 10, 11, 12]


def test_last_n_passes_lost_events_and_does_not_count_them():
    sel = Selection(number=2, first=False, follow=False, t0_ns=0, settle_ns=S, now_ns=0)
    out = sel.offer(cols(flow(1), lost(2), flow(3), flow(4)), 0)
    assert len(out) == 1 and not is_flow(out.raws[0])
    assert times(sel.finish()) == [3, 4]


def test_last_n_with_follow_flushes_history_when_live_flows_start():
    t0 = 100
    sel = Selection(number=2, first=False, follow=True, t0_ns=t0, settle_ns=S, now_ns=0)
    assert len(sel.offer(cols(flow(10), flow(20), flow(30), flow(40)), 0)) == 0
    out = sel.offer(cols(flow(150)), 0)  # newer than the request: history is complete
    assert times(out) == [30, 40, 150]
    assert times(sel.offer(cols(flow(160)), 0)) == [160]


def test_last_n_with_follow_flushes_history_after_settling():
    sel = Selection(number=5, first=False, follow=True, t0_ns=100, settle_ns=S, now_ns=0)
    sel.offer(cols(flow(10)), 0)
    sel.offer(cols(flow(20)), int(0.2 * S))
    assert len(sel.tick(int(1.1 * S), idle=True)) == 0  # last history flow came at 0.2 s
    assert len(sel.tick(int(1.3 * S), idle=False)) == 0  # something is still pending
    assert times(sel.tick(int(1.3 * S), idle=True)) == [10, 20]
    assert sel.settle_deadline() is None

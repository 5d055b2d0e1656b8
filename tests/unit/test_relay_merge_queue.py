"""The relay's time-ordered merge and its `number` selection, without gRPC."""
from __future__ import annotations

import random

import pytest

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb_relay.merge_queue import MergeQueue
from webb_relay.number import Selection, response_time_ns

S = 1_000_000_000
MS = 1_000_000


def merged_exact(streams: dict[str, list[int]], max_len: int) -> list[int]:
    """Drives a non-follow merge the way the relay does: a source pushes only
    while accepted; sources deliver one item per round, interleaved."""
    q: MergeQueue[int] = MergeQueue(max_len, S, follow=False)
    pos = {s: 0 for s in streams}
    for s in streams:
        q.add_source(s)
    out: list[int] = []
    while True:
        progressed = False
        for s, items in streams.items():
            if pos[s] < len(items) and q.accepts(s):
                q.push(s, items[pos[s]], items[pos[s]], 0)
                pos[s] += 1
                progressed = True
            elif pos[s] == len(items):
                q.close_source(s)
        out.extend(q.pop_ready(0))
        assert len(q) <= max_len
        if not progressed:
            assert all(pos[s] == len(v) for s, v in streams.items()), "merge stalled"
            break
    out.extend(q.drain())
    return out


def test_exact_merge_of_sorted_streams_is_sorted_with_a_tiny_buffer():
    rnd = random.Random(1)
    streams = {f"n{i}": sorted(rnd.randrange(10**9) for _ in range(500)) for i in range(3)}
    out = merged_exact(streams, max_len=2)
    assert out == sorted(x for v in streams.values() for x in v)


def test_exact_merge_holds_items_until_every_open_source_has_one():
    q: MergeQueue[str] = MergeQueue(100, S, follow=False)
    q.add_source("a")
    q.add_source("b")
    q.push("a", 5, "a5", 0)
    q.push("a", 7, "a7", 0)
    assert q.pop_ready(10 * S) == []  # b may still send something older (no window without follow)
    q.push("b", 3, "b3", 0)
    assert q.pop_ready(0) == ["b3"]  # now b is empty again: a5 must wait
    q.close_source("b")
    assert q.pop_ready(0) == ["a5", "a7"]


def test_exact_merge_backpressure_bounds_the_buffer():
    q: MergeQueue[int] = MergeQueue(3, S, follow=False)
    q.add_source("a")
    q.add_source("b")
    for t in range(3):
        assert q.accepts("a")
        q.push("a", t, t, 0)
    assert not q.accepts("a")  # full, and a already has items buffered
    assert q.accepts("b")  # b has none: it must be heard to make progress
    q.push("b", 10, 10, 0)
    assert q.pop_ready(0) == [0, 1, 2]
    assert len(q) == 1


def test_follow_window_releases_items_of_an_idle_cluster():
    q: MergeQueue[str] = MergeQueue(100, S, follow=True)
    q.add_source("a")
    q.add_source("idle")
    q.push("a", 100, "x", now=0)
    q.push("a", 50, "y", now=int(0.5 * S))
    assert q.pop_ready(int(0.9 * S)) == []
    assert q.next_deadline() == S
    # x waited a full window: it goes, and y (older) before it
    assert q.pop_ready(S) == ["y", "x"]
    assert q.next_deadline() is None


@pytest.mark.parametrize("idle_source", [False, True])
def test_follow_merge_is_ordered_when_nodes_lag_less_than_the_window(idle_source):
    """Each node sends in time order but late by up to 0.3 s (varying): with a
    1 s window the merged stream is sorted, also with an idle node open."""
    rnd = random.Random(7)
    q: MergeQueue[int] = MergeQueue(10_000, S, follow=True)
    sources = ["a", "b", "c"]
    for src in sources + (["idle"] if idle_source else []):
        q.add_source(src)
    deliveries = []
    last = dict.fromkeys(sources, 0)
    for i in range(3000):
        t = (i + 1) * MS
        src = rnd.choice(sources)
        last[src] = max(last[src], t + rnd.randrange(300 * MS))  # in order per node
        deliveries.append((last[src], src, t))
    out: list[int] = []
    for now, src, t in sorted(deliveries):
        out.extend(q.push(src, t, t, now))
        out.extend(q.pop_ready(now))
    out.extend(q.drain())
    assert len(out) == 3000 and out == sorted(out)


def test_follow_buffer_overflow_releases_oldest():
    q: MergeQueue[int] = MergeQueue(3, 10 * S, follow=True)
    q.add_source("a")
    q.add_source("idle")
    released = []
    for t in (5, 1, 4, 2, 3):
        released += q.push("a", t, t, 0)
    assert released == [1, 2]  # bounded: never more than 3 buffered
    assert len(q) == 3
    assert q.drain() == [3, 4, 5]


def test_closing_a_source_releases_the_others():
    q: MergeQueue[int] = MergeQueue(10, S, follow=True)
    q.add_source("a")
    q.add_source("b")
    q.push("a", 1, 1, 0)
    assert q.pop_ready(0) == []
    q.close_source("b")
    assert q.pop_ready(0) == [1]


def test_equal_times_keep_arrival_order():
    q: MergeQueue[str] = MergeQueue(10, S)
    q.add_source("a")
    for x in "pqr":
        q.push("a", 1, x, 0)
    q.close_source("a")
    assert q.pop_ready(0) == ["p", "q", "r"]


def test_invalid_parameters():
    with pytest.raises(ValueError):
        MergeQueue(0, S)
    with pytest.raises(ValueError):
        MergeQueue(1, 0)


# -- number ----------------------------------------------------------------------

def flow(t_ns: int, node: str = "n") -> opb.GetFlowsResponse:
    r = opb.GetFlowsResponse(flow=fpb.Flow(node_name=node), node_name=node)
    r.time.FromNanoseconds(t_ns)
    r.flow.time.FromNanoseconds(t_ns)
    return r


def lost(t_ns: int) -> opb.GetFlowsResponse:
    r = opb.GetFlowsResponse(lost_events=fpb.LostEvent(num_events_lost=1))
    r.time.FromNanoseconds(t_ns)
    return r


def times(rs: list[opb.GetFlowsResponse]) -> list[int]:
    return [response_time_ns(r, -1) for r in rs if r.HasField("flow")]


def test_first_n_across_nodes():
    sel = Selection(number=3, first=True, follow=False, t0_ns=0, settle_ns=S, now_ns=0)
    out = []
    for t in (1, 2, 3, 4, 5):
        out += sel.offer(flow(t), 0)
    assert times(out) == [1, 2, 3] and sel.done


def test_last_n_without_follow_keeps_the_newest_n_of_the_merged_stream():
    sel = Selection(number=4, first=False, follow=False, t0_ns=0, settle_ns=S, now_ns=0)
    out = []
    for t in range(1, 13):  # 3 nodes x 4 flows each, merged
        out += sel.offer(flow(t), 0)
    assert out == []
    assert times(sel.finish()) == [9, 10, 11, 12]


def test_last_n_passes_lost_events_and_does_not_count_them():
    sel = Selection(number=2, first=False, follow=False, t0_ns=0, settle_ns=S, now_ns=0)
    out = sel.offer(flow(1), 0) + sel.offer(lost(2), 0) + sel.offer(flow(3), 0) + sel.offer(flow(4), 0)
    assert len(out) == 1 and out[0].HasField("lost_events")
    assert times(sel.finish()) == [3, 4]


def test_last_n_with_follow_flushes_history_when_live_flows_start():
    t0 = 100
    sel = Selection(number=2, first=False, follow=True, t0_ns=t0, settle_ns=S, now_ns=0)
    out = []
    for t in (10, 20, 30, 40):
        out += sel.offer(flow(t), 0)
    assert out == []
    out += sel.offer(flow(150), 0)  # newer than the request: history is complete
    assert times(out) == [30, 40, 150]
    assert times(sel.offer(flow(160), 0)) == [160]


def test_last_n_with_follow_flushes_history_after_settling():
    sel = Selection(number=5, first=False, follow=True, t0_ns=100, settle_ns=S, now_ns=0)
    sel.offer(flow(10), 0)
    sel.offer(flow(20), int(0.2 * S))
    assert sel.tick(int(1.1 * S), idle=True) == []  # last history flow came at 0.2 s
    assert sel.tick(int(1.3 * S), idle=False) == []  # something is still pending
    assert times(sel.tick(int(1.3 * S), idle=True)) == [10, 20]
    assert sel.settle_deadline() is None


def test_response_time_falls_back_to_flow_time_then_default():
    r = opb.GetFlowsResponse(flow=fpb.Flow())
    r.flow.time.FromNanoseconds(42)
    assert response_time_ns(r, 7) == 42
    assert response_time_ns(opb.GetFlowsResponse(flow=fpb.Flow()), 7) == 7

"""Flow history without the kernel: records as ingest makes them go through the real
writer to segment files and come back through GetFlows' reader, against a ring
that has long wrapped."""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from history_support import BASE_NS, ingest, wire_cache, records
from webb.api.flow import flow_pb2 as fpb
from webb.filters import build_filter
from webb_agent.pipeline.selection import LOST_SOURCE_RING, Lost, ReadRequest, read_flows
from webb_agent.stores.history import History
from webb_agent.stores.history.batch import pack_batch, unpack_batch
from webb_agent.stores.history.encoding import wire_encoder
from webb_agent.stores.history.segment import HEADER_SIZE
from webb_agent.stores.history.sizes import parse_size
from webb_agent.stores.history.store import HistoryStore
from webb_agent.stores.ring import Ring

HOUR = 3600 * 10**9


async def collect(reader: Any, ring: Ring, req: ReadRequest, match: Any = None) -> list[Any]:
    return [x async for x in reader(ring, req, match)]


def seqs(items: list[Any]) -> list[int]:
    return [x.seq for x in items if not isinstance(x, Lost)]


class Node:
    """A ring + history as the agent wires them, fed batches like ingest."""

    def __init__(self, directory: str, ring_capacity: int = 63, max_bytes: int = 50_000_000,
                 max_age_ns: int = 10**6 * HOUR) -> None:
        self.history = History(directory, max_bytes, max_age_ns, flush_interval=0.01)
        self.ring: Ring = Ring(ring_capacity, self.history.next_seq)
        self.wire_cache = wire_cache()
        self.history.bind(self.wire_cache)

    def feed(self, start: int, n: int, batch: int = 50, t0: int = BASE_NS,
             step_ns: int = 1_000_000) -> None:
        for b in range(start, start + n, batch):
            ingest(self.ring, records(b, min(batch, start + n - b), t0, step_ns),
                   self.history.on_batch)

    async def flush(self) -> None:
        assert self.history.writer is not None
        await self.history.writer.flush()

    async def read(self, req: ReadRequest, match: Any = None) -> list[Any]:
        return await collect(self.history.reader, self.ring, req, match)

    async def close(self) -> None:
        await self.history.close(self.ring.next_seq)


def test_sizes():
    assert parse_size("300MB") == 300_000_000 and parse_size("1GiB") == 1 << 30
    assert parse_size("4096") == 4096 and parse_size("1.5 KB") == 1500
    with pytest.raises(ValueError, match="300MB"):
        parse_size("lots")


def test_batch_round_trip_gives_the_ring_encoding():
    """Stored flows encode to exactly the bytes the ring's flows do."""
    p = wire_cache()
    recs = records(0, 300)
    for i, r in enumerate(recs):
        r.seq = 1000 + i
    raws = [r.raw for r in recs]
    data = pack_batch(recs, raws, wire_encoder(p))
    back = unpack_batch(data)
    assert [r.seq for r in back] == [r.seq for r in recs]
    assert [r.time_ns for r in back] == [r.time_ns for r in recs]
    # drops and policy verdicts are stored encoded, traces raw
    assert any(r.raw is None for r in back) and any(r.raw is not None for r in back)
    assert [p.cache_wire(r) for r in back] == [p.cache_wire(r) for r in recs]


async def test_since_until_after_the_ring_wrapped(tmp_path):
    node = Node(str(tmp_path))
    node.feed(0, 2000)  # a 63-flow ring wrapped ~30 times
    await node.flush()
    node.feed(2000, 30)  # still pending: not on disk yet, partly in the ring
    ring_only = [x async for x in read_flows(node.ring, ReadRequest(since_ns=BASE_NS), None)]
    assert seqs(ring_only) == list(range(2030 - 63, 2030))  # the ring alone: its last 63
    out = await node.read(ReadRequest(since_ns=BASE_NS + 100 * 10**6,
                                      until_ns=BASE_NS + 2010 * 10**6))
    assert not any(isinstance(x, Lost) for x in out)
    assert seqs(out) == list(range(100, 2011))  # no gap, no duplicate, store → ring
    f = node.wire_cache.flow(out[0])
    assert f.time.ToNanoseconds() == BASE_NS + 100 * 10**6
    # first N from the beginning of the store, number N across store and ring
    assert seqs(await node.read(ReadRequest(first=True, number=5))) == [0, 1, 2, 3, 4]
    assert seqs(await node.read(ReadRequest(number=100))) == list(range(1930, 2030))
    await node.close()


async def test_a_past_window_read_while_ingest_goes_on_reports_no_loss(tmp_path):
    """The relay reads slower than the node records: flows recorded after the
    request started overwrite the ring under it; they are no part of the window's
    answer, so nothing may be reported lost (the e2e test's flaky LostEvent)."""
    node = Node(str(tmp_path))
    node.feed(0, 2000)
    await node.flush()
    node.feed(2000, 40)  # partly pending, partly in the ring
    out: list[Any] = []
    nxt = 2040
    async for x in node.history.reader(node.ring, ReadRequest(
            since_ns=BASE_NS + 100 * 10**6, until_ns=BASE_NS + 2030 * 10**6), None):
        out.append(x)
        node.feed(nxt, 3)  # ingest goes on while each answer is sent
        nxt += 3
    assert not [x for x in out if isinstance(x, Lost)]
    assert seqs(out) == list(range(100, 2031))
    # with follow, the flows after the window's end are part of the answer: a
    # follower that falls behind the live ring is told what it lost
    out = []
    async for x in node.history.reader(node.ring, ReadRequest(
            follow=True, since_ns=BASE_NS + (nxt - 50) * 10**6), None):
        out.append(x)
        if isinstance(x, Lost) or len(out) > 500:
            break
        node.feed(nxt, 100)
        nxt += 100
    assert isinstance(out[-1], Lost) and out[-1].source == LOST_SOURCE_RING
    await node.close()


async def test_follow_with_since_goes_on_live(tmp_path):
    node = Node(str(tmp_path))
    node.feed(0, 500)
    await node.flush()
    got: list[Any] = []

    async def follow() -> None:
        async for x in node.history.reader(node.ring, ReadRequest(follow=True, since_ns=BASE_NS),
                                           None):
            got.append(x)
            if len(got) >= 520:
                return
    task = asyncio.create_task(follow())
    for _ in range(200):  # bounded: until the history part is read
        await asyncio.sleep(0.01)
        if len(got) >= 500:
            break
    node.feed(500, 20)  # live flows after the history
    await asyncio.wait_for(task, 10)
    assert seqs(got) == list(range(520))
    await node.close()


@pytest.mark.parametrize("filt", [
    {"source_pod": ["demo/client"]},
    {"verdict": [fpb.DROPPED]},
    {"protocol": ["udp"], "destination_port": ["53"]},
    {"source_label": ["k8s:app=db"]},
    {"reply": [True]},
    {"destination_ip": ["10.1.0.11"]},
])
async def test_filters_answer_the_same_on_history_as_on_the_ring(tmp_path, filt):
    """The same flows, once all in a big ring, once mostly in the store."""
    wl = [fpb.FlowFilter(**filt)]
    pred = build_filter(wl, [])
    results = []
    for capacity, d in ((4095, "big"), (15, "small")):
        node = Node(str(tmp_path / d), ring_capacity=capacity)
        node.feed(0, 1500)
        await node.flush()
        match = lambda rec, p=node.wire_cache: pred(p.flow(rec))  # noqa: E731  (as the observer)
        out = await node.read(ReadRequest(since_ns=BASE_NS), match)
        assert not any(isinstance(x, Lost) for x in out)
        flows = [node.wire_cache.flow(x) for x in out]
        for f in flows:
            f.ClearField("uuid")  # salted per store
        results.append(flows)
        await node.close()
    assert results[0] and results[0] == results[1]


async def test_restart_keeps_flows_seqs_and_uuids(tmp_path):
    node = Node(str(tmp_path))
    node.feed(0, 700)
    before = await node.read(ReadRequest(first=True, number=10))
    uuids = [node.wire_cache.flow(x).uuid for x in before]
    await node.close()  # a clean stop writes what is pending
    again = Node(str(tmp_path))
    assert again.ring.next_seq == 700  # the sequence goes on
    again.feed(700, 100)
    out = await again.read(ReadRequest(first=True, number=800))
    assert seqs(out) == list(range(800))
    assert [again.wire_cache.flow(x).uuid for x in out[:10]] == uuids
    assert len({again.wire_cache.flow(x).uuid for x in out}) == 800
    await again.close()


async def test_retention_by_size_removes_oldest_and_reports_them(tmp_path):
    node = Node(str(tmp_path), max_bytes=200_000)
    store = node.history.store
    store.segment_bytes = 20_000
    for k in range(30):
        node.feed(k * 1000, 1000, batch=250)
        await node.flush()
    assert store.total_bytes() <= 200_000 + store.segment_bytes
    assert store.stats.removed_flows > 0
    first = store.first_seq
    assert first is not None and first > 0
    out = await node.read(ReadRequest(since_ns=BASE_NS))
    assert isinstance(out[0], Lost) and out[0].source == LOST_SOURCE_RING
    assert out[0].count == store.stats.removed_flows == first  # every seq below was a flow
    assert seqs(out)[0] == first and seqs(out)[-1] == 29_999
    # a window inside what is kept has no notice
    out = await node.read(ReadRequest(since_ns=BASE_NS + (first + 10) * 10**6))
    assert not any(isinstance(x, Lost) for x in out)
    await node.close()
    # the removed spans are remembered across a restart
    again = Node(str(tmp_path), max_bytes=200_000)
    out = await again.read(ReadRequest(since_ns=BASE_NS))
    assert isinstance(out[0], Lost) and out[0].count == first
    await again.close()


async def test_retention_by_age(tmp_path):
    now = time.time_ns()
    node = Node(str(tmp_path), max_age_ns=HOUR)
    node.history.store.segment_age_ns = 10**9  # a segment per second of flow time
    node.feed(0, 300, t0=now - 3 * HOUR, step_ns=10**9)  # 5 minutes, 3 hours ago
    await node.flush()
    node.feed(300, 300, t0=now - 300 * 10**9 - 300 * 10**9, step_ns=10**9)  # the last 5 min
    await node.flush()
    store = node.history.store
    assert store.oldest_time is not None and store.oldest_time >= now - HOUR
    assert store.stats.removed_flows >= 290
    await node.close()


def test_torn_last_frame_is_cut_on_open(tmp_path):
    store = HistoryStore(str(tmp_path), 10_000_000, 10**6 * HOUR)
    store.open()
    p = wire_cache()
    for k in range(3):
        recs = records(k * 100, 100)
        for i, r in enumerate(recs):
            r.seq = k * 100 + i
        store.append(pack_batch(recs, [r.raw for r in recs], wire_encoder(p)), 100,
                     recs[0].seq, recs[-1].seq, recs[0].time_ns, recs[-1].time_ns)
    store.close()
    seg = store.segments[-1].path
    size = os.path.getsize(seg)
    last = store.frames[-1]
    with open(seg, "r+b") as f:  # a crash in the middle of the last frame
        f.truncate(last.offset + HEADER_SIZE + last.length // 2)
    again = HistoryStore(str(tmp_path), 10_000_000, 10**6 * HOUR)
    again.open()
    assert again.stats.torn_frames == 1 and again.stats.torn_flows == 100
    assert len(again.frames) == 2 and os.path.getsize(seg) == last.offset < size
    assert again.next_seq == 300  # meta remembers the seqs handed out
    for fr in again.frames:
        data = again.read_frame(fr)
        assert data is not None and len(unpack_batch(data)) == 100
    again.close()
    with open(seg, "ab") as f:  # garbage after the last frame (a torn header)
        f.write(b"WBF1\x00\x01")
    third = HistoryStore(str(tmp_path), 10_000_000, 10**6 * HOUR)
    third.open()
    assert third.stats.torn_frames == 1 and len(third.frames) == 2
    third.close()


async def test_pending_overflow_is_reported_not_silent(tmp_path):
    node = Node(str(tmp_path))
    assert node.history.writer is not None
    node.history.writer.max_pending = 400
    node.feed(0, 1000)  # the disk "cannot keep up": nothing flushed yet
    await node.flush()
    out = await node.read(ReadRequest(since_ns=BASE_NS))
    lost = sum(x.count for x in out if isinstance(x, Lost))
    assert lost == node.history.store.stats.dropped_flows > 0
    assert lost + len(seqs(out)) == 1000
    await node.close()


def test_bad_history_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="positive"):
        HistoryStore(str(tmp_path), 0, HOUR)
    first = HistoryStore(str(tmp_path / "shared"), 10**6, HOUR)
    first.open()
    with pytest.raises(ValueError, match="in use"):
        HistoryStore(str(tmp_path / "shared"), 10**6, HOUR).open()
    first.close()
    second = HistoryStore(str(tmp_path / "shared"), 10**6, HOUR)
    second.open()  # free again once the first closed
    second.close()
    (tmp_path / "meta.json").write_text('{"version": 99}')
    with pytest.raises(ValueError, match="format 99"):
        HistoryStore(str(tmp_path), 10**6, HOUR).open()


@pytest.mark.parametrize("args, msg", [
    (["--history-max-bytes", "3XB"], "--history-max-bytes: invalid size"),
    (["--history-max-bytes", "10KB"], "at least 1MiB"),
    (["--history-max-age", "1d"], "--history-max-age: invalid duration"),
    (["--export-file-max-size-mb", "0"], "must be positive"),
    (["--export-allowlist", '{"bogus": 1}'], 'no field named "bogus"'),
    (["--export-fieldmask", "time nope"], "not flow.Flow fields: nope"),
])
def test_bad_flags_are_one_line_errors(args, msg, capsys):
    from webb_agent.main import parse_args
    with pytest.raises(SystemExit) as e:
        parse_args(args)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_flags_reach_the_config():
    from webb_agent.main import parse_args
    cfg = parse_args(["--history-dir", "/tmp/h", "--history-max-bytes", "2GiB",
                      "--history-max-age", "36h", "--export-file-path", "/tmp/x.log",
                      "--export-file-compress", "--export-denylist",
                      '{"verdict":["DROPPED"]} {"source_pod":["kube-system/"]}',
                      "--export-fieldmask", "time,verdict"])
    p = cfg.persist
    assert p.history_dir == "/tmp/h" and p.history_max_bytes == 2 << 30
    assert p.history_max_age_ns == 36 * HOUR and p.export_file_compress
    assert len(p.export_denylist) == 2 and list(p.export_fieldmask.paths) == ["time", "verdict"]


async def test_l7_flows_come_back_from_history(tmp_path):
    """L7 records (no raw bytes: encoded on the loop) are stored with the L3/L4 ones
    and read back, after the ring wrapped, as the same flows."""
    from test_l7_pipeline import Conn, get, ok
    from webb_agent.pipeline.l7.tracker import L7Tracker
    from webb_agent.pipeline.record import L7Record

    from history_support import EPS

    node = Node(str(tmp_path))
    node.feed(0, 100)
    c, tracker = Conn(), L7Tracker()
    t_l7 = BASE_NS + 100 * 1_000_000
    msgs = tracker.process([c.req(get("/stored"), ts=10), c.resp(ok(code=503), ts=40)],
                           t_l7 - 10)
    recs = [L7Record(m, m.time_ns, EPS[0], EPS[1]) for m in msgs]
    ingest(node.ring, recs, node.history.on_batch)
    in_ring = [fpb.Flow.FromString(node.wire_cache.cache_wire(r)) for r in recs]
    node.feed(100, 500, t0=BASE_NS + 200 * 1_000_000)  # the 63-flow ring wraps
    await node.flush()
    out = await node.read(ReadRequest(since_ns=t_l7 - 1, until_ns=t_l7 + 100))
    got = [node.wire_cache.flow(x) for x in out if not isinstance(x, Lost)]
    l7 = [f for f in got if f.Type == fpb.L7]
    assert [f.l7.type for f in l7] == [fpb.REQUEST, fpb.RESPONSE]
    assert l7 == in_ring  # byte for byte the flows the ring served
    assert l7[1].l7.http.code == 503 and l7[1].l7.http.url == "http://server:8080/stored"
    await node.close()

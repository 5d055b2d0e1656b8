"""The agent's batched stream (webb.stream.FlowStream/GetFlowBatches) against its
GetFlows, over real gRPC on loopback, from a ring and a history store fed as ingest
feeds them: the same entries, byte for byte, in the same order."""
from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from history_support import BASE_NS, ingest, wire_cache, records
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.stream import stream_pb2 as spb
from webb.api.stream import stream_pb2_grpc
from webb_agent.api.agent_events import AgentEventLog
from webb_agent.api.flow_batches import FlowStreamService
from webb_agent.stores.history import History
from webb_agent.api.observer import NodeState, ObserverService
from webb_agent.pipeline.record import LostRecord
from webb_agent.stores.ring import Ring
from webb_agent.api.server import add_observer

HOUR = 3600 * 10**9
GET_FLOWS = "/observer.Observer/GetFlows"


def ts(ns: int) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(ns)
    return t


class Served:
    """A ring + history store behind the agent's two services on a loopback port."""

    def __init__(self, directory: str, ring_capacity: int = 63, max_entries: int = 100,
                 linger: float = 3600.0) -> None:
        self.history = History(directory, 50_000_000, 10**6 * HOUR, flush_interval=0.01)
        self.ring: Ring = Ring(ring_capacity, self.history.next_seq)
        self.wire_cache = wire_cache()
        self.history.bind(self.wire_cache)
        node = NodeState("node-h", "test", "", self.ring, lambda: 0)
        self.observer = ObserverService(node, self.wire_cache, AgentEventLog())
        self.observer.read_flows = self.history.reader  # as Persistence.serve does
        # Batches cut by count here, not after the 5 ms linger: that one cuts wherever
        # the machine happens to stall the process (a loaded run once split a history
        # read into more batches than test_history_reads_give_the_same_entries allows).
        self.batches = FlowStreamService(self.observer, max_entries=max_entries, linger=linger)
        self.writer_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.server = grpc.aio.server()
        add_observer(self.observer, self.server)
        stream_pb2_grpc.add_FlowStreamServicer_to_server(self.batches, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        # GetFlows' raw bytes as sent, to compare with the batch entries byte for byte
        self.get_flows = self.channel.unary_stream(
            GET_FLOWS, request_serializer=opb.GetFlowsRequest.SerializeToString,
            response_deserializer=lambda b: b)
        self.stream = stream_pb2_grpc.FlowStreamStub(self.channel)

    def feed(self, start: int, n: int, batch: int = 50, lost: bool = False) -> None:
        for b in range(start, start + n, batch):
            recs: list[Any] = records(b, min(batch, start + n - b))
            if lost:  # a perf buffer overrun, as ingest records it: ring only, first
                seq = self.ring.next_seq
                self.ring.write_many([LostRecord(1, 7 + b, b % 2, recs[0].time_ns)])
                self.ring._buf[seq % self.ring.capacity].seq = seq  # type: ignore[union-attr]
            ingest(self.ring, recs, self.history.on_batch)

    async def both(self, **req: Any) -> tuple[list[bytes], list[spb.FlowBatch]]:
        r = opb.GetFlowsRequest(**req)
        plain = [b async for b in self.get_flows(r, timeout=20)]
        batches = [b async for b in self.stream.GetFlowBatches(r, timeout=20)]
        return plain, batches

    async def close(self) -> None:
        await self.channel.close()
        await self.server.stop(0)
        await self.history.close(self.ring.next_seq)


def entries(batches: list[spb.FlowBatch]) -> list[bytes]:
    return [e for b in batches for e in b.responses]


def check_batch_columns(batches: list[spb.FlowBatch], max_entries: int) -> None:
    for b in batches:
        assert list(b.nodes) == ["node-h"]
        assert len(b.time_ns) == len(b.node_index) == len(b.responses) <= max_entries
        assert set(b.node_index) == {0}
        for raw, t in zip(b.responses, b.time_ns):
            r = opb.GetFlowsResponse.FromString(raw)
            assert r.time.ToNanoseconds() == t and r.node_name == "node-h"


@pytest.fixture
async def served(tmp_path):
    s = Served(str(tmp_path))
    await s.start()
    s.feed(0, 1980)  # the 63-flow ring wrapped ~30 times
    s.feed(1980, 20, batch=10, lost=True)  # two perf losses, still in the ring
    await s.history.writer.flush()  # type: ignore[union-attr]
    try:
        yield s
    finally:
        await s.close()


@pytest.mark.parametrize("req", [
    {},  # the ring as it stands
    {"number": 20},
    {"first": True, "number": 700},  # from the store into the ring
    {"since": ts(BASE_NS + 100 * 10**6), "until": ts(BASE_NS + 1990 * 10**6)},
    {"number": 1500},  # the newest 1500: mostly from the store
    {"since": ts(BASE_NS), "whitelist": [fpb.FlowFilter(source_pod=["demo/client"])]},
    {"number": 300, "whitelist": [fpb.FlowFilter(verdict=[fpb.DROPPED])],
     "blacklist": [fpb.FlowFilter(protocol=["udp"])]},
    {"since": ts(BASE_NS), "field_mask": field_mask_pb2.FieldMask(paths=["source.pod_name",
                                                                         "verdict"])},
])
async def test_history_reads_give_the_same_entries(served, req):
    plain, batches = await served.both(**req)
    assert plain and entries(batches) == plain
    check_batch_columns(batches, 100)
    # full batches, not one per entry
    assert [len(b.responses) for b in batches[:-1]] == [100] * (len(batches) - 1)


async def test_lost_events_are_entries_in_order(served):
    plain, batches = await served.both(since=ts(BASE_NS))
    got = [opb.GetFlowsResponse.FromString(e) for e in entries(batches)]
    lost = [r.lost_events for r in got if r.HasField("lost_events")]
    assert entries(batches) == plain
    assert [(x.source, x.num_events_lost, x.cpu.value) for x in lost] == [
        (fpb.PERF_EVENT_RING_BUFFER, 1987, 0), (fpb.PERF_EVENT_RING_BUFFER, 1997, 0)]


async def test_bad_requests_are_invalid_argument(served):
    for req in (opb.GetFlowsRequest(first=True, follow=True),
                opb.GetFlowsRequest(field_mask=field_mask_pb2.FieldMask(paths=["nope"]))):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in served.stream.GetFlowBatches(req, timeout=5):
                pass
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_follow_sends_live_flows_at_once_in_the_same_order(served):
    """A follower gets a light trickle without waiting for a full batch, and the
    same entries as a GetFlows follower."""
    req = opb.GetFlowsRequest(follow=True, since=ts(BASE_NS + 1900 * 10**6))
    plain_call = served.get_flows(req, timeout=20)
    batch_call = served.stream.GetFlowBatches(req, timeout=20)
    plain: list[bytes] = []
    got: list[spb.FlowBatch] = []
    want = 102 + 3 + 60  # history since 1900 (2 lost events), 3 single flows, a burst

    async def read_plain() -> None:
        async for b in plain_call:
            plain.append(b)
            if len(plain) == want:
                return

    async def read_batches() -> None:
        async for b in batch_call:
            got.append(b)
            if len(entries(got)) >= want:
                return
    tasks = [asyncio.create_task(read_plain()), asyncio.create_task(read_batches())]

    async def until(pred: Any) -> None:
        for _ in range(500):  # bounded: 5 s
            if pred():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("timed out")
    await until(lambda: len(plain) >= 102 and len(entries(got)) >= 102)
    for i in range(3):  # one flow at a time: each leaves in its own batch at once
        served.feed(2000 + i, 1)
        await until(lambda: len(entries(got)) >= 103 + i)
        assert len(got[-1].responses) == 1
    served.feed(2003, 60, batch=60)  # what one ingest drain writes (the ring holds 63)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert entries(got) == plain
    assert len(got[-1].responses) == 60  # a burst rides in one batch
    check_batch_columns(got, 100)
    plain_call.cancel()
    batch_call.cancel()


@pytest.mark.parametrize("wl", [
    [fpb.FlowFilter(source_pod=["demo/client"])],
    [fpb.FlowFilter(source_pod=["shop/"], destination_port=["80"])],
    [fpb.FlowFilter(destination_pod=["demo/server-1", "shop/db"])],
    [fpb.FlowFilter(source_pod=["demo/"], destination_pod=["demo/"]),
     fpb.FlowFilter(destination_pod=["shop/db-0"])],
    [fpb.FlowFilter(source_pod=["demo/client"]), fpb.FlowFilter(verdict=[fpb.DROPPED])],
    [fpb.FlowFilter(source_pod=["client"])],  # the default namespace: nothing here
])
def test_the_pod_prefilter_never_changes_an_answer(wl):
    """flow_matcher skips building flows whose endpoints cannot pass the whitelist's
    pod filters: on ring records and on records read back from the store, it answers
    exactly as the filter on the built flow."""
    from webb.filters import build_filter
    from webb_agent.stores.history.batch import pack_batch, unpack_batch
    from webb_agent.stores.history.encoding import wire_encoder
    from webb_agent.api.observer import flow_matcher

    p = wire_cache()
    recs = records(0, 600)
    for i, r in enumerate(recs):
        r.seq = i
    stored = unpack_batch(pack_batch(recs, [r.raw for r in recs], wire_encoder(p)))
    pred = build_filter(wl, [fpb.FlowFilter(protocol=["icmp"])])
    match = flow_matcher(p, wl, pred)
    for batch in (recs, stored):
        want = [pred(p.flow(r)) for r in batch]
        assert [match(r) for r in batch] == want
    assert any(want) or wl[0].source_pod == ["client"]

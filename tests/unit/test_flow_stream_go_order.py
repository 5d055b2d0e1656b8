"""webb.flow_follow.FlowStream against a Hubble server written in Go (a Cilium agent, a
Hubble Relay): protobuf-go writes a message's oneof fields last ("to preserve
compatibility with historic wire output"), so its GetFlowsResponse starts with
node_name (1000) and time (1001), not with the flow / node_status / lost_events oneof.
The readers of Batch.raw (the exporter, the UI, the follower's admission) go by the
first byte; FlowStream must hand them the oneof first, or they drop every entry.

The server here is a real gRPC server (in process) that answers GetFlows with bytes
laid out as protobuf-go lays them out, and has no webb.stream.FlowStream."""
from __future__ import annotations

import contextlib

import grpc

from support import free_port
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.flow_follow import TAG_FLOW, TAG_LOST, TAG_NODE_STATUS, FlowStream, ns_ts
from webb_metrics.flow_source import FlowSource, FlowSourceConfig

T0 = 1_700_000_000_000_000_000


def go_order(resp: opb.GetFlowsResponse) -> bytes:
    """resp's encoding by protobuf-go: fields outside the oneof first, then the oneof."""
    head = opb.GetFlowsResponse(node_name=resp.node_name, time=resp.time)
    body = opb.GetFlowsResponse()
    body.CopyFrom(resp)
    body.ClearField("node_name")
    body.ClearField("time")
    return head.SerializeToString() + body.SerializeToString()


def responses() -> list[opb.GetFlowsResponse]:
    out = []
    for i in range(3):
        f = fpb.Flow(uuid=f"00000000-0000-0000-0000-00000000000{i}", node_name="k8s-1",
                     verdict=fpb.FORWARDED)
        f.time.CopyFrom(ns_ts(T0 + i))
        out.append(opb.GetFlowsResponse(flow=f, node_name="k8s-1", time=f.time))
    lost = opb.GetFlowsResponse(node_name="k8s-1", time=ns_ts(T0 + 5))
    lost.lost_events.source = fpb.HUBBLE_RING_BUFFER
    lost.lost_events.num_events_lost = 7
    status = opb.GetFlowsResponse(time=ns_ts(T0 + 6))
    status.node_status.node_names.append("k8s-1")
    return [*out, lost, status]


async def go_server(sent: list[bytes]) -> tuple[grpc.aio.Server, str]:
    async def get_flows(request, context):
        for raw in sent:
            yield raw  # bytes as they are: no serializer

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("observer.Observer", {
        "GetFlows": grpc.unary_stream_rpc_method_handler(
            get_flows, request_deserializer=opb.GetFlowsRequest.FromString,
            response_serializer=None)}),))
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_go_encoded_answers_reach_readers_with_the_oneof_first():
    want = responses()
    sent = [go_order(r) for r in want]
    assert all(raw[0] not in (TAG_FLOW, TAG_NODE_STATUS, TAG_LOST) for raw in sent)
    assert [opb.GetFlowsResponse.FromString(raw) for raw in sent] == want
    server, address = await go_server(sent)
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            stream = FlowStream(ch)
            batches = []
            async with contextlib.aclosing(stream.read(opb.GetFlowsRequest())) as answer:
                async for b in answer:
                    batches.append(b)
            assert stream.mode == "getflows"
    finally:
        await server.stop(0)
    raws = [r for b in batches for r in b.raw]
    assert [opb.GetFlowsResponse.FromString(r) for r in raws] == want
    assert [r[0] for r in raws] == [TAG_FLOW] * 3 + [TAG_LOST, TAG_NODE_STATUS]
    assert [t for b in batches for t in b.time_ns] == [T0, T0 + 1, T0 + 2, T0 + 5, T0 + 6]

    # The exporter's source, which counts encoded flows by their first byte.
    flows: list = []
    lost: list = []
    source = FlowSource(FlowSourceConfig(address), flows.extend, lost.append, encoded=True)
    for b in batches:
        source.handle(b)
    assert [opb.GetFlowsResponse.FromString(r).flow.uuid for r in flows] == \
        [r.flow.uuid for r in want[:3]]
    assert [e.num_events_lost for e in lost] == [7]

"""webb.protojson: Hubble's JSON, byte for byte.

The expected strings are Hubble's own: the `jsonpb` cases of Hubble's printer tests
(cilium/cilium hubble/pkg/printer/printer_test.go, TestPrinter_WriteProtoFlow, at
commit 1449d71d2b31375d44f07bd33261eba398b452f6; the Kafka case from the same file
in an earlier revision, as kept in DataDog/cilium@42b6758a02951ef4875e906d17f7afc5e3c46ee2).
`hubble observe -o json` prints a GetFlowsResponse exactly like that (protojson with
proto names through Go's json.Encoder), and Hubble's exporter writes ExportEvents the
same way. The flows below are built field for field like the Go test's."""
from __future__ import annotations

from google.protobuf import json_format, wrappers_pb2

from history_support import wire_cache, records
from webb import protojson
from webb.api.admin import admin_pb2 as apb
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb

MESSAGE_TYPE_DROP = 1  # Cilium's monitorAPI.MessageTypeDrop


def hubble_test_flow() -> fpb.Flow:
    """printer_test.go's `f`."""
    f = fpb.Flow(Type=fpb.L3_L4, node_name="k8s1", verdict=fpb.DROPPED,
                 IP=fpb.IP(source="1.1.1.1", destination="2.2.2.2"),
                 source=fpb.Endpoint(identity=4), destination=fpb.Endpoint(identity=12345),
                 l4=fpb.Layer4(TCP=fpb.TCP(source_port=31793, destination_port=8080)),
                 event_type=fpb.CiliumEventType(type=MESSAGE_TYPE_DROP, sub_type=133),
                 Summary="TCP Flags: SYN", is_reply=wrappers_pb2.BoolValue(value=False))
    f.time.seconds, f.time.nanos = 1234, 567800000
    return f


def response(f: fpb.Flow) -> opb.GetFlowsResponse:
    return opb.GetFlowsResponse(flow=f)


def test_hubble_jsonpb_flow():
    want = ('{"flow":{"time":"1970-01-01T00:20:34.567800Z",'
            '"verdict":"DROPPED",'
            '"IP":{"source":"1.1.1.1","destination":"2.2.2.2"},'
            '"l4":{"TCP":{"source_port":31793,"destination_port":8080}},'
            '"source":{"identity":4},"destination":{"identity":12345},'
            '"Type":"L3_L4","node_name":"k8s1",'
            '"event_type":{"type":1,"sub_type":133},'
            '"is_reply":false,"Summary":"TCP Flags: SYN"}}')
    assert protojson.message_json(response(hubble_test_flow())) == want
    assert protojson.line(response(hubble_test_flow())) == (want + "\n").encode()


def test_hubble_jsonpb_flow_with_ip_trace_id():
    f = hubble_test_flow()
    f.ip_trace_id.CopyFrom(fpb.IPTraceID(ip_option_type=136, trace_id=1234))
    assert protojson.message_json(response(f)) == (
        '{"flow":{"time":"1970-01-01T00:20:34.567800Z",'
        '"verdict":"DROPPED",'
        '"IP":{"source":"1.1.1.1","destination":"2.2.2.2"},'
        '"l4":{"TCP":{"source_port":31793,"destination_port":8080}},'
        '"source":{"identity":4},"destination":{"identity":12345},'
        '"Type":"L3_L4","node_name":"k8s1",'
        '"event_type":{"type":1,"sub_type":133},'
        '"ip_trace_id":{"trace_id":"1234","ip_option_type":136},'
        '"is_reply":false,"Summary":"TCP Flags: SYN"}}')


def test_hubble_jsonpb_terminal_escapes():
    f = hubble_test_flow()
    f.Type = fpb.L7
    f.l7.type = fpb.REQUEST
    f.l7.latency_ns = 10
    f.l7.kafka.api_key = "1234"
    f.l7.kafka.correlation_id = 1
    f.l7.kafka.topic = "my-topic\x1b[30mblack\x1b[0m\x1b\r"
    f.Summary = "Kafka request 1234 correlation id 1 topic 'my-topic[^[30mblack[^[0m[^\\r'"
    assert protojson.message_json(response(f)) == (
        '{"flow":{"time":"1970-01-01T00:20:34.567800Z",'
        '"verdict":"DROPPED",'
        '"IP":{"source":"1.1.1.1","destination":"2.2.2.2"},'
        '"l4":{"TCP":{"source_port":31793,"destination_port":8080}},'
        '"source":{"identity":4},"destination":{"identity":12345},'
        '"Type":"L7","node_name":"k8s1",'
        '"l7":{"type":"REQUEST","latency_ns":"10","kafka":{"api_key":"1234","correlation_id":1,'
        '"topic":"my-topic\\u001b[30mblack\\u001b[0m\\u001b\\r"}},'
        '"event_type":{"type":1,"sub_type":133},'
        '"is_reply":false,"Summary":"Kafka request 1234 correlation id 1 topic '
        "'my-topic[^[30mblack[^[0m[^\\\\r'\"}}")


def test_same_values_as_json_format_on_varied_flows():
    """Every mapping rule agrees with the reference implementation; the order is the
    declaration order (json_format's dicts follow it too)."""
    p = wire_cache()
    for rec in records(0, 200):
        rec.seq = 7
        flow = p.flow(rec)
        ev = opb.ExportEvent(flow=flow, node_name="n", time=flow.time)
        ref = json_format.MessageToDict(ev, preserving_proto_field_name=True)
        got = protojson.to_dict(ev)
        assert got == ref
        assert list(got["flow"]) == [fd.name for fd in fpb.Flow.DESCRIPTOR.fields
                                     if fd.name in got["flow"]]
    lost = opb.ExportEvent(lost_events=fpb.LostEvent(source=2, num_events_lost=2**40))
    assert protojson.message_json(lost) == (
        '{"lost_events":{"source":"OBSERVER_EVENTS_QUEUE","num_events_lost":"1099511627776"}}')


def test_timestamps_doubles_maps_and_go_escaping():
    assert protojson.rfc3339(0, 0) == "1970-01-01T00:00:00Z"
    assert protojson.rfc3339(1, 5_000_000) == "1970-01-01T00:00:01.005Z"
    assert protojson.rfc3339(1, 5_000) == "1970-01-01T00:00:01.000005Z"
    assert protojson.rfc3339(1, 5) == "1970-01-01T00:00:01.000000005Z"
    # Go prints an integral double without ".0"
    assert protojson.message_json(opb.ServerStatusResponse(num_flows=3, flows_rate=2.0)) == (
        '{"num_flows":"3","flows_rate":2}')
    assert protojson.message_json(opb.ServerStatusResponse(flows_rate=12.345)) == (
        '{"flows_rate":12.345}')
    # map entries sorted by key, 64-bit values as strings
    st = apb.AgentStatus(node_name="n1")
    for k, v in (("l7.http_requests", 7), ("datapath.events", 2**40), ("datapath.lost", 0)):
        st.counters[k] = v
    assert protojson.message_json(st) == (
        '{"node_name":"n1","counters":{"datapath.events":"1099511627776",'
        '"datapath.lost":"0","l7.http_requests":"7"}}')
    assert protojson.to_dict(st) == json_format.MessageToDict(st, preserving_proto_field_name=True)
    # json.Encoder's HTML escaping; non-ASCII stays UTF-8
    f = fpb.Flow(Summary="<a&b> é\u2028")
    assert protojson.message_json(f) == '{"Summary":"\\u003ca\\u0026b\\u003e é\\u2028"}'
    assert protojson.message_json(fpb.Flow()) == "{}"
    assert protojson.dumps_indent([]) == "null"

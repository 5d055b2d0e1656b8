"""Exact rendering of hand-built flows and answers in every output format: Hubble's
compact, dict, table and jsonpb, cilium monitor lines, status, list, identity and
endpoint tables."""
from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import BoolValue, Int32Value, UInt32Value

from webb.api.admin import admin_pb2 as apb
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.relay import relay_pb2 as rpb
from webb import protojson
from webb_cli import endpoint, identity, list_cmd
from webb_cli.formats.monitor_line import flow_hash, monitor_line
from webb_cli.formats.printer import PrintOptions, Printer


def ts(iso: str, nanos: int = 0) -> Timestamp:
    dt = datetime.fromisoformat(iso).replace(tzinfo=timezone.utc)
    return Timestamp(seconds=int(dt.timestamp()), nanos=nanos)


# Hubble's own printer test flow.
HUBBLE_F = fpb.Flow(
    time=Timestamp(seconds=1234, nanos=567800000), Type=fpb.L3_L4, node_name="k8s1",
    verdict=fpb.DROPPED, IP=fpb.IP(source="1.1.1.1", destination="2.2.2.2"),
    source=fpb.Endpoint(identity=4), destination=fpb.Endpoint(identity=12345),
    l4=fpb.Layer4(TCP=fpb.TCP(source_port=31793, destination_port=8080)),
    event_type=fpb.CiliumEventType(type=1, sub_type=133), Summary="TCP Flags: SYN",
    is_reply=BoolValue(value=False))


def ep(ns: str, pod: str, identity: int, ep_id: int = 0, app: str = "") -> fpb.Endpoint:
    labels = [f"k8s:app={app or pod.split('-')[0]}", f"k8s:io.kubernetes.pod.namespace={ns}"]
    return fpb.Endpoint(ID=ep_id, identity=identity, namespace=ns, pod_name=pod, labels=labels)


def bookinfo_syn(**kw) -> fpb.Flow:
    f = fpb.Flow(
        time=ts("2024-01-08T03:03:17", 123_456_789), verdict=fpb.FORWARDED, Type=fpb.L3_L4,
        node_name="node-1",
        IP=fpb.IP(source="10.42.0.220", destination="10.42.0.231", ipVersion=fpb.IPv4),
        l4=fpb.Layer4(TCP=fpb.TCP(source_port=51234, destination_port=9080,
                                  flags=fpb.TCPFlags(SYN=True))),
        source=ep("bookinfo", "productpage-v1-x", 23407, 2105, "productpage"),
        destination=ep("bookinfo", "reviews-v3-y", 15745, 148, "reviews"),
        event_type=fpb.CiliumEventType(type=4, sub_type=0),
        trace_observation_point=fpb.TO_ENDPOINT, traffic_direction=fpb.INGRESS,
        is_reply=BoolValue(value=False), Summary="TCP Flags: SYN")
    for k, v in kw.items():
        if isinstance(v, (fpb.Endpoint, fpb.IP, fpb.Layer4, fpb.CiliumEventType, BoolValue,
                          fpb.Layer7, Timestamp, fpb.Service, fpb.NetworkInterface)):
            getattr(f, k).CopyFrom(v)
        else:
            setattr(f, k, v)
    return f


def render(flows, output="compact", **opts) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    p = Printer(PrintOptions(output=output, **opts), out, err)
    for f in flows:
        if isinstance(f, fpb.Flow):
            f = opb.GetFlowsResponse(flow=f)
        p.write_response(f)
    p.close()
    return out.getvalue(), err.getvalue()


def one(f, output="compact", **opts) -> str:
    return render([f], output, **opts)[0]


# -- Hubble's printer test, case by case ---------------------------------------------------

def test_hubble_table():
    assert one(HUBBLE_F, "table") == (
        "TIMESTAMP             SOURCE          DESTINATION    TYPE            VERDICT   SUMMARY\n"
        "Jan  1 00:20:34.567   1.1.1.1:31793   2.2.2.2:8080   Policy denied   DROPPED   TCP Flags: SYN\n")
    assert one(HUBBLE_F, "table", node_name=True) == (
        "TIMESTAMP             NODE   SOURCE          DESTINATION    TYPE            VERDICT   SUMMARY\n"
        "Jan  1 00:20:34.567   k8s1   1.1.1.1:31793   2.2.2.2:8080   Policy denied   DROPPED   TCP Flags: SYN\n")


def test_hubble_compact():
    assert one(HUBBLE_F) == ("Jan  1 00:20:34.567: 1.1.1.1:31793 (health) -> 2.2.2.2:8080 (ID:12345) "
                             "Policy denied DROPPED (TCP Flags: SYN)\n")
    assert one(HUBBLE_F, node_name=True) == (
        "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) -> 2.2.2.2:8080 (ID:12345) "
        "Policy denied DROPPED (TCP Flags: SYN)\n")
    traced = fpb.Flow()
    traced.CopyFrom(HUBBLE_F)
    traced.ip_trace_id.trace_id = 1234
    assert one(traced, node_name=True) == (
        "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) -> 2.2.2.2:8080 (ID:12345) "
        "Policy denied DROPPED (IP Trace ID: 1234; TCP Flags: SYN)\n")


def test_hubble_compact_reply_and_unknown_direction():
    reply = fpb.Flow()
    reply.CopyFrom(HUBBLE_F)
    reply.is_reply.value = True
    assert one(reply, node_name=True) == (
        "Jan  1 00:20:34.567 [k8s1]: 2.2.2.2:8080 (ID:12345) <- 1.1.1.1:31793 (health) "
        "Policy denied DROPPED (TCP Flags: SYN)\n")
    unknown = fpb.Flow()
    unknown.CopyFrom(HUBBLE_F)
    unknown.ClearField("is_reply")
    assert one(unknown, node_name=True) == (
        "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) "
        "Policy denied DROPPED (TCP Flags: SYN)\n")


def _policy(verdict, direction, match=0, **kw) -> fpb.Flow:
    f = fpb.Flow()
    f.CopyFrom(HUBBLE_F)
    f.event_type.CopyFrom(fpb.CiliumEventType(type=5))
    f.ClearField("is_reply")
    f.verdict, f.traffic_direction, f.policy_match_type = verdict, direction, match
    for k, v in kw.items():
        getattr(f, k).extend(v)
    return f


def test_hubble_policy_verdicts():
    mine = fpb.Policy(name="my-policy", namespace="my-policy-namespace", kind="CiliumNetworkPolicy")
    other = fpb.Policy(name="my-policy-2", kind="CiliumClusterwideNetworkPolicy")
    denied = _policy(fpb.DROPPED, fpb.EGRESS, egress_denied_by=[mine])
    assert one(denied, node_name=True) == (
        "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) "
        "policy-verdict:none EGRESS DENIED (TCP Flags: SYN)\n")
    assert one(denied, node_name=True, policy_names=True) == (
        "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) "
        "policy-verdict:none EGRESS DENIED BY my-policy (CiliumNetworkPolicy) (TCP Flags: SYN)\n")
    allowed = _policy(fpb.FORWARDED, fpb.INGRESS, 1, ingress_allowed_by=[mine, other])
    assert one(allowed, node_name=True, policy_names=True) == (
        "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) "
        "policy-verdict:L3-Only INGRESS ALLOWED BY my-policy (CiliumNetworkPolicy), my-policy-2 "
        "(CiliumClusterwideNetworkPolicy) (TCP Flags: SYN)\n")
    audited = _policy(fpb.AUDIT, fpb.EGRESS, egress_denied_by=[mine])
    assert one(audited, node_name=True, policy_names=True) == (
        "Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) "
        "policy-verdict:none EGRESS AUDITED BY my-policy (CiliumNetworkPolicy) (TCP Flags: SYN)\n")
    assert one(denied, "dict", policy_names=True) == (
        "  TIMESTAMP: Jan  1 00:20:34.567\n     SOURCE: 1.1.1.1:31793\nDESTINATION: 2.2.2.2:8080\n"
        "       TYPE: policy-verdict:none EGRESS\n    VERDICT: DENIED BY my-policy (CiliumNetworkPolicy)\n"
        "    SUMMARY: TCP Flags: SYN\n")


def test_hubble_jsonpb():
    assert one(HUBBLE_F, "jsonpb") == (
        '{"flow":{"time":"1970-01-01T00:20:34.567800Z","verdict":"DROPPED",'
        '"IP":{"source":"1.1.1.1","destination":"2.2.2.2"},'
        '"l4":{"TCP":{"source_port":31793,"destination_port":8080}},'
        '"source":{"identity":4},"destination":{"identity":12345},'
        '"Type":"L3_L4","node_name":"k8s1","event_type":{"type":1,"sub_type":133},'
        '"is_reply":false,"Summary":"TCP Flags: SYN"}}\n')
    traced = fpb.Flow()
    traced.CopyFrom(HUBBLE_F)
    traced.ip_trace_id.CopyFrom(fpb.IPTraceID(ip_option_type=136, trace_id=1234))
    assert '"event_type":{"type":1,"sub_type":133},"ip_trace_id":{"trace_id":"1234","ip_option_type":136},' \
           '"is_reply":false' in one(traced, "jsonpb")


def test_hubble_dict():
    assert one(HUBBLE_F, "dict") == (
        "  TIMESTAMP: Jan  1 00:20:34.567\n     SOURCE: 1.1.1.1:31793\nDESTINATION: 2.2.2.2:8080\n"
        "       TYPE: Policy denied\n    VERDICT: DROPPED\n    SUMMARY: TCP Flags: SYN\n")
    assert one(HUBBLE_F, "dict", node_name=True) == (
        "  TIMESTAMP: Jan  1 00:20:34.567\n       NODE: k8s1\n     SOURCE: 1.1.1.1:31793\n"
        "DESTINATION: 2.2.2.2:8080\n       TYPE: Policy denied\n    VERDICT: DROPPED\n"
        "    SUMMARY: TCP Flags: SYN\n")
    two = render([HUBBLE_F, HUBBLE_F], "dict")[0]
    assert two.count("------------\n") == 1 and two.index("------------") > 0


# -- webb's flows ------------------------------------------------------------------------

def test_bookinfo_compact_as_the_tutorial():
    assert one(bookinfo_syn()) == (
        "Jan  8 03:03:17.123: bookinfo/productpage-v1-x:51234 (ID:23407) -> "
        "bookinfo/reviews-v3-y:9080 (ID:15745) to-endpoint FORWARDED (TCP Flags: SYN)\n")
    synack = bookinfo_syn(
        source=ep("bookinfo", "reviews-v3-y", 15745, 148), destination=ep("bookinfo", "productpage-v1-x", 23407),
        IP=fpb.IP(source="10.42.0.231", destination="10.42.0.220"),
        l4=fpb.Layer4(TCP=fpb.TCP(source_port=9080, destination_port=51234,
                                  flags=fpb.TCPFlags(SYN=True, ACK=True))),
        event_type=fpb.CiliumEventType(type=4, sub_type=5), is_reply=BoolValue(value=True),
        Summary="TCP Flags: SYN, ACK")
    assert one(synack, node_name=True) == (
        "Jan  8 03:03:17.123 [node-1]: bookinfo/productpage-v1-x:51234 (ID:23407) <- "
        "bookinfo/reviews-v3-y:9080 (ID:15745) from-endpoint FORWARDED (TCP Flags: SYN, ACK)\n")


def test_numeric_services_dns_names_ipv6_icmp_ethernet():
    f = bookinfo_syn()
    assert one(f, ip_translation=False).startswith(
        "Jan  8 03:03:17.123: 10.42.0.220:51234 (ID:23407) -> 10.42.0.231:9080 (ID:15745) ")
    svc = bookinfo_syn(destination=fpb.Endpoint(identity=15745),
                       destination_service=fpb.Service(name="reviews", namespace="bookinfo"))
    assert "-> bookinfo/reviews:9080 (ID:15745)" in one(svc)
    world = bookinfo_syn(destination=fpb.Endpoint(identity=2))
    world.destination_names.extend(["api.example.com", "www.example.com"])
    assert "-> api.example.com,www.example.com:9080 (world)" in one(world)
    v6 = bookinfo_syn(IP=fpb.IP(source="fd00::1", destination="fd00::2", ipVersion=fpb.IPv6),
                      source=fpb.Endpoint(identity=0), destination=fpb.Endpoint(identity=1))
    assert "[fd00::1]:51234 (unknown) -> [fd00::2]:9080 (host)" in one(v6)
    icmp = bookinfo_syn(l4=fpb.Layer4(ICMPv4=fpb.ICMPv4(type=8)), Summary="ICMPv4 EchoRequest")
    assert ": bookinfo/productpage-v1-x (ID:23407) -> bookinfo/reviews-v3-y (ID:15745) to-endpoint " \
           "FORWARDED (ICMPv4 EchoRequest)" in one(icmp)
    arp = fpb.Flow(time=HUBBLE_F.time, ethernet=fpb.Ethernet(source="aa:bb:cc:dd:ee:01",
                                                             destination="ff:ff:ff:ff:ff:ff"),
                   verdict=fpb.FORWARDED, event_type=fpb.CiliumEventType(type=4, sub_type=3))
    assert one(arp) == ("Jan  1 00:20:34.567: aa:bb:cc:dd:ee:01 (unknown) <> ff:ff:ff:ff:ff:ff "
                        "(unknown) to-stack FORWARDED ()\n")
    assert one(fpb.Flow()) == "N/A:  (unknown) <>  (unknown) UNKNOWN VERDICT_UNKNOWN ()\n"


def test_l7_and_drop_types():
    req = bookinfo_syn(l7=fpb.Layer7(type=fpb.REQUEST, http=fpb.HTTP(method="GET", url="http://reviews:9080/reviews/0",
                                                                      protocol="HTTP/1.1")),
                       event_type=fpb.CiliumEventType(type=129), Type=fpb.L7,
                       Summary="HTTP/1.1 GET http://reviews:9080/reviews/0")
    assert " http-request FORWARDED (HTTP/1.1 GET http://reviews:9080/reviews/0)\n" in one(req)
    dns = bookinfo_syn(l7=fpb.Layer7(type=fpb.RESPONSE, dns=fpb.DNS(query="reviews.bookinfo.svc.",
                                                                    observation_source="proxy")))
    assert " dns-response proxy FORWARDED " in one(dns)
    drop = bookinfo_syn(verdict=fpb.DROPPED, event_type=fpb.CiliumEventType(type=1, sub_type=181),
                        drop_reason_desc=fpb.POLICY_DENY)
    assert " Policy denied by denylist DROPPED (TCP Flags: SYN)\n" in one(drop)
    unknown_reason = bookinfo_syn(verdict=fpb.DROPPED, event_type=fpb.CiliumEventType(type=1, sub_type=77))
    assert " 77 DROPPED " in one(unknown_reason)
    capture = bookinfo_syn(event_type=fpb.CiliumEventType(type=3), debug_capture_point=fpb.DBG_CAPTURE_DELIVERY)
    assert " DBG_CAPTURE_DELIVERY FORWARDED " in one(capture)


def row(cells, widths) -> str:
    """A Go tab writer row: every cell but the last padded to its column width."""
    return "".join(c.ljust(w) for c, w in zip(cells, widths)) + cells[-1]


def test_table_aligns_columns_over_many_flows():
    out = render([bookinfo_syn(), HUBBLE_F], "table")[0]
    # widest cell + 3 in every column but the last
    widths = [19 + 3, len("bookinfo/productpage-v1-x:51234") + 3, len("bookinfo/reviews-v3-y:9080") + 3,
              len("Policy denied") + 3, len("FORWARDED") + 3]
    assert out.splitlines() == [
        row(["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"], widths),
        row(["Jan  8 03:03:17.123", "bookinfo/productpage-v1-x:51234", "bookinfo/reviews-v3-y:9080",
             "to-endpoint", "FORWARDED", "TCP Flags: SYN"], widths),
        row(["Jan  1 00:20:34.567", "1.1.1.1:31793", "2.2.2.2:8080", "Policy denied", "DROPPED",
             "TCP Flags: SYN"], widths)]
    assert out.endswith("\n")


def test_colors_only_when_asked():
    colored = one(bookinfo_syn(), color=True)
    assert colored == (
        "Jan  8 03:03:17.123: \x1b[36mbookinfo/productpage-v1-x:\x1b[33m51234\x1b[0m\x1b[0m "
        "\x1b[35m(ID:23407)\x1b[0m -> \x1b[36mbookinfo/reviews-v3-y:\x1b[33m9080\x1b[0m\x1b[0m "
        "\x1b[35m(ID:15745)\x1b[0m to-endpoint \x1b[32mFORWARDED\x1b[0m (TCP Flags: SYN)\n")
    assert "\x1b[31mDROPPED\x1b[0m" in one(HUBBLE_F, color=True)
    assert "\x1b" not in one(HUBBLE_F, "table", color=True)  # tables are never colored


def test_terminal_escapes_in_flows_are_neutralised():
    evil = bookinfo_syn(Summary="\x1b[2Jgotcha", source=ep("bookinfo", "pod\x1b]0;x\x07", 1))
    out = one(evil)
    assert "\x1b" not in out and "\x07" not in out
    assert "^[[2Jgotcha" in out
    assert "\x9b" not in one(bookinfo_syn(Summary="\x9b31m"))


@pytest.mark.parametrize("fmt,text", [
    ("StampMilli", "Jan  8 03:03:17.123"),
    ("YearMonthDay", "2024-01-08"),
    ("YearMonthDayHour", "2024-01-08T03Z"),
    ("YearMonthDayHourMinute", "2024-01-08T03:03Z"),
    ("RFC3339", "2024-01-08T03:03:17Z"),
    ("RFC3339Milli", "2024-01-08T03:03:17.123Z"),
    ("RFC3339Micro", "2024-01-08T03:03:17.123456Z"),
    ("RFC3339Nano", "2024-01-08T03:03:17.123456789Z"),
    ("RFC1123Z", "Mon, 08 Jan 2024 03:03:17 +0000"),
])
def test_time_formats(fmt, text):
    assert one(bookinfo_syn(), time_format=fmt).startswith(text + ": ")
    assert one(bookinfo_syn(), "dict", time_format=fmt).startswith(f"  TIMESTAMP: {text}\n")


def test_time_format_trims_fraction_zeros():
    f = bookinfo_syn(time=ts("2024-01-08T03:03:17", 120_000_000))
    assert one(f, time_format="RFC3339Nano").startswith("2024-01-08T03:03:17.12Z: ")
    f = bookinfo_syn(time=ts("2024-01-08T03:03:17", 0))
    assert one(f, time_format="RFC3339Milli").startswith("2024-01-08T03:03:17Z: ")


def test_jsonpb_of_webb_flow_keeps_proto_names_and_declaration_order():
    f = bookinfo_syn(uuid="u-1")
    res = opb.GetFlowsResponse(flow=f, node_name="node-1", time=f.time)
    line = one(res, "jsonpb")
    doc = json.loads(line)
    assert list(doc) == ["flow", "node_name", "time"]
    assert list(doc["flow"])[:4] == ["time", "uuid", "verdict", "IP"]
    assert doc["flow"]["trace_observation_point"] == "TO_ENDPOINT"
    assert doc["flow"]["is_reply"] is False and doc["flow"]["Summary"] == "TCP Flags: SYN"
    assert doc["flow"]["l4"]["TCP"]["flags"] == {"SYN": True}
    assert doc["flow"]["source"]["pod_name"] == "productpage-v1-x"
    assert doc["time"] == "2024-01-08T03:03:17.123456789Z"
    assert line.endswith("}\n") and "\n" not in line[:-1]


def test_lost_events_and_node_status():
    lost = opb.GetFlowsResponse(lost_events=fpb.LostEvent(source=fpb.HUBBLE_RING_BUFFER,
                                                          num_events_lost=42))
    cpu_lost = opb.GetFlowsResponse(lost_events=fpb.LostEvent(
        source=fpb.PERF_EVENT_RING_BUFFER, num_events_lost=7, cpu=Int32Value(value=1)))
    assert render([lost, cpu_lost])[0] == ("EVENTS LOST: HUBBLE_RING_BUFFER CPU(0) 42\n"
                                          "EVENTS LOST: PERF_EVENT_RING_BUFFER CPU(1) 7\n")
    widths = [22, len("HUBBLE_RING_BUFFER") + 3, len("2.2.2.2:8080") + 3, len("Policy denied") + 3,
              len("DROPPED") + 3]
    assert render([HUBBLE_F, lost], "table")[0].splitlines()[2] == row(
        ["", "HUBBLE_RING_BUFFER", "", "EVENTS LOST", "", "CPU(0) - 42"], widths)
    assert render([lost], "dict")[0] == ("  TIMESTAMP: \n     SOURCE: HUBBLE_RING_BUFFER\n"
                                         "       TYPE: EVENTS LOST\n    VERDICT: \n"
                                         "    SUMMARY: CPU(0) - 42\n")
    unavailable = opb.GetFlowsResponse(
        node_status=rpb.NodeStatusEvent(state_change=rpb.NODE_UNAVAILABLE, node_names=["n2", "n3"]),
        node_name="relay", time=HUBBLE_F.time)
    connected = opb.GetFlowsResponse(
        node_status=rpb.NodeStatusEvent(state_change=rpb.NODE_CONNECTED, node_names=["n1"]),
        node_name="relay", time=HUBBLE_F.time)
    error = opb.GetFlowsResponse(
        node_status=rpb.NodeStatusEvent(state_change=rpb.NODE_ERROR, node_names=["n4"],
                                        message="boom"), node_name="relay", time=HUBBLE_F.time)
    out, err = render([connected, unavailable, error])
    assert out == ""
    assert err == ("Jan  1 00:20:34.567 [relay]: 2 nodes are unavailable: n2, n3\n"
                   'Jan  1 00:20:34.567 [relay]: Error "boom" on 1 nodes: n4\n')
    assert render([connected], debug=True)[1] == (
        "Jan  1 00:20:34.567 [relay]: Receiving flows from 1 nodes: n1\n")
    assert render([unavailable], silent_errors=True) == ("", "")
    assert json.loads(render([unavailable], "jsonpb")[1])["node_status"]["node_names"] == ["n2", "n3"]
    many = opb.GetFlowsResponse(node_status=rpb.NodeStatusEvent(
        state_change=rpb.NODE_UNAVAILABLE, node_names=[f"node-{i:02d}" for i in range(10)]))
    assert "node-00, node-01, node-02, node-03, node-04 (and 5 more)" in render([many])[1]


# -- status --------------------------------------------------------------------------------

STATUS = opb.ServerStatusResponse(
    num_flows=4095, max_flows=4095, seen_flows=123456, uptime_ns=3_723_500_000_000,
    num_connected_nodes=UInt32Value(value=2), num_unavailable_nodes=UInt32Value(value=1),
    unavailable_nodes=["node-3"], version="0.1.0+webb-relay", flows_rate=12.345)


def status_text(st, output):
    out = io.StringIO()
    p = Printer(PrintOptions(output=output), out, io.StringIO())
    p.write_server_status(st)
    p.close()
    return out.getvalue()


def test_status_formats():
    assert status_text(STATUS, "compact") == (
        "Current/Max Flows: 4,095/4,095 (100.00%)\nFlows/s: 12.35\nConnected Nodes: 2/3\n"
        "Unavailable Nodes: 1\n  - node-3\n")
    assert status_text(STATUS, "dict") == (
        "          NUM FLOWS: 4,095\n          MAX FLOWS: 4,095\n         SEEN FLOWS: 123,456\n"
        "   FLOWS PER SECOND: 12.35\n             UPTIME: 1h2m3.5s\nNUM CONNECTED NODES: 2\n"
        " NUM UNAVAIL. NODES: 1\n            VERSION: 0.1.0+webb-relay\n")
    assert status_text(STATUS, "table") == (
        "NUM FLOWS   MAX FLOWS   SEEN FLOWS   FLOWS PER SECOND   UPTIME     NUM CONNECTED NODES   "
        "NUM UNAVAILABLE NODES   VERSION\n"
        "4,095       4,095       123,456      12.35              1h2m3.5s   2                     "
        "1                       0.1.0+webb-relay\n")
    doc = json.loads(status_text(STATUS, "jsonpb"))
    assert doc["num_flows"] == "4095" and doc["num_connected_nodes"] == 2


def test_status_agent_without_rate_or_unavailable():
    st = opb.ServerStatusResponse(num_flows=10, max_flows=4095, seen_flows=50, uptime_ns=10**10)
    assert status_text(st, "compact") == "Current/Max Flows: 10/4,095 (0.24%)\nFlows/s: 5.00\n"
    assert "NUM CONNECTED NODES: N/A" in status_text(st, "dict")


# -- list ----------------------------------------------------------------------------------

NODES = [
    opb.Node(name="node-1", version="0.1.0+webb", address="10.0.0.1:4244", state=rpb.NODE_CONNECTED,
             uptime_ns=3_600_400_000_000, num_flows=1000, max_flows=4095, seen_flows=72000,
             tls=opb.TLS(enabled=True, server_name="node-1.webb")),
    opb.Node(name="node-2", address="10.0.0.2:4244", state=rpb.NODE_UNAVAILABLE),
]


def test_list_nodes_tables():
    assert list_cmd.nodes_table(NODES, wide=False) == (
        "NAME     STATUS        AGE      FLOWS/S   CURRENT/MAX-FLOWS\n"
        "node-1   Connected     1h0m0s   20.00     1000/4095 ( 24.42%)\n"
        "node-2   Unavailable   N/A      N/A       N/A\n")
    assert list_cmd.nodes_table(NODES, wide=True).splitlines()[1].endswith(
        "0.1.0+webb   10.0.0.1:4244   Enabled")
    assert list_cmd.nodes_table(NODES, wide=True).splitlines()[2].endswith(
        "N/A          10.0.0.2:4244   N/A")


def test_list_namespaces_table_and_json():
    nss = [opb.Namespace(namespace="bookinfo", cluster="default"), opb.Namespace(namespace="kube-system")]
    assert list_cmd.namespaces_table(nss, False) == "NAMESPACE\nbookinfo\nkube-system\n"
    assert list_cmd.namespaces_table(nss, True) == "NAMESPACE\tCLUSTER\nbookinfo\tdefault\nkube-system\n".replace(
        "NAMESPACE\tCLUSTER\nbookinfo\tdefault", "NAMESPACE   CLUSTER\nbookinfo    default")
    assert protojson.dumps_indent([protojson.to_dict(n) for n in nss]) == (
        '[\n  {\n    "cluster": "default",\n    "namespace": "bookinfo"\n  },\n'
        '  {\n    "namespace": "kube-system"\n  }\n]')
    assert protojson.dumps_indent([]) == "null"


# -- identity and endpoint ---------------------------------------------------------------

IDENTS = [apb.Identity(id=2, labels=["reserved:world"]),
          apb.Identity(id=15745, labels=["k8s:io.kubernetes.pod.namespace=bookinfo", "k8s:app=reviews"])]


def test_identity_tables():
    assert identity.identities_table(IDENTS) == (
        "ID      LABELS\n"
        "2       reserved:world\n"
        "15745   k8s:app=reviews\n"
        "        k8s:io.kubernetes.pod.namespace=bookinfo\n")
    assert identity.identities_table(IDENTS[1:], {15745: 3}) == (
        "ID      LABELS                                     REFCOUNT\n"
        "15745   k8s:app=reviews                            3\n"
        "        k8s:io.kubernetes.pod.namespace=bookinfo\n")


EPS = [apb.Endpoint(id=148, name="reviews-v3-y", namespace="bookinfo", node="node-1",
                    ips=["10.42.0.231", "fd00:42::e7"], interface="lxc148", identity=15745,
                    identity_labels=["k8s:io.kubernetes.pod.namespace=bookinfo", "k8s:app=reviews"],
                    workload=apb.Workload(name="reviews-v3", kind="Deployment"),
                    service_account="bookinfo-reviews", attached=True),
       apb.Endpoint(id=149, name="ratings-v1-z", namespace="bookinfo", ips=["10.42.0.232"],
                    labels={"app": "ratings"}, identity=0, attach_error="no such interface")]


def test_endpoint_table_and_dict():
    eps = [apb.Endpoint(), apb.Endpoint()]
    for e, src in zip(eps, EPS):
        e.CopyFrom(src)
    eps[0].policy_enforcement_ingress = True
    eps[0].ingress_policies.append("bookinfo/reviews-allow")
    assert endpoint.endpoints_table(eps) == (
        "ENDPOINT   POD                     POLICY (ingress)   POLICY (egress)   IDENTITY   "
        "LABELS (source:key[=value])                IPv6          IPv4          STATUS\n"
        "                                   ENFORCEMENT        ENFORCEMENT\n"
        "148        bookinfo/reviews-v3-y   Enabled            Disabled          15745      "
        "k8s:app=reviews                            fd00:42::e7   10.42.0.231   ready\n"
        "                                                                                   "
        "k8s:io.kubernetes.pod.namespace=bookinfo\n"
        "149        bookinfo/ratings-v1-z   Disabled           Disabled          0          "
        "k8s:app=ratings                                          10.42.0.232   not-ready\n")
    assert endpoint.endpoint_dict(eps[0]) == (
        "       ENDPOINT: 148\n            POD: bookinfo/reviews-v3-y\n           NODE: node-1\n"
        "       IDENTITY: 15745\n         LABELS: k8s:app=reviews\n"
        "                 k8s:io.kubernetes.pod.namespace=bookinfo\n"
        "            IPS: 10.42.0.231, fd00:42::e7\n      INTERFACE: lxc148\n"
        "       WORKLOAD: Deployment/reviews-v3\nSERVICE ACCOUNT: bookinfo-reviews\n"
        " POLICY INGRESS: Enabled (bookinfo/reviews-allow)\n  POLICY EGRESS: Disabled\n"
        "         STATUS: ready\n")
    assert endpoint.endpoint_dict(eps[1]).endswith("         STATUS: not-ready (no such interface)\n")
    wide = endpoint.endpoints_table(eps, wide=True).splitlines()
    assert wide[0].endswith("STATUS      NODE     INTERFACE   WORKLOAD")
    assert wide[2].endswith("ready       node-1   lxc148      Deployment/reviews-v3")


@pytest.mark.parametrize("wanted,expect", [("148", 148), ("bookinfo/ratings-v1-z", 149),
                                           ("reviews-v3-y", 148), ("rat", 149),
                                           ("bookinfo/rev", 148)])
def test_find_endpoint(wanted, expect):
    assert endpoint.find_endpoint(EPS, wanted).id == expect


def test_find_endpoint_errors():
    from webb_cli.errors import CLIError
    with pytest.raises(CLIError, match="not found"):
        endpoint.find_endpoint(EPS, "nope")
    with pytest.raises(CLIError, match="ambiguous"):
        endpoint.find_endpoint(EPS, "r")


# -- cilium monitor lines ----------------------------------------------------------------

def test_monitor_drop_as_the_tutorial():
    f = bookinfo_syn(verdict=fpb.DROPPED, event_type=fpb.CiliumEventType(type=1, sub_type=133),
                     source=ep("bookinfo", "productpage-v1-x", 22047, 2105),
                     drop_reason_desc=fpb.POLICY_DENIED)
    assert monitor_line(f) == (
        f"xx drop (Policy denied) flow {flow_hash(f):#x} to endpoint 148, identity 22047->15745: "
        "10.42.0.220:51234 -> 10.42.0.231:9080 tcp SYN")
    assert flow_hash(f) == flow_hash(bookinfo_syn()) != flow_hash(bookinfo_syn(
        IP=fpb.IP(source="10.42.0.221", destination="10.42.0.231")))


def test_monitor_traces():
    f = bookinfo_syn()
    h = f"{flow_hash(f):#x}"
    assert monitor_line(f) == (f"-> endpoint 148 flow {h} identity 23407->15745 state new ifindex 0: "
                               "10.42.0.220:51234 -> 10.42.0.231:9080 tcp SYN")
    out = bookinfo_syn(event_type=fpb.CiliumEventType(type=4, sub_type=5),
                       interface=fpb.NetworkInterface(index=7, name="lxc2105"),
                       trace_reason=fpb.ESTABLISHED,
                       l4=fpb.Layer4(TCP=fpb.TCP(source_port=51234, destination_port=9080,
                                                 flags=fpb.TCPFlags(ACK=True, FIN=True))))
    assert monitor_line(out) == (f"<- endpoint 2105 flow {h} identity 23407->15745 state established "
                                 "ifindex lxc2105: 10.42.0.220:51234 -> 10.42.0.231:9080 tcp ACK, FIN")
    reply = bookinfo_syn(is_reply=BoolValue(value=True), event_type=fpb.CiliumEventType(type=4, sub_type=3),
                         source=fpb.Endpoint(identity=2), destination=fpb.Endpoint(identity=1),
                         l4=fpb.Layer4(UDP=fpb.UDP(source_port=53, destination_port=40000)))
    assert monitor_line(reply).startswith("-> stack flow ")
    assert monitor_line(reply).endswith(" identity world->host state reply ifindex 0: "
                                        "10.42.0.220:53 -> 10.42.0.231:40000 udp")
    assert " identity 2->1 " in monitor_line(reply, numeric=True)
    ping = bookinfo_syn(l4=fpb.Layer4(ICMPv4=fpb.ICMPv4(type=3, code=3)))
    assert monitor_line(ping).endswith(": 10.42.0.220 -> 10.42.0.231 DestinationUnreachable(Port)")
    v6 = bookinfo_syn(IP=fpb.IP(source="fd00::1", destination="fd00::2"),
                      l4=fpb.Layer4(ICMPv6=fpb.ICMPv6(type=128)))
    assert monitor_line(v6).endswith(": fd00::1 -> fd00::2 EchoRequest")
    v6tcp = bookinfo_syn(IP=fpb.IP(source="fd00::1", destination="fd00::2"))
    assert monitor_line(v6tcp).endswith(": [fd00::1]:51234 -> [fd00::2]:9080 tcp SYN")
    # cilium monitor's "-> proxy port N" for a packet given to the L7 proxy.
    proxied = bookinfo_syn(event_type=fpb.CiliumEventType(type=4, sub_type=1),
                           trace_observation_point=fpb.TO_PROXY, proxy_port=15001)
    assert monitor_line(proxied) == (f"-> proxy port 15001 flow {h} identity 23407->15745 state new "
                                     "ifindex 0: 10.42.0.220:51234 -> 10.42.0.231:9080 tcp SYN")
    assert one(proxied).endswith(" to-proxy FORWARDED (TCP Flags: SYN)\n")


def test_monitor_policy_verdict():
    f = bookinfo_syn(verdict=fpb.DROPPED, event_type=fpb.CiliumEventType(type=5), policy_match_type=0)
    assert monitor_line(f) == (
        f"Policy verdict log: flow {flow_hash(f):#x} local EP ID 148, remote ID 23407, proto 6, "
        "ingress, action deny, auth: disabled, match none, 10.42.0.220:51234 -> 10.42.0.231:9080 tcp SYN")
    egress = bookinfo_syn(event_type=fpb.CiliumEventType(type=5), traffic_direction=fpb.EGRESS,
                          policy_match_type=2, destination=fpb.Endpoint(identity=2))
    assert ("local EP ID 2105, remote ID world, proto 6, egress, action allow, auth: disabled, "
            "match L3-L4, ") in monitor_line(egress)


def test_monitor_l7():
    http = fpb.HTTP(code=0, method="GET", url="http://reviews:9080/reviews/0")
    req = bookinfo_syn(l7=fpb.Layer7(type=fpb.REQUEST, http=http), traffic_direction=fpb.INGRESS,
                       event_type=fpb.CiliumEventType(type=129))
    assert monitor_line(req) == (
        "<- Request http from 2105 ([k8s:app=productpage k8s:io.kubernetes.pod.namespace=bookinfo]) "
        "to 148 ([k8s:app=reviews k8s:io.kubernetes.pod.namespace=bookinfo]), identity 23407->15745, "
        "verdict Forwarded GET http://reviews:9080/reviews/0 => 0")
    resp = bookinfo_syn(l7=fpb.Layer7(type=fpb.RESPONSE, http=fpb.HTTP(code=200, method="GET",
                                                                       url="http://reviews:9080/reviews/0")),
                        source=ep("bookinfo", "reviews-v3-y", 15745, 148),
                        destination=ep("bookinfo", "productpage-v1-x", 23407, 2105),
                        traffic_direction=fpb.EGRESS)
    assert monitor_line(resp) == (
        "-> Response http to 2105 ([k8s:app=productpage k8s:io.kubernetes.pod.namespace=bookinfo]) "
        "from 148 ([k8s:app=reviews k8s:io.kubernetes.pod.namespace=bookinfo]), identity "
        "23407->15745, verdict Forwarded GET http://reviews:9080/reviews/0 => 200")
    q = bookinfo_syn(l7=fpb.Layer7(type=fpb.REQUEST, dns=fpb.DNS(query="reviews.bookinfo.svc.cluster.local.",
                                                                 qtypes=["A"])),
                     traffic_direction=fpb.EGRESS)
    assert monitor_line(q).endswith("verdict Forwarded DNS Query: reviews.bookinfo.svc.cluster.local. A")
    a = bookinfo_syn(l7=fpb.Layer7(type=fpb.RESPONSE, dns=fpb.DNS(
        query="reviews.bookinfo.svc.cluster.local.", qtypes=["A"], ips=["10.96.0.20"], ttl=30,
        observation_source="proxy", cnames=["x."])), verdict=fpb.DROPPED)
    assert monitor_line(a).endswith(
        "verdict Denied DNS Proxy: reviews.bookinfo.svc.cluster.local. A TTL: 30 Answer: '10.96.0.20' "
        "CNAMEs: x.")

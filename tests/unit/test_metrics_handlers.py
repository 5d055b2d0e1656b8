"""Metric handlers on hand-built flows: metric names, label names and values as Hubble's."""
from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
from prometheus_client.registry import CollectorRegistry

from webb.api.flow import flow_pb2 as fpb
from webb_metrics.config import parse_metrics
from webb_metrics.handlers import PLUGINS
from webb_metrics.pipeline import Pipeline

TRACE, DROP, POLICY, L7 = 4, 1, 5, 129


def endpoint(ns: str = "", pod: str = "", labels=(), workload: str = "", identity: int = 0,
             kind: str = "Deployment") -> fpb.Endpoint:
    ep = fpb.Endpoint(namespace=ns, pod_name=pod, labels=list(labels), identity=identity)
    if workload:
        ep.workloads.add(name=workload, kind=kind)
    return ep


CLIENT = endpoint("shop", "frontend-7d9c8b-x2x7z", ["k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=shop"],
                  "frontend", 1234)
SERVER = endpoint("shop", "cart-5f6d7c9b8-abcde", ["k8s:app.kubernetes.io/name=cart", "k8s:app=cart-legacy"],
                  "cart", 5678)
WORLD = endpoint(labels=["reserved:world"], identity=2)


def flow(*, verdict=fpb.FORWARDED, event=TRACE, sub=5, proto="TCP", src=CLIENT, dst=SERVER,
         sip="10.0.1.5", dip="10.0.2.7", v6=False, sport=40000, dport=8080, flags=(),
         reply: bool | None = False, direction=fpb.EGRESS, **extra) -> fpb.Flow:
    f = fpb.Flow(verdict=verdict, Type=fpb.L7 if event == L7 else fpb.L3_L4,
                 traffic_direction=direction, node_name="n1")
    f.event_type.type = event
    f.event_type.sub_type = sub
    f.IP.source, f.IP.destination = sip, dip
    f.IP.ipVersion = fpb.IPv6 if v6 else fpb.IPv4
    f.source.CopyFrom(src)
    f.destination.CopyFrom(dst)
    if proto == "TCP":
        f.l4.TCP.source_port, f.l4.TCP.destination_port = sport, dport
        f.l4.TCP.flags.SetInParent()
        for fl in flags:
            setattr(f.l4.TCP.flags, fl, True)
    elif proto == "UDP":
        f.l4.UDP.source_port, f.l4.UDP.destination_port = sport, dport
    elif proto == "ICMPv4":
        f.l4.ICMPv4.type, f.l4.ICMPv4.code = extra.pop("icmp", (8, 0))
    elif proto == "ICMPv6":
        f.l4.ICMPv6.type, f.l4.ICMPv6.code = extra.pop("icmp", (128, 0))
    if reply is not None:
        f.is_reply.value = reply
    for k, v in extra.items():
        setattr(f, k, v)
    return f


def dns_flow(*, reply: bool, query="cart.shop.svc.cluster.local.", qtypes=("A",), ips=(), rcode=0,
             rrtypes=(), verdict=fpb.FORWARDED) -> fpb.Flow:
    f = flow(event=L7, proto="UDP", dport=53, reply=reply, verdict=verdict)
    f.l7.type = fpb.RESPONSE if reply else fpb.REQUEST
    d = f.l7.dns
    d.query = query
    d.qtypes.extend(qtypes)
    d.ips.extend(ips)
    d.rcode = rcode
    d.rrtypes.extend(rrtypes)
    return f


def http_flow(*, kind=fpb.RESPONSE, code=200, method="GET", latency_ns=30_000_000,
              direction=fpb.INGRESS, trace_id="") -> fpb.Flow:
    # A response travels server -> client.
    f = flow(event=L7, src=SERVER, dst=CLIENT, sip="10.0.2.7", dip="10.0.1.5", reply=True,
             direction=direction, sport=8080, dport=40000)
    f.l7.type = kind
    f.l7.latency_ns = latency_ns
    f.l7.http.code = code
    f.l7.http.method = method
    f.l7.http.protocol = "HTTP/1.1"
    f.l7.http.url = "http://cart:8080/items"
    if trace_id:
        f.trace_context.parent.trace_id = trace_id
    return f


def pipeline(spec: str) -> Pipeline:
    return Pipeline(parse_metrics([spec], PLUGINS))


def samples(p: Pipeline, name: str) -> dict[tuple, float]:
    """{sorted label items: value} of one metric family's samples."""
    out = {}
    for vec in p.store.vecs:
        fam = vec.collect()
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def one(p: Pipeline, name: str) -> tuple[dict, float]:
    got = samples(p, name)
    assert len(got) == 1, got
    (labels, value), = got.items()
    return dict(labels), value


def test_flow_labels_and_trace_subtypes():
    p = pipeline("flow")
    p.process(flow(sub=5))
    p.process(flow(sub=0))
    p.process(flow(verdict=fpb.DROPPED, event=DROP, drop_reason_desc=fpb.POLICY_DENIED))
    p.process(flow(event=POLICY, proto="UDP"))
    p.process(http_flow())
    p.process(flow(event=77, proto="ICMPv4"))
    got = samples(p, "hubble_flows_processed_total")
    def key(**kw):
        return tuple(sorted(kw.items()))
    assert got == {
        key(protocol="TCP", type="Trace", subtype="from-endpoint", verdict="FORWARDED"): 1,
        key(protocol="TCP", type="Trace", subtype="to-endpoint", verdict="FORWARDED"): 1,
        key(protocol="TCP", type="Drop", subtype="", verdict="DROPPED"): 1,
        key(protocol="UDP", type="PolicyVerdict", subtype="", verdict="FORWARDED"): 1,
        key(protocol="HTTP", type="L7", subtype="HTTP", verdict="FORWARDED"): 1,
        key(protocol="Unknown flow", type="Unknown", subtype="77", verdict="FORWARDED"): 1,
    }


def test_flow_label_order_puts_context_last():
    p = pipeline("flow:sourceContext=namespace;destinationContext=workload-name")
    vec = p.store.vecs[0]
    assert vec.labelnames == ("protocol", "type", "subtype", "verdict", "source", "destination")
    p.process(flow())
    labels, _ = one(p, "hubble_flows_processed_total")
    assert labels["source"] == "shop" and labels["destination"] == "cart"


def test_drop_reason_protocol_and_context_first():
    p = pipeline("drop:sourceContext=pod")
    assert p.store.vecs[0].labelnames == ("source", "reason", "protocol")
    p.process(flow())  # forwarded: not a drop
    p.process(flow(verdict=fpb.DROPPED, event=DROP, drop_reason_desc=fpb.POLICY_DENIED, proto="UDP"))
    p.process(flow(verdict=fpb.DROPPED, event=DROP, proto="ICMPv6"))
    got = samples(p, "hubble_drop_total")
    assert got == {
        (("protocol", "UDP"), ("reason", "POLICY_DENIED"), ("source", "shop/frontend-7d9c8b-x2x7z")): 1,
        (("protocol", "ICMPv6"), ("reason", "DROP_REASON_UNKNOWN"), ("source", "shop/frontend-7d9c8b-x2x7z")): 1,
    }


def test_tcp_flags():
    p = pipeline("tcp")
    p.process(flow(flags=("SYN",)))
    p.process(flow(flags=("SYN", "ACK"), reply=True))
    p.process(flow(flags=("FIN", "ACK")))
    p.process(flow(flags=("RST",), v6=True))
    p.process(flow(flags=("ACK", "PSH")))  # nothing Hubble counts
    p.process(flow(flags=("SYN",), verdict=fpb.DROPPED))  # only forwarded flows
    p.process(flow(proto="UDP"))
    got = samples(p, "hubble_tcp_flags_total")
    assert got == {(("family", "IPv4"), ("flag", "SYN")): 1, (("family", "IPv4"), ("flag", "SYN-ACK")): 1,
                   (("family", "IPv4"), ("flag", "FIN")): 1, (("family", "IPv6"), ("flag", "RST")): 1}


@pytest.mark.parametrize("proto,icmp,family,name", [
    ("ICMPv4", (8, 0), "IPv4", "EchoRequest"),
    ("ICMPv4", (0, 0), "IPv4", "EchoReply"),
    ("ICMPv4", (3, 3), "IPv4", "DestinationUnreachable(Port)"),
    ("ICMPv4", (3, 99), "IPv4", "DestinationUnreachable(Code: 99)"),
    ("ICMPv4", (8, 1), "IPv4", "EchoRequest(Code: 1)"),
    ("ICMPv4", (42, 7), "IPv4", "42(7)"),
    ("ICMPv6", (128, 0), "IPv6", "EchoRequest"),
    ("ICMPv6", (1, 4), "IPv6", "DestinationUnreachable(PortUnreachable)"),
    ("ICMPv6", (135, 0), "IPv6", "NeighborSolicitation"),
])
def test_icmp_type_names(proto, icmp, family, name):
    p = pipeline("icmp")
    p.process(flow(proto=proto, icmp=icmp))
    labels, value = one(p, "hubble_icmp_total")
    assert labels == {"family": family, "type": name} and value == 1


def test_port_distribution_skips_replies_and_unknown_direction():
    p = pipeline("port-distribution")
    p.process(flow(dport=8080))
    p.process(flow(dport=8080, reply=True))
    p.process(flow(dport=9999, reply=None))  # reply state unknown: not counted
    p.process(flow(proto="UDP", dport=53))
    p.process(flow(proto="ICMPv4"))
    p.process(flow(dport=7000, verdict=fpb.DROPPED))
    got = samples(p, "hubble_port_distribution_total")
    assert got == {(("port", "8080"), ("protocol", "TCP")): 1, (("port", "53"), ("protocol", "UDP")): 1,
                   (("port", "0"), ("protocol", "ICMPv4")): 1}


def test_flows_to_world_default_and_options():
    plain = pipeline("flows-to-world")
    opts = pipeline("flows-to-world:any-drop;port;syn-only;sourceContext=namespace")
    cases = [
        flow(dst=WORLD, flags=("SYN",), dport=443),                      # counted by both
        flow(dst=WORLD, flags=("ACK",), dport=443),                      # not syn: plain only
        flow(dst=WORLD, flags=("SYN", "ACK"), reply=True),               # reply: neither
        flow(dst=WORLD, proto="UDP", dport=53),                          # plain only (syn-only: TCP SYNs)
        flow(dst=WORLD, verdict=fpb.DROPPED, drop_reason_desc=fpb.POLICY_DENIED, flags=("SYN",)),
        flow(dst=WORLD, verdict=fpb.DROPPED, drop_reason_desc=fpb.CT_NO_MAP_FOUND, flags=("SYN",)),
        flow(dst=SERVER, flags=("SYN",)),                                # not world
    ]
    for f in cases:
        plain.process(f)
        opts.process(f)
    assert samples(plain, "hubble_flows_to_world_total") == {
        (("protocol", "TCP"), ("verdict", "FORWARDED")): 2,
        (("protocol", "UDP"), ("verdict", "FORWARDED")): 1,
        (("protocol", "TCP"), ("verdict", "DROPPED")): 1,
    }
    assert opts.store.vecs[0].labelnames == ("protocol", "verdict", "port", "source")
    assert samples(opts, "hubble_flows_to_world_total") == {
        (("port", "443"), ("protocol", "TCP"), ("source", "shop"), ("verdict", "FORWARDED")): 1,
        (("port", "8080"), ("protocol", "TCP"), ("source", "shop"), ("verdict", "DROPPED")): 2,
    }
    assert opts.handlers[0].status() == "any-drop,port,syn-only,source=namespace"


def test_dns_queries_responses_types_and_options():
    p = pipeline("dns:query;ignoreAAAA")
    p.process(dns_flow(reply=False))
    p.process(dns_flow(reply=True, ips=["10.0.2.7"], rrtypes=["A"]))
    p.process(dns_flow(reply=True, query="nope.", rcode=3))
    p.process(dns_flow(reply=False, qtypes=("AAAA",)))          # ignored
    p.process(dns_flow(reply=True, qtypes=("AAAA",), rcode=0))   # ignored
    p.process(dns_flow(reply=False, verdict=fpb.DROPPED, query="evil."))
    p.process(flow(proto="UDP", dport=53))                       # L3/L4 only: not DNS
    q = samples(p, "hubble_dns_queries_total")
    assert q == {
        (("ips_returned", "0"), ("qtypes", "A"), ("query", "cart.shop.svc.cluster.local."), ("rcode", "")): 1,
        (("ips_returned", "0"), ("qtypes", "A"), ("query", "evil."), ("rcode", "Policy denied")): 1,
    }
    r = samples(p, "hubble_dns_responses_total")
    assert r == {
        (("ips_returned", "1"), ("qtypes", "A"), ("query", "cart.shop.svc.cluster.local."), ("rcode", "No Error")): 1,
        (("ips_returned", "0"), ("qtypes", "A"), ("query", "nope."), ("rcode", "Non-Existent Domain")): 1,
    }
    t = samples(p, "hubble_dns_response_types_total")
    assert t == {(("qtypes", "A"), ("query", "cart.shop.svc.cluster.local."), ("type", "A")): 1}


def test_dns_without_options_and_context_labels_first():
    p = pipeline("dns:sourceContext=workload-name")
    p.process(dns_flow(reply=False, qtypes=("AAAA",)))
    assert p.store.vecs[0].labelnames == ("source", "rcode", "qtypes", "ips_returned")
    assert p.store.vecs[2].labelnames == ("source", "type", "qtypes")
    labels, _ = one(p, "hubble_dns_queries_total")
    assert labels == {"source": "frontend", "rcode": "", "qtypes": "AAAA", "ips_returned": "0"}


def test_httpv2_counts_responses_from_the_request_point_of_view():
    p = pipeline("httpV2:sourceContext=workload-name;destinationContext=workload-name;"
                 "labelsContext=source_namespace,destination_ip")
    p.process(http_flow(kind=fpb.REQUEST))    # requests are not counted by httpV2
    p.process(http_flow(code=200, latency_ns=30_000_000))
    p.process(http_flow(code=503, latency_ns=2_000_000_000, direction=fpb.EGRESS))
    req = samples(p, "hubble_http_requests_total")
    common = (("destination", "cart"), ("destination_ip", "10.0.2.7"), ("method", "GET"),
              ("protocol", "HTTP/1.1"))
    assert req == {
        tuple(sorted(common + (("reporter", "server"), ("source", "frontend"),
                               ("source_namespace", "shop"), ("status", "200")))): 1,
        tuple(sorted(common + (("reporter", "client"), ("source", "frontend"),
                               ("source_namespace", "shop"), ("status", "503")))): 1,
    }
    count = samples(p, "hubble_http_request_duration_seconds_count")
    assert sum(count.values()) == 2
    buckets = samples(p, "hubble_http_request_duration_seconds_bucket")
    le = {dict(k)["le"]: v for k, v in buckets.items() if dict(k)["reporter"] == "client"}
    assert le["1"] == 0 and le["2.5"] == 1 and le["+Inf"] == 1
    total = samples(p, "hubble_http_request_duration_seconds_sum")
    assert sorted(total.values()) == [pytest.approx(0.03), pytest.approx(2.0)]


def test_http_v1_counts_requests_and_responses():
    p = pipeline("http")
    p.process(http_flow(kind=fpb.REQUEST, direction=fpb.EGRESS))
    p.process(http_flow(code=404, direction=fpb.TRAFFIC_DIRECTION_UNKNOWN))
    assert one(p, "hubble_http_requests_total")[0] == {"method": "GET", "protocol": "HTTP/1.1",
                                                      "reporter": "client"}
    assert one(p, "hubble_http_responses_total")[0] == {"method": "GET", "protocol": "HTTP/1.1",
                                                       "status": "404", "reporter": "unknown"}


def test_httpv2_exemplars_in_openmetrics_only():
    p = pipeline("httpV2:exemplars=true")
    p.process(http_flow(trace_id="4bf92f3577b34da6a3ce929d0e0e4736", latency_ns=40_000_000))
    p.process(http_flow(code=500))  # no trace id: no exemplar
    reg = CollectorRegistry(auto_describe=False)
    reg.register(p.store)
    om = openmetrics(reg).decode()
    assert ('hubble_http_requests_total{method="GET",protocol="HTTP/1.1",reporter="server",status="200"} 1.0 '
            '# {traceID="4bf92f3577b34da6a3ce929d0e0e4736"} 1.0') in om
    assert 'le="0.05",method="GET",reporter="server"} 2.0 # {traceID="4bf92f3577b34da6a3ce929d0e0e4736"} 0.04' in om
    assert 'status="500"} 1.0\n' in om
    text = generate_latest(reg).decode()
    assert "traceID" not in text and "_created" not in text


def test_httpv2_without_exemplars_option_attaches_none():
    p = pipeline("httpV2")
    p.process(http_flow(trace_id="abc"))
    reg = CollectorRegistry(auto_describe=False)
    reg.register(p.store)
    assert "traceID" not in openmetrics(reg).decode()


def test_policy_verdicts_l34_and_l7():
    p = pipeline("policy:sourceContext=app")
    p.process(flow(event=POLICY, verdict=fpb.FORWARDED, policy_match_type=2, direction=fpb.INGRESS))
    p.process(flow(event=POLICY, verdict=fpb.DROPPED, policy_match_type=0, direction=fpb.EGRESS))
    p.process(flow(event=POLICY, verdict=fpb.FORWARDED, policy_match_type=4,
                   src=endpoint(labels=["reserved:host"], identity=1)))  # from the host: skipped
    p.process(http_flow(direction=fpb.INGRESS))
    p.process(flow())  # a trace: not a verdict
    assert samples(p, "hubble_policy_verdicts_total") == {
        (("action", "forwarded"), ("direction", "ingress"), ("match", "l3-l4"), ("source", "frontend")): 1,
        (("action", "dropped"), ("direction", "egress"), ("match", "none"), ("source", "frontend")): 1,
        (("action", "forwarded"), ("direction", "ingress"), ("match", "l7/http"), ("source", "cart")): 1,
    }


def test_lost_events_by_source():
    p = pipeline("flow")
    assert samples(p, "hubble_lost_events_total") == {
        (("source", "perf_event_ring_buffer"),): 0, (("source", "observer_events_queue"),): 0,
        (("source", "hubble_ring_buffer"),): 0}
    p.lost_events(fpb.LostEvent(source=fpb.PERF_EVENT_RING_BUFFER, num_events_lost=7))
    p.lost_events(fpb.LostEvent(source=fpb.HUBBLE_RING_BUFFER, num_events_lost=2))
    p.lost_events(fpb.LostEvent(source=fpb.UNKNOWN_LOST_EVENT_SOURCE, num_events_lost=1))
    got = samples(p, "hubble_lost_events_total")
    assert got[(("source", "perf_event_ring_buffer"),)] == 7
    assert got[(("source", "hubble_ring_buffer"),)] == 2
    assert got[(("source", "unknown_lost_event_source"),)] == 1


def test_full_recommended_set_text_exposition():
    p = pipeline("dns:query;ignoreAAAA,drop,tcp,flow,port-distribution,icmp,httpV2:exemplars=true;"
                 "labelsContext=source_ip,source_namespace,source_workload,destination_ip,"
                 "destination_namespace,destination_workload,traffic_direction")
    for f in (flow(flags=("SYN",)), flow(proto="ICMPv4"), dns_flow(reply=True), http_flow(),
              flow(verdict=fpb.DROPPED, event=DROP, drop_reason_desc=fpb.POLICY_DENIED)):
        p.process(f)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(p.store)
    text = generate_latest(reg).decode()
    for name in ("hubble_flows_processed_total", "hubble_drop_total", "hubble_tcp_flags_total",
                 "hubble_icmp_total", "hubble_port_distribution_total", "hubble_dns_responses_total",
                 "hubble_http_requests_total", "hubble_http_request_duration_seconds_bucket",
                 "hubble_lost_events_total"):
        assert f"\n{name}{{" in text, name
    assert ('hubble_http_requests_total{destination_ip="10.0.2.7",destination_namespace="shop",'
            'destination_workload="cart",method="GET",protocol="HTTP/1.1",reporter="server",'
            'source_ip="10.0.1.5",source_namespace="shop",source_workload="frontend",status="200",'
            'traffic_direction="ingress"} 1.0') in text
    assert "_created" not in text


def test_filters_from_config_limit_a_handler(tmp_path):
    from webb_metrics.config import load_config_file
    cfg = tmp_path / "metrics.yaml"
    cfg.write_text("""
metrics:
- name: flow
  includeFilters: [{source_pod: ["shop/frontend"]}]
  excludeFilters: [{protocol: ["udp"]}]
- name: port-distribution
""")
    p = Pipeline(load_config_file(cfg, PLUGINS))
    p.process(flow())
    p.process(flow(proto="UDP"))
    p.process(flow(src=SERVER, dst=CLIENT))
    assert sum(samples(p, "hubble_flows_processed_total").values()) == 1
    assert sum(samples(p, "hubble_port_distribution_total").values()) == 3


def test_a_failing_handler_does_not_stop_the_others(monkeypatch):
    p = pipeline("tcp,flow")
    monkeypatch.setattr(p.handlers[0], "process", lambda f: 1 / 0)
    p._steps[0] = p.handlers[0].process
    p.process(flow(flags=("SYN",)))
    assert p.errors == 1
    assert sum(samples(p, "hubble_flows_processed_total").values()) == 1

"""Context options: every identifier, fallback chains, labelsContext, direction overrides,
inversion, and which endpoints a series is bound to."""
from __future__ import annotations

import pytest

from webb.api.flow import flow_pb2 as fpb
from webb_metrics.context import ContextOptions, short_pod_name
from webb_metrics.errors import ConfigError


def mk(**kw) -> fpb.Flow:
    f = fpb.Flow(traffic_direction=kw.pop("direction", fpb.EGRESS))
    f.IP.source, f.IP.destination = kw.pop("sip", "10.0.1.5"), kw.pop("dip", "10.0.2.7")
    src = kw.pop("src", dict(namespace="shop", pod_name="frontend-7d9c8b6f4-x2x7z",
                             labels=["k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=shop"]))
    dst = kw.pop("dst", dict(namespace="db", pod_name="postgres-0",
                             labels=["k8s:k8s-app=postgres", "k8s:app.kubernetes.io/name=pg"]))
    swl = kw.pop("src_workload", ("frontend", "Deployment"))
    dwl = kw.pop("dst_workload", ("postgres", "StatefulSet"))
    f.source.CopyFrom(fpb.Endpoint(**src))
    f.destination.CopyFrom(fpb.Endpoint(**dst))
    if swl:
        f.source.workloads.add(name=swl[0], kind=swl[1])
    if dwl:
        f.destination.workloads.add(name=dwl[0], kind=dwl[1])
    f.source_names.extend(kw.pop("source_names", []))
    f.destination_names.extend(kw.pop("destination_names", ["pg.example.com", "db.example.com"]))
    assert not kw, kw
    return f


WORLD = dict(labels=["reserved:world"], identity=2)
APISERVER = dict(labels=["reserved:world", "reserved:kube-apiserver"], identity=7)


def src_dst(options: dict, flow: fpb.Flow, invert: bool = False) -> tuple:
    return ContextOptions(options).values(flow, invert)[0]


@pytest.mark.parametrize("ident,source,destination", [
    ("namespace", "shop", "db"),
    ("pod", "shop/frontend-7d9c8b6f4-x2x7z", "db/postgres-0"),
    ("pod-name", "frontend-7d9c8b6f4-x2x7z", "postgres-0"),
    ("pod-short", "shop/frontend", "db/postgres"),
    ("workload", "shop/frontend", "db/postgres"),
    ("workload-name", "frontend", "postgres"),
    ("app", "frontend", "postgres"),
    ("ip", "10.0.1.5", "10.0.2.7"),
    ("dns", "", "pg.example.com,db.example.com"),
    ("identity", "k8s:app=frontend,k8s:io.kubernetes.pod.namespace=shop",
     "k8s:k8s-app=postgres,k8s:app.kubernetes.io/name=pg"),
    ("reserved-identity", "", ""),
])
def test_each_identifier(ident, source, destination):
    opts = {"sourceContext": ident, "destinationContext": ident}
    assert src_dst(opts, mk()) == (source, destination)


def test_reserved_identity_prefers_kube_apiserver():
    f = mk(src=WORLD, dst=APISERVER)
    assert src_dst({"sourceContext": "reserved-identity", "destinationContext": "reserved-identity"}, f) \
        == ("reserved:world", "reserved:kube-apiserver")


def test_fallback_chain_takes_first_non_empty():
    f = mk(src=WORLD, src_workload=None)
    opts = {"sourceContext": "workload-name|reserved-identity|ip", "destinationContext": "dns|ip"}
    assert src_dst(opts, f) == ("reserved:world", "pg.example.com,db.example.com")
    f2 = mk(destination_names=[])
    assert src_dst({"destinationContext": "dns|ip"}, f2) == ("10.0.2.7",)
    # Nothing in the chain has a value: the label is empty, not missing.
    assert src_dst({"sourceContext": "dns|workload-name"}, mk(src_workload=None)) == ("",)


def test_pod_without_namespace_and_short_names():
    f = mk(src=dict(pod_name="standalone"))
    assert src_dst({"sourceContext": "pod"}, f) == ("standalone",)
    assert short_pod_name("reviews-v1-5d8f7b9c4-x2x7z") == "reviews-v1"
    assert short_pod_name("postgres-0") == "postgres"
    assert short_pod_name("coredns") == "coredns"


def test_app_label_precedence_follows_label_order():
    f = mk(dst=dict(labels=["k8s:app=legacy", "k8s:app.kubernetes.io/name=modern"]))
    assert src_dst({"destinationContext": "app"}, f) == ("legacy",)
    f = mk(dst=dict(labels=["k8s:app=", "k8s:k8s-app=kube-dns"]))
    assert src_dst({"destinationContext": "app"}, f) == ("kube-dns",)


def test_labels_context_order_and_values():
    opts = {"labelsContext": "traffic_direction,destination_workload_kind,source_app,source_ip,"
                             "destination_namespace,source_workload,destination_pod"}
    c = ContextOptions(opts)
    assert c.label_names() == ["source_ip", "source_workload", "source_app", "destination_pod",
                               "destination_namespace", "destination_workload_kind", "traffic_direction"]
    assert c.values(mk())[0] == ("10.0.1.5", "frontend", "frontend", "postgres-0", "db",
                                 "StatefulSet", "egress")
    assert c.values(mk(direction=fpb.TRAFFIC_DIRECTION_UNKNOWN))[0][-1] == "unknown"


def test_labels_then_source_then_destination():
    c = ContextOptions({"destinationContext": "namespace", "labelsContext": "source_pod",
                        "sourceContext": "namespace"})
    assert c.label_names() == ["source_pod", "source", "destination"]


def test_direction_specific_contexts_override():
    opts = {"sourceContext": "namespace", "sourceIngressContext": "pod",
            "destinationContext": "namespace", "destinationEgressContext": "workload-name"}
    assert src_dst(opts, mk(direction=fpb.EGRESS)) == ("shop", "postgres")
    assert src_dst(opts, mk(direction=fpb.INGRESS)) == ("shop/frontend-7d9c8b6f4-x2x7z", "db")
    assert src_dst(opts, mk(direction=fpb.TRAFFIC_DIRECTION_UNKNOWN)) == ("shop", "db")


def test_invert_swaps_both_kinds():
    opts = {"sourceContext": "namespace", "destinationContext": "pod-name",
            "labelsContext": "source_ip,destination_workload"}
    f = mk()
    assert src_dst(opts, f) == ("10.0.1.5", "postgres", "shop", "postgres-0")
    # As Hubble: each chain is evaluated on its own side of the flow, then the two
    # values trade places (the same identifiers on both sides is the usual case).
    assert src_dst(opts, f, invert=True) == ("10.0.2.7", "frontend", "postgres-0", "shop")
    same = {"sourceContext": "pod-name", "destinationContext": "pod-name"}
    assert src_dst(same, f, invert=True) == ("postgres-0", "frontend-7d9c8b6f4-x2x7z")


def test_case_insensitive_keys_and_identifiers():
    assert src_dst({"SOURCECONTEXT": "Namespace"}, mk()) == ("shop",)


@pytest.mark.parametrize("opts,msg", [
    ({"sourceContext": "nope"}, "unknown context 'nope'"),
    ({"destinationContext": "ip|"}, "unknown context ''"),
    ({"labelsContext": "source_ip,pod"}, "invalid labelsContext value: 'pod'"),
])
def test_bad_context_options(opts, msg):
    with pytest.raises(ConfigError, match=msg):
        ContextOptions(opts)


def test_bindings_name_single_endpoints_only():
    f = mk(dst=WORLD, dst_workload=None, dip="93.184.216.34")
    assert ContextOptions({"sourceContext": "namespace"}).values(f)[1] == ()
    assert ContextOptions({"labelsContext": "source_workload,destination_namespace"}).values(f)[1] == ()
    assert ContextOptions({"sourceContext": "pod"}).values(f)[1] == ("pod:shop/frontend-7d9c8b6f4-x2x7z",)
    both = ContextOptions({"labelsContext": "source_ip,destination_ip"})
    assert both.values(f)[1] == ("pod:shop/frontend-7d9c8b6f4-x2x7z", "ip:93.184.216.34")
    # Inverted, the source label shows the destination endpoint.
    only_src = ContextOptions({"labelsContext": "source_pod"})
    assert only_src.values(f, invert=True)[1] == ("ip:93.184.216.34",)


def test_values_are_memoized_per_flow():
    c = ContextOptions({"sourceContext": "namespace"})
    f1, f2 = mk(), mk(src=dict(namespace="other"))
    assert c.values(f1)[0] == ("shop",)
    assert c.values(f2)[0] == ("other",)
    assert c.values(f1)[0] == ("shop",)


def test_status_lists_options():
    c = ContextOptions({"sourceContext": "pod|ip", "labelsContext": "traffic_direction,source_ip",
                        "destinationEgressContext": "dns"})
    assert c.status() == "destinationEgress=dns,labels=source_ip,traffic_direction,source=pod|ip"


def test_fallback_binds_only_when_the_per_pod_identifier_gave_the_value():
    c = ContextOptions({"sourceContext": "workload-name|pod", "destinationContext": "workload-name|ip"})
    with_workloads = mk()
    assert c.values(with_workloads) == (("frontend", "postgres"), ())  # workload series: kept
    bare = mk(src_workload=None, dst=WORLD, dst_workload=None, dip="93.184.216.34")
    assert c.values(bare) == (("shop/frontend-7d9c8b6f4-x2x7z", "93.184.216.34"),
                              ("pod:shop/frontend-7d9c8b6f4-x2x7z", "ip:93.184.216.34"))


def test_endpoint_contexts_are_computed_once_per_endpoint_pair_and_per_flow_ones_every_time():
    by_pod = ContextOptions({"sourceContext": "workload-name|reserved-identity",
                             "labelsContext": "source_namespace,traffic_direction"})
    a, b = mk(sip="10.0.1.5"), mk(sip="10.0.1.6", direction=fpb.INGRESS)
    assert by_pod.values(a)[0] == ("shop", "egress", "frontend")
    assert by_pod.values(b)[0] == ("shop", "ingress", "frontend")  # direction is in the key
    assert len(by_pod._cache) == 2
    assert by_pod.values(mk(sip="10.9.9.9"))[0] == ("shop", "egress", "frontend")
    assert len(by_pod._cache) == 2
    other = mk(src=dict(namespace="shop", pod_name="frontend-2", identity=5))
    other.source.workloads[0].name = "frontend-canary"
    assert by_pod.values(other)[0] == ("shop", "egress", "frontend-canary")
    by_ip = ContextOptions({"sourceContext": "ip"})
    assert by_ip.values(a)[0] == ("10.0.1.5",) and by_ip.values(mk(sip="10.0.1.6"))[0] == ("10.0.1.6",)
    assert not by_ip._cache


def test_a_pod_label_binding_an_address_is_computed_per_flow():
    # labelsContext=source_pod binds a pod-less endpoint's series to its address
    c = ContextOptions({"labelsContext": "source_pod"})
    w1, w2 = mk(src=WORLD, sip="93.184.216.34"), mk(src=WORLD, sip="93.184.216.35")
    assert c.values(w1)[1] == ("ip:93.184.216.34",)
    assert c.values(w2)[1] == ("ip:93.184.216.35",)

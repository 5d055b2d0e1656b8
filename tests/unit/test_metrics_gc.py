"""Series garbage collection: series of deleted or idle endpoints go after the grace period;
series bound to no endpoint stay."""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb
from webb_metrics.config import parse_metrics
from webb_metrics.handlers import PLUGINS
from webb_metrics.pipeline import Pipeline
from webb_metrics.series_gc import SeriesGC


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def tcp(src_pod: str, dst_pod: str = "db-0", sip: str = "10.0.1.5", dip: str = "10.0.2.7",
        dst_labels=()) -> fpb.Flow:
    f = fpb.Flow(verdict=fpb.FORWARDED, traffic_direction=fpb.EGRESS)
    f.event_type.type = 4
    f.IP.source, f.IP.destination, f.IP.ipVersion = sip, dip, fpb.IPv4
    f.l4.TCP.destination_port = 5432
    f.l4.TCP.flags.SYN = True
    f.is_reply.value = False
    f.source.namespace, f.source.pod_name = ("shop", src_pod) if src_pod else ("", "")
    if dst_pod:
        f.destination.namespace, f.destination.pod_name = "db", dst_pod
    f.destination.labels.extend(dst_labels)
    return f


def setup(spec: str, grace=60.0, idle=600.0):
    clock = Clock()
    p = Pipeline(parse_metrics([spec], PLUGINS))
    gc = SeriesGC(p.store, grace=grace, idle_timeout=idle, clock=clock)
    p.on_flow = gc.touch
    return p, gc, clock


def series(p: Pipeline, name: str) -> set[tuple]:
    vec = next(v for v in p.store.vecs if v.name == name)
    return set(vec.values)


def test_deleted_pod_series_go_after_grace_period():
    p, gc, clock = setup("flow:sourceContext=pod,tcp")
    p.process(tcp("web-1"))
    p.process(tcp("web-2"))
    assert p.binds
    assert len(series(p, "hubble_flows_processed_total")) == 2
    gc.endpoint_deleted("shop", "web-1")
    clock.t += 59
    assert gc.sweep() == 0
    clock.t += 2
    assert gc.sweep() == 1
    left = series(p, "hubble_flows_processed_total")
    assert left == {("TCP", "Trace", "to-endpoint", "FORWARDED", "shop/web-2")}
    # tcp has no per-pod label: its series is not bound and stays.
    assert len(series(p, "hubble_tcp_flags_total")) == 1
    assert gc.removed == 1 and "pod:shop/web-1" not in gc.last_seen


def test_pod_back_before_the_grace_period_keeps_its_series():
    p, gc, clock = setup("flow:sourceContext=pod")
    p.process(tcp("web-0"))
    gc.endpoint_deleted("shop", "web-0")
    clock.t += 30
    gc.endpoint_created("shop", "web-0")  # a StatefulSet pod, recreated under its name
    clock.t += 60
    assert gc.sweep() == 0
    assert len(series(p, "hubble_flows_processed_total")) == 1


def test_idle_endpoints_expire_including_world_addresses():
    p, gc, clock = setup("flow:labelsContext=source_ip,destination_ip", grace=10, idle=100)
    p.process(tcp("web-1", dst_pod="", dip="93.184.216.34", dst_labels=["reserved:world"]))
    p.process(tcp("web-2", sip="10.0.1.6"))
    clock.t += 60
    p.process(tcp("web-2", sip="10.0.1.6"))  # web-2 and db-0 stay active
    clock.t += 55  # web-1 and the world address: idle 115s > 100 + 10
    assert gc.sweep() == 1
    assert series(p, "hubble_flows_processed_total") == {
        ("TCP", "Trace", "to-endpoint", "FORWARDED", "10.0.1.6", "10.0.2.7")}
    assert set(gc.last_seen) == {"pod:shop/web-2", "pod:db/db-0"}


def test_idle_timeout_zero_never_expires():
    p, gc, clock = setup("flow:sourceContext=pod", idle=0)
    p.process(tcp("web-1"))
    clock.t += 1e6
    assert gc.sweep() == 0


def test_series_removed_then_recreated_start_from_one():
    p, gc, clock = setup("flow:sourceContext=pod", grace=1)
    p.process(tcp("web-1"))
    p.process(tcp("web-1"))
    gc.endpoint_deleted("shop", "web-1")
    clock.t += 2
    gc.sweep()
    p.process(tcp("web-1"))  # a late flow: a new series
    vec = p.store.vecs[0]
    assert list(vec.values.values()) == [1.0]


def test_unbound_configuration_has_no_gc():
    p = Pipeline(parse_metrics(["flow,drop,tcp,port-distribution:sourceContext=namespace"], PLUGINS))
    assert not p.binds

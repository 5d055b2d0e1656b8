"""Counting by digest (Pipeline.process_encoded, what the exporter runs) gives exactly
what the handlers give flow by flow (Pipeline.process), on randomized flows that set
every field a handler may read, and vary the ones none reads."""
from __future__ import annotations

import random
import uuid

import pytest

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb_metrics import pipeline as pipeline_mod
from webb_metrics.config import parse_metrics
from webb_metrics.digest import make_digest
from webb_metrics.handlers import PLUGINS
from webb_metrics.pipeline import Pipeline
from webb_metrics.presets import DASHBOARDS, RECOMMENDED
from webb_metrics.series import CounterVec, HistogramVec
from webb_metrics.series_gc import SeriesGC

OPTION_SETS = {
    "dashboards": list(DASHBOARDS),
    "recommended": list(RECOMMENDED),
    "every identifier": [
        "flow:sourceContext=pod|ip;destinationContext=dns|ip;labelsContext=source_app,destination_workload_kind",
        "policy:sourceEgressContext=app|identity;destinationIngressContext=pod-short|reserved-identity",
        "flows-to-world:port;syn-only;labelsContext=source_pod,destination_ip",
        "dns:labelsContext=source_pod,source_app,destination_workload_kind,traffic_direction",
        "http:exemplars=true;sourceContext=workload|namespace;destinationContext=pod-name",
        "drop:destinationContext=pod-name|dns",
        "tcp:sourceContext=identity;destinationContext=workload",
        "icmp:sourceIngressContext=namespace",
        "port-distribution:sourceContext=dns|ip",
    ],
    "no contexts": ["flows-to-world:any-drop;port", "dns:query", "httpV2", "flow", "drop", "tcp",
                    "icmp", "port-distribution", "policy"],
}

PODS = [fpb.Endpoint(ID=i, identity=1000 + i % 5, namespace=f"ns{i % 3}", pod_name=f"app{i}-5d8f7b9c4-x{i}z7z",
                     cluster_name="c1", pod_uid=f"uid-{i}",
                     labels=[f"k8s:app=app{i}", f"k8s:io.kubernetes.pod.namespace=ns{i % 3}"]
                     + (["k8s:app.kubernetes.io/name=named"] if i % 4 == 0 else []),
                     workloads=[fpb.Workload(name=f"app{i}", kind="Deployment")] if i % 5 else [])
        for i in range(6)]
OTHERS = [fpb.Endpoint(identity=2, labels=["reserved:world"]),
          fpb.Endpoint(identity=1, labels=["reserved:host"]),
          fpb.Endpoint(identity=7, labels=["reserved:kube-apiserver", "reserved:world"]),
          fpb.Endpoint()]
ENDPOINTS = PODS + OTHERS
IPS = ["10.0.0.1", "10.0.0.2", "10.0.1.9", "192.0.2.4", "fd00::5", ""]
NAMES = [[], ["db.example."], ["a.example.", "b.example."]]


def random_flow(rng: random.Random, k: int) -> fpb.Flow:
    c = rng.choice
    f = fpb.Flow(uuid=str(uuid.UUID(int=rng.getrandbits(128))), node_name=c(["n1", "n2"]),
                 verdict=c([fpb.FORWARDED, fpb.FORWARDED, fpb.DROPPED, fpb.REDIRECTED, fpb.ERROR, 77]),
                 drop_reason_desc=c([0, fpb.POLICY_DENIED, fpb.POLICY_DENIED, 133, 9999]),
                 traffic_direction=c([0, fpb.INGRESS, fpb.EGRESS, fpb.EGRESS]),
                 policy_match_type=c([0, 1, 2, 3, 4, 9]), Type=c([fpb.L3_L4, fpb.L7]),
                 Summary=f"summary {k}", proxy_port=rng.randrange(3), socket_cookie=rng.getrandbits(40))
    f.time.FromNanoseconds(1_700_000_000_000_000_000 + k)
    if rng.random() < 0.95:
        f.event_type.type = c([1, 3, 4, 4, 4, 5, 129, 129, 9])
        f.event_type.sub_type = c([0, 3, 5, 10, 99])
    if rng.random() < 0.95:
        f.IP.source, f.IP.destination = c(IPS), c(IPS)
        f.IP.ipVersion = c([fpb.IPv4, fpb.IPv4, fpb.IPv6])
        f.IP.source_xlated = c(["", f"10.9.{k % 256}.1"])
        f.IP.encrypted = rng.random() < 0.2
    proto = c(["TCP", "TCP", "TCP", "UDP", "UDP", "ICMPv4", "ICMPv6", "SCTP", "VRRP", "IGMP", None])
    ephemeral = 30000 + rng.randrange(30000)
    if proto == "TCP":
        f.l4.TCP.source_port = ephemeral
        f.l4.TCP.destination_port = c([80, 443, 9080, ephemeral])
        if rng.random() < 0.9:
            fl = f.l4.TCP.flags
            fl.SetInParent()
            for name in ("SYN", "ACK", "FIN", "RST", "PSH"):
                setattr(fl, name, rng.random() < 0.3)
    elif proto == "UDP":
        f.l4.UDP.source_port = ephemeral
        f.l4.UDP.destination_port = c([53, 53, ephemeral])
    elif proto == "SCTP":
        f.l4.SCTP.source_port, f.l4.SCTP.destination_port = ephemeral, c([36412, ephemeral])
    elif proto in ("ICMPv4", "ICMPv6"):
        m = getattr(f.l4, proto)
        m.type, m.code = c([(0, 0), (3, 3), (8, 0), (128, 0), (1, 4), (200, 1)])
    elif proto == "VRRP":
        f.l4.VRRP.type, f.l4.VRRP.vrid = 1, rng.randrange(3)
    elif proto == "IGMP":
        f.l4.IGMP.type = 0x16
    f.source.CopyFrom(c(ENDPOINTS))
    f.destination.CopyFrom(c(ENDPOINTS))
    f.source_names.extend(c(NAMES))
    f.destination_names.extend(c(NAMES))
    r = rng.random()
    if r < 0.3:
        f.is_reply.value = True
    elif r < 0.85:
        f.is_reply.value = False
    if rng.random() < 0.4:
        f.l7.type = c([fpb.REQUEST, fpb.RESPONSE, fpb.RESPONSE, fpb.SAMPLE, 0])
        f.l7.latency_ns = c([0, 3_000_000, 3_000_000, 70_000_000, 2_000_000_000])
        rec = c(["dns", "http", "http", "kafka", None])
        if rec == "dns":
            d = f.l7.dns
            d.query = c(["db.example.", "x.example."])
            d.ips.extend(c([[], ["10.0.0.1"], ["10.0.0.1", "fd00::1"]]))
            d.ttl, d.observation_source = rng.randrange(300), "proxy"
            d.cnames.extend(c([[], [f"c{k}.example."]]))
            d.rcode = c([0, 0, 3, 5, 42])
            d.qtypes.extend(c([["A"], ["AAAA"], ["A", "AAAA"]]))
            d.rrtypes.extend(c([[], ["A"], ["AAAA", "CNAME"]]))
        elif rec == "http":
            h = f.l7.http
            h.code, h.method = c([200, 200, 404, 503]), c(["GET", "POST"])
            h.protocol, h.url = c(["HTTP/1.1", "HTTP/2"]), f"http://svc/{k}"
            h.headers.add(key="x-request-id", value=str(k))
        elif rec == "kafka":
            f.l7.kafka.topic, f.l7.kafka.correlation_id = "t", k
    if rng.random() < 0.3:
        f.trace_context.parent.trace_id = c(["", "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"])
    return f


def vary(template: fpb.Flow, rng: random.Random, k: int) -> fpb.Flow:
    """The template with what no handler reads changed: time, uuid, node, source ports,
    URLs, headers, TTLs..., and a forwarded reply's destination port."""
    f = fpb.Flow()
    f.CopyFrom(template)
    f.uuid, f.node_name = str(uuid.UUID(int=rng.getrandbits(128))), rng.choice(["n1", "n2", "n3"])
    f.time.FromNanoseconds(1_700_000_000_000_000_000 + k)
    f.Summary, f.socket_cookie, f.proxy_port = f"flow {k}", rng.getrandbits(40), rng.randrange(5)
    if f.HasField("IP"):
        f.IP.source_xlated = rng.choice(["", f"10.9.{k % 256}.1"])
        f.IP.encrypted = rng.random() < 0.5
    which = f.l4.WhichOneof("protocol")
    if which in ("TCP", "UDP", "SCTP"):
        m = getattr(f.l4, which)
        m.source_port = 30000 + rng.randrange(30000)
        if f.is_reply.value and f.verdict != fpb.DROPPED:
            m.destination_port = 30000 + rng.randrange(30000)
    record = f.l7.WhichOneof("record")
    if record == "http":
        f.l7.http.url = f"http://svc/{k}"
        f.l7.http.headers[0].value = str(k)
    elif record == "dns":
        f.l7.dns.ttl = rng.randrange(300)
        del f.l7.dns.cnames[:]
        f.l7.dns.cnames.append(f"c{k}.example.")
    elif record == "kafka":
        f.l7.kafka.correlation_id = k
    return f


def random_flows(rng: random.Random, n: int, templates: int = 300) -> list[fpb.Flow]:
    pool = [random_flow(rng, k) for k in range(templates)]
    return [vary(rng.choice(pool), rng, k) for k in range(n)]


def encode(f: fpb.Flow) -> bytes:
    return opb.GetFlowsResponse(flow=f, node_name=f.node_name, time=f.time).SerializeToString()


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def build(specs: list[str]) -> tuple[Pipeline, SeriesGC | None]:
    p = Pipeline(parse_metrics(specs, PLUGINS))
    gc = None
    if p.binds:
        gc = SeriesGC(p.store, clock=Clock())
        p.set_gc(gc)
    return p, gc


def state(p: Pipeline, gc: SeriesGC | None) -> dict:
    out: dict = {"flows": p.flows, "errors": p.errors, "seen": dict(gc.last_seen) if gc else None}
    for v in p.store.vecs:
        if isinstance(v, CounterVec):
            # items in order: series appear in the order the flows created them
            out[v.name] = (list(v.values.items()), dict(v.bindings),
                           {k: (e.labels, e.value) for k, e in v.exemplars.items()})
        elif isinstance(v, HistogramVec):
            out[v.name] = ([(k, row[:-1], pytest.approx(row[-1], rel=1e-12)) for k, row in v.data.items()],
                           dict(v.bindings),
                           {k: {i: (e.labels, e.value) for i, e in d.items()} for k, d in v.exemplars.items()})
    return out


@pytest.fixture
def digests_always(monkeypatch):
    # the fast path must not hand randomized batches back to the flow-by-flow path
    monkeypatch.setattr(pipeline_mod, "NEW_SHARE_MAX", 2.0)


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_counting_by_digest_equals_counting_flow_by_flow(name, seed, digests_always):
    rng = random.Random(seed)
    flows = random_flows(rng, 3000)
    slow, slow_gc = build(OPTION_SETS[name])
    fast, fast_gc = build(OPTION_SETS[name])
    i = 0
    while i < len(flows):
        n = rng.choice([1, 7, 100, 500])
        chunk = flows[i:i + n]
        slow.process_batch(chunk)
        fast.process_encoded([encode(f) for f in chunk])
        i += n
    assert fast.digest_stats["flow_by_flow"] == 0
    # the randomized flows repeat (so digests are shared) and are counted per digest
    assert fast.digest_stats["distinct"] < len(flows)
    assert fast.digest_stats["recorded"] < fast.digest_stats["distinct"]  # remembered across batches
    assert sum(len(v) for v in slow.store.vecs) > 20
    assert state(fast, fast_gc) == state(slow, slow_gc)


def test_flows_differing_only_in_unread_fields_share_a_digest():
    digest = make_digest()
    rng = random.Random(7)
    a = random_flow(rng, 1)
    a.l4.TCP.source_port, a.l4.TCP.destination_port = 40000, 80
    a.ClearField("l7")
    a.is_reply.value = False
    b = fpb.Flow()
    b.CopyFrom(a)
    b.uuid, b.node_name, b.Summary = str(uuid.uuid4()), "other", "other"
    b.time.FromNanoseconds(5)
    b.l4.TCP.source_port = 40001
    assert digest(encode(a)) == digest(encode(b))
    b.l4.TCP.destination_port = 81  # read: a request's destination port
    assert digest(encode(a)) != digest(encode(b))
    # a forwarded reply's destination port is the client's ephemeral port: not read
    a.is_reply.value = b.is_reply.value = True
    a.verdict = b.verdict = fpb.FORWARDED
    assert digest(encode(a)) == digest(encode(b))
    a.verdict = b.verdict = fpb.DROPPED  # flows-to-world reads it of dropped replies
    assert digest(encode(a)) != digest(encode(b))


def test_failing_handler_counts_an_error_per_flow_both_ways(monkeypatch, digests_always):
    def boom(flow: fpb.Flow) -> None:
        if flow.verdict == fpb.DROPPED:
            raise RuntimeError("boom")
    rng = random.Random(11)
    flows = random_flows(rng, 500)
    results = []
    for encoded in (False, True):
        p, gc = build(["flow", "tcp"])
        monkeypatch.setattr(p.handlers[1], "process", boom)
        p._steps[1] = p.handlers[1].process
        if encoded:
            p.process_encoded([encode(f) for f in flows])
        else:
            p.process_batch(flows)
        results.append(state(p, gc))
    assert results[0]["errors"] == sum(f.verdict == fpb.DROPPED for f in flows) > 0
    assert results[1] == results[0]


def test_batches_of_new_digests_go_flow_by_flow_and_count_the_same():
    rng = random.Random(5)
    flows = [random_flow(rng, k) for k in range(600)]
    for f in flows:  # every flow its own digest
        f.destination.pod_name = f"p{rng.getrandbits(64)}"
    slow, slow_gc = build(list(DASHBOARDS))
    fast, fast_gc = build(list(DASHBOARDS))
    for i in range(0, 600, 100):
        slow.process_batch(flows[i:i + 100])
        fast.process_encoded([encode(f) for f in flows[i:i + 100]])
    assert fast.digest_stats["flow_by_flow"] == 5  # after the first batch (RETRY_BATCHES > 5)
    assert state(fast, fast_gc) == state(slow, slow_gc)


def test_a_metric_with_filters_always_goes_flow_by_flow(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("metrics:\n- name: flow\n  includeFilters: [{source_pod: ['ns1/']}]\n")
    from webb_metrics.config import load_config_file
    p = Pipeline(load_config_file(str(cfg), PLUGINS))
    rng = random.Random(3)
    flows = [random_flow(rng, k) for k in range(200)]
    p.process_encoded([encode(f) for f in flows])
    assert p.digest_stats["flow_by_flow"] == 1
    assert p.flows == 200


def test_long_digests_are_recorded_each_time_never_remembered(digests_always):
    # Label sets are the handlers' own reading and may be long (Kubernetes allows many
    # labels of 316 bytes): MEMO_SIZE digests of many kB would hold gigabytes.
    rng = random.Random(5)
    flows = []
    for k in range(200):
        f = random_flow(rng, k)
        f.source.labels.extend([f"k8s:l{i}=v{k}" + "v" * 60 for i in range(40)])
        flows += [f, f, f]
    name = sorted(OPTION_SETS)[0]
    slow, slow_gc = build(OPTION_SETS[name])
    fast, fast_gc = build(OPTION_SETS[name])
    for i in range(0, len(flows), 50):
        slow.process_batch(flows[i:i + 50])
        fast.process_encoded([encode(f) for f in flows[i:i + 50]])
    assert state(fast, fast_gc) == state(slow, slow_gc)
    assert fast.digest_stats["recorded"] == fast.digest_stats["distinct"]  # none remembered
    assert not any(len(k) > pipeline_mod.MEMO_KEY_MAX for k in list(fast._memo) + list(fast._once))

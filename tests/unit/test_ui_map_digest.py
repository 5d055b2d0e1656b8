"""The service map fed batches of encoded flows by digest (ServiceMap.add_batch, what a
view runs; add_encoded: a batch of one) equals the map fed decoded flows one by one
(ServiceMap.add), on randomized flows that set every field the map reads and vary the
ones it does not (and HTTP latencies, which the map reads apart from the digest); also
at the map's bounds, where cards, arrows and ports are evicted in the middle of a batch."""
from __future__ import annotations

import random
import uuid

import pytest

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb_ui import service_map as sm
from webb_ui.map_digest import digest_batch
from webb_ui.service_map import ServiceMap


def pod(i: int) -> fpb.Endpoint:
    ns = ["shop", "pay", "kube-system"][i % 3]
    ep = fpb.Endpoint(ID=i, identity=1000 + i % 7, namespace=ns, pod_name=f"app{i % 9}-5d8f-{i:03d}",
                      labels=[f"k8s:app=app{i % 9}", f"k8s:version=v{i % 2}",
                              f"k8s:io.kubernetes.pod.namespace={ns}"])
    if i % 4:
        ep.workloads.add(name=f"app{i % 9}", kind="Deployment")
    if i % 5 == 0:
        del ep.labels[0]  # no app label: the workload or the pod names the card
    return ep


ENDPOINTS = [pod(i) for i in range(14)] + [
    fpb.Endpoint(identity=2, labels=["reserved:world"]),
    fpb.Endpoint(identity=1, labels=["reserved:host"]),
    fpb.Endpoint(identity=6, labels=["reserved:remote-node"]),
    fpb.Endpoint(identity=4242), fpb.Endpoint()]
IPS = ["10.0.0.1", "10.0.0.2", "192.0.2.7", "198.51.100.9", "fd00::3", ""]


def template(rng: random.Random) -> fpb.Flow:
    c = rng.choice
    f = fpb.Flow(verdict=c([fpb.FORWARDED, fpb.FORWARDED, fpb.DROPPED, fpb.ERROR, fpb.AUDIT]),
                 Type=c([fpb.L3_L4, fpb.L3_L4, fpb.L7]), node_name=c(["", "n1", "n2"]),
                 traffic_direction=c([0, fpb.INGRESS, fpb.EGRESS]),
                 drop_reason_desc=c([0, fpb.POLICY_DENIED, 181, 9999]),
                 ext_drop_reason_desc=c(["", "", "CT_MAP_INSERTION_FAILED"]), reply=rng.random() < 0.2)
    f.source.CopyFrom(c(ENDPOINTS))
    f.destination.CopyFrom(c(ENDPOINTS))
    if rng.random() < 0.9:
        f.IP.source, f.IP.destination = c(IPS), c(IPS)
    proto = c(["TCP", "TCP", "TCP", "UDP", "UDP", "SCTP", "ICMPv4", "ICMPv6", "IGMP", None])
    service, ephemeral = c([53, 80, 443, 9080, 5432]), c([33000, 41000, 60000, 1024])
    r = rng.random()
    if r < 0.35:
        f.is_reply.value = True
    elif r < 0.85:
        f.is_reply.value = False
    reply = f.is_reply.value if f.HasField("is_reply") else rng.random() < 0.5
    sport, dport = (service, ephemeral) if reply else (ephemeral, service)
    if proto in ("TCP", "UDP", "SCTP"):
        m = getattr(f.l4, proto)
        m.source_port, m.destination_port = sport, dport
        if proto == "TCP":
            m.flags.SYN, m.flags.ACK = rng.random() < 0.3, rng.random() < 0.7
    elif proto in ("ICMPv4", "ICMPv6"):
        getattr(f.l4, proto).type = c([0, 8, 128])
    elif proto == "IGMP":
        f.l4.IGMP.type = 0x16
    if f.Type == fpb.L7 or rng.random() < 0.05:
        f.l7.type = c([fpb.REQUEST, fpb.RESPONSE, fpb.RESPONSE, fpb.SAMPLE])
        f.l7.latency_ns = c([0, 1_500_000, 20_000_000, 3_000_000_000])
        rec = c(["http", "http", "dns", "kafka", None])
        if rec == "http":
            f.l7.http.method, f.l7.http.code = c(["GET", "POST", ""]), c([0, 200, 404, 503])
            f.l7.http.url = c(["http://svc/api/1", "http://svc/api/2?x=1", "", "%%bad"])
        elif rec == "dns":
            f.l7.dns.query, f.l7.dns.rcode = c(["a.example.", "", "b.example."]), c([0, 3, 5])
        elif rec == "kafka":
            f.l7.kafka.topic = "t"
    return f


def vary(t: fpb.Flow, rng: random.Random, k: int) -> fpb.Flow:
    """The template with what the map does not read changed: time, uuid, Summary, event
    type, flags other than SYN/ACK, the client's ephemeral port of a flow known to be a
    request or a reply, HTTP protocol and headers, DNS details."""
    f = fpb.Flow()
    f.CopyFrom(t)
    f.uuid, f.Summary = str(uuid.UUID(int=rng.getrandbits(128))), f"flow {k}"
    f.time.FromNanoseconds(1_700_000_000_000_000_000 + k)
    f.event_type.type, f.event_type.sub_type = rng.choice([1, 4, 129]), rng.randrange(10)
    f.IP.ipVersion = rng.choice([fpb.IPv4, fpb.IPv6])
    which = f.l4.WhichOneof("protocol")
    if which in ("TCP", "UDP", "SCTP"):
        m = getattr(f.l4, which)
        if f.HasField("is_reply"):
            eph = 32768 + rng.randrange(30000)
            if f.is_reply.value:
                m.destination_port = eph
            else:
                m.source_port = eph
        if which == "TCP":
            m.flags.FIN, m.flags.RST, m.flags.PSH = (rng.random() < 0.3 for _ in range(3))
    if f.l7.latency_ns:  # read (an HTTP response's), but not in the digest
        f.l7.latency_ns = rng.choice([1, 800_000, 1_500_000, 20_000_000, 3_000_000_000]) + rng.randrange(1000)
    if f.l7.WhichOneof("record") == "http":
        f.l7.http.protocol = rng.choice(["HTTP/1.1", "HTTP/2"])
        f.l7.http.headers.add(key="x-id", value=str(k))
    elif f.l7.WhichOneof("record") == "dns":
        f.l7.dns.ttl = rng.randrange(300)
        f.l7.dns.ips.append(f"10.1.{k % 250}.1")
        f.l7.dns.qtypes.append(rng.choice(["A", "AAAA"]))
    return f


def encode(f: fpb.Flow) -> bytes:
    return opb.GetFlowsResponse(flow=f, node_name=f.node_name, time=f.time).SerializeToString()


def state(m: ServiceMap) -> dict:
    return {"cards": m.cards_json(), "arrows": m.arrows_json(),
            "order": (list(m.cards), list(m.arrows)), "counts": (m.flows, m.version, m.evicted),
            "ports": {k: [(p.port, p.protocol, p.flows, sorted(p.l7)) for p in c.ports.values()]
                      for k, c in m.cards.items()},
            "sets": {k: (sorted(c.ips), sorted(c.nodes), sorted(c.pods), c.first_seen, c.last_seen)
                     for k, c in m.cards.items()},
            "eps": sorted((k, c.sid.key) for k, c in m._eps.items())}


def feed(bounds: dict, flows: list[fpb.Flow], rng: random.Random) -> tuple[ServiceMap, ...]:
    """(flow by flow, encoded one by one, encoded in batches)"""
    one, enc, bat = ServiceMap(**bounds), ServiceMap(**bounds), ServiceMap(**bounds)
    now, i = 1000.0, 0
    while i < len(flows):
        n = rng.choice([1, 50, 256, 1000])
        batch = flows[i:i + n]  # one time for all its flows, as View._take
        for f in batch:
            one.add(f, now)
            enc.add_encoded(encode(f), now)
        bat.add_batch([encode(f) for f in batch], now)
        i += n
        if i < len(flows):
            now += 100.0 if i % 3 == 0 else rng.choice([0.5, 3.0, 40.0])  # past the TTL now and then
            for m in (one, enc, bat):
                m.expire(now)
    return one, enc, bat


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_adding_by_digest_builds_the_same_map(seed):
    rng = random.Random(seed)
    pool = [template(rng) for _ in range(250)]
    flows = [vary(rng.choice(pool), rng, k) for k in range(4000)]
    one, enc, bat = feed({"ttl": 60.0}, flows, rng)
    assert one.flows == len(flows) and len(one.arrows) > 20 and one.evicted > 0
    assert sum(f.Type == fpb.L7 and f.l7.type == fpb.RESPONSE and f.l7.WhichOneof("record") == "http"
               and f.l7.latency_ns > 0 for f in flows) > 100  # latencies, read apart from the digest
    assert state(enc) == state(one)
    assert state(bat) == state(one)
    # flows of one connection share a digest; replies and requests alike
    assert len(bat._routes) < len({encode(f) for f in flows}) / 4


@pytest.mark.parametrize("seed", [5, 6])
def test_adding_by_digest_builds_the_same_map_at_its_bounds(seed, monkeypatch):
    monkeypatch.setattr(sm, "MAX_SET", 3)  # ports, pods, addresses per card
    rng = random.Random(seed)
    pool = [template(rng) for _ in range(250)]
    flows = [vary(rng.choice(pool), rng, k) for k in range(3000)]
    one, enc, bat = feed({"max_cards": 6, "max_arrows": 9, "ttl": 900.0}, flows, rng)
    assert one.evicted > 100
    assert state(enc) == state(one)
    assert state(bat) == state(one)


def digest(raw: bytes) -> bytes | None:
    return digest_batch([raw])[0][0]


def test_digest_keeps_what_the_map_reads():
    f = fpb.Flow(verdict=fpb.FORWARDED, Type=fpb.L3_L4, node_name="n1", traffic_direction=fpb.EGRESS)
    f.source.CopyFrom(ENDPOINTS[0])
    f.destination.CopyFrom(ENDPOINTS[1])
    f.l4.TCP.source_port, f.l4.TCP.destination_port = 40000, 80
    f.is_reply.value = False
    g = fpb.Flow()
    g.CopyFrom(f)
    g.l4.TCP.source_port, g.uuid = 40001, "x"
    assert digest(encode(f)) == digest(encode(g))  # a request's source port is not read
    g.l4.TCP.destination_port = 81
    assert digest(encode(f)) != digest(encode(g))
    f.ClearField("is_reply")
    assert digest(encode(f)) is None  # guessed from the ports the map knows: added on its own


def test_http_latency_is_handed_back_beside_the_digest():
    flows = []
    for ns in (5_000_000, 7_000_000, 0):
        f = fpb.Flow(verdict=fpb.FORWARDED, Type=fpb.L7)
        f.source.CopyFrom(ENDPOINTS[1])
        f.destination.CopyFrom(ENDPOINTS[0])
        f.l4.TCP.source_port, f.l4.TCP.destination_port = 80, 40000 + ns % 7
        f.is_reply.value = True
        f.l7.type, f.l7.latency_ns = fpb.RESPONSE, ns
        f.l7.http.code, f.l7.http.method, f.l7.http.url = 200, "GET", "http://svc/a"
        flows.append(encode(f))
    keys, latencies = digest_batch(flows)
    assert keys[0] == keys[1] == keys[2] and latencies == {0: 5_000_000, 1: 7_000_000}
    m = ServiceMap()
    m.add_batch(flows, 1.0)
    [arrow] = m.arrows.values()
    h = arrow.http
    assert (h.responses, h.latency.count, h.latency.total_ms) == (3, 2, 12.0)


def test_a_route_through_a_dropped_port_is_resolved_again(monkeypatch):
    monkeypatch.setattr(sm, "MAX_SET", 3)
    flows = []
    # 82's route is remembered (seen twice); 83 evicts the least used port (82); the
    # next 82 must find its port gone and evict 83 in turn
    for port in (80, 80, 80, 81, 81, 81, 82, 82, 83, 82):
        f = fpb.Flow(verdict=fpb.FORWARDED, Type=fpb.L3_L4)
        f.source.CopyFrom(ENDPOINTS[0])
        f.destination.CopyFrom(ENDPOINTS[1])
        f.l4.TCP.source_port, f.l4.TCP.destination_port = 40000 + len(flows), port
        f.is_reply.value = False
        flows.append(f)
    one, enc = ServiceMap(), ServiceMap()
    for f in flows:
        one.add(f, 1.0)
        enc.add_encoded(encode(f), 1.0)
    assert [(p.port, p.flows) for p in one.cards["pay/app1"].ports.values()] == [(80, 3), (81, 3), (82, 1)]
    assert state(enc) == state(one)


def test_a_view_takes_flows_of_a_mixed_batch_and_counts_lost_events():
    """View._take: flows go to the window (in order, numbered) and the map; node status
    and empty entries are skipped; lost events are counted."""
    from webb.api.relay import relay_pb2
    from webb.flow_follow import Batch
    from webb_ui.query import build_query
    from webb_ui.settings import Settings
    from webb_ui.view import View

    rng = random.Random(9)
    pool = [template(rng) for _ in range(20)]
    flows = [vary(rng.choice(pool), rng, k) for k in range(600)]
    lost = opb.GetFlowsResponse(lost_events=fpb.LostEvent(num_events_lost=7)).SerializeToString()
    status = opb.GetFlowsResponse(node_status=relay_pb2.NodeStatusEvent(
        state_change=relay_pb2.NODE_CONNECTED, node_names=["n1"])).SerializeToString()
    raws = [encode(f) for f in flows]
    mixed = raws[:100] + [lost, status, b""] + raws[100:] + [lost]
    view = View(build_query(None, []), None, Settings(flows_window=500))  # type: ignore[arg-type]
    view._take(Batch(mixed[:50], [1] * 50, [""] * 50))
    view._take(Batch(mixed[50:], [2] * (len(mixed) - 50), [""] * (len(mixed) - 50)))
    one = ServiceMap(view.settings.max_cards, view.settings.max_arrows, view.settings.map_ttl)
    for f in flows:
        one.add(f, 1.0)
    assert view.seq == 600 and view.lost == 14 and view.map.flows == 600
    assert list(view.window) == list(zip(range(101, 601), raws[100:]))
    counts = lambda m: {k: (a.forwarded, a.dropped, a.other) for k, a in m.arrows.items()}  # noqa: E731
    assert counts(view.map) == counts(one) and len(one.arrows) > 5


def test_long_digests_are_resolved_each_time_never_kept():
    # Proxied heads may carry 60 KiB URLs: remembering ROUTES_MAX such digests would hold
    # gigabytes. Each flow comes twice (a second sighting is what gets a digest kept).
    rng = random.Random(11)
    flows = []
    for k in range(300):
        f = template(rng)
        f.Type, f.verdict = fpb.L7, fpb.FORWARDED
        f.l7.type = fpb.REQUEST
        f.l7.http.method, f.l7.http.url = "GET", f"http://svc/{k}/" + "a" * (4000 if k % 3 else 10)
        flows += [f, f]
    one, bat = ServiceMap(), ServiceMap()
    for f in flows:
        one.add(f, 1000.0)
    bat.add_batch([encode(f) for f in flows], 1000.0)
    assert state(bat) == state(one)
    kept = list(bat._routes) + list(bat._once)
    assert kept and max(map(len, kept)) <= sm.ROUTE_KEY_MAX  # short digests are still kept

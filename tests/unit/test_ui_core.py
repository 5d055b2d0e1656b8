"""webb-ui's pieces without a server: filter terms -> FlowFilters, the service map
aggregation (verdicts, L7, replies, bounds), the layered layout and table rows."""
from __future__ import annotations

import itertools
import random
import re

import pytest
from google.protobuf.json_format import MessageToDict

from test_ui_flowserver import bookinfo_flows, http_pair, make_flow
from webb.api.flow import flow_pb2 as fpb
from webb.filters import build_filter
from webb_ui.flow_row import l7_info, tcp_flags, to_json, to_row
from webb_ui.layout import layout
from webb_ui.query import SPLIT_PATTERN, QueryError, build_query, grammar, parse_term
from webb_ui.service import identify
from webb_ui.service_map import ServiceMap
from webb_ui.view import _arrow_label, _pair_labels


def ff(q) -> tuple[list[dict], list[dict]]:
    wl, bl = q.flow_filters()
    return ([MessageToDict(f, preserving_proto_field_name=True) for f in wl],
            [MessageToDict(f, preserving_proto_field_name=True) for f in bl])


# --- filter terms -------------------------------------------------------------------

def test_term_parsing_and_canonical_form():
    t = parse_term("!from:pod=bookinfo/reviews-")
    assert (t.kind, t.value, t.direction, t.negate) == ("pod", "bookinfo/reviews-", "from", True)
    assert str(t) == "!from:pod=bookinfo/reviews-"
    assert str(parse_term("both:label=app=x")) == "label=app=x"
    assert str(parse_term("verdict=dropped")) == "verdict=DROPPED"
    assert str(parse_term("status=5+")) == "http-status=5+"
    assert parse_term("to:ip=10.0.0.0/8").direction == "to"


def test_the_grammar_the_page_reads_is_the_one_the_server_parses_with():
    g = grammar()
    assert [k["name"] for k in g["kinds"]][:3] == ["namespace", "pod", "label"]
    assert {k["name"]: k["directional"] for k in g["kinds"]}["verdict"] is False
    assert g["aliases"]["status"] == "http-status" and g["direction_aliases"] == {"both": "either"}
    assert g["syntax"] == "[!][from:|to:|either:]kind=value"
    # the patterns are plain enough for JavaScript too (no named groups, no \\Z)
    assert "(?P" not in g["term_pattern"] and "\\Z" not in g["term_pattern"]
    split = re.compile(g["split_pattern"], re.I)
    assert split.split("from:pod=a  To:port=80 label=app in (a, b) !status=5+ Both:ns=x") == [
        "from:pod=a", "To:port=80", "label=app in (a, b)", "!status=5+", "Both:ns=x"]
    assert g["split_pattern"] == SPLIT_PATTERN
    assert str(parse_term(" ! to : port = 80 ")) == "!to:port=80"
    with pytest.raises(QueryError, match=re.escape(g["syntax"])):
        parse_term("no-equals-sign")


@pytest.mark.parametrize("bad", ["verdict=nope", "from:verdict=DROPPED", "port=70000", "ip=10.0.0.300",
                                 "identity=martian", "colour=red", "nonsense", "sideways:pod=a",
                                 "label=app in (", "http-status=600"])
def test_bad_terms_are_rejected(bad):
    with pytest.raises(QueryError):
        build_query("", [bad])


def test_namespace_is_either_side():
    wl, bl = ff(build_query("bookinfo", []))
    assert wl == [{"source_pod": ["bookinfo/"]}, {"destination_pod": ["bookinfo/"]}]
    assert bl == []


def test_all_namespaces_no_filters_is_everything():
    assert ff(build_query("", [])) == ([], [])


def test_same_kind_same_direction_or_different_kinds_and():
    wl, _ = ff(build_query("", ["from:label=app=a", "from:label=app=b", "to:port=9080", "verdict=DROPPED"]))
    assert wl == [{"source_label": ["app=a", "app=b"], "destination_port": ["9080"], "verdict": ["DROPPED"]}]


def test_negation_goes_to_the_blacklist():
    wl, bl = ff(build_query("", ["!verdict=FORWARDED", "!pod=kube-system/", "!from:port=53"]))
    assert wl == []
    assert {"verdict": ["FORWARDED"]} in bl
    assert {"source_pod": ["kube-system/"]} in bl and {"destination_pod": ["kube-system/"]} in bl
    assert {"source_port": ["53"]} in bl and len(bl) == 4


def test_namespace_and_pod_intersect_on_the_same_field():
    wl, _ = ff(build_query("bookinfo", ["from:pod=bookinfo/reviews-"]))
    # (src in bookinfo OR dst in bookinfo) AND src pod reviews-*
    assert {"source_pod": ["bookinfo/reviews-"]} in wl
    assert {"source_pod": ["bookinfo/reviews-"], "destination_pod": ["bookinfo/"]} in wl
    wl, _ = ff(build_query("bookinfo", ["from:pod=kube-system/coredns"]))
    assert wl == [{"destination_pod": ["bookinfo/"], "source_pod": ["kube-system/coredns"]}]


def test_labels_and_cidrs_intersect():
    wl, _ = ff(build_query("", ["from:label=app=a", "label=version=v2"]))
    assert {"source_label": ["app=a,version=v2"]} in wl
    wl, _ = ff(build_query("", ["from:ip=10.0.0.0/8", "from:ip=10.1.0.0/16"]))
    assert wl == [{"source_ip": ["10.0.0.0/8", "10.1.0.0/16"]}]  # same kind+direction: OR
    wl, _ = ff(build_query("", ["from:ip=10.0.0.0/8", "ip=10.1.2.3"]))
    assert {"source_ip": ["10.1.2.3"]} in wl


def test_contradictions_match_nothing():
    q = build_query("bookinfo", ["from:pod=kube-system/a", "to:pod=kube-system/b"])
    assert q.flow_filters() is None


def test_either_terms_expand_and_stay_bounded(monkeypatch):
    q = build_query("", [f"label=k{i}=v" for i in range(3)])  # same kind: one group, 2 alternatives
    assert len(q.flow_filters()[0]) == 2
    kinds = ["label=a=b", "identity=5", "ip=10.0.0.1", "port=80", "pod=default/x", "workload=y"]
    assert len(build_query("", kinds).flow_filters()[0]) == 64
    monkeypatch.setattr("webb_ui.query.MAX_ALTERNATIVES", 32)
    with pytest.raises(QueryError):
        build_query("", kinds)


def test_flowfilters_match_like_the_terms_say():
    """The generated filters, applied with Hubble semantics, select what the user asked."""
    flows = bookinfo_flows()

    def sel(ns, terms):
        wl, bl = build_query(ns, terms).flow_filters()
        m = build_filter(wl, bl)
        return [f for f in flows if m(f)]

    got = sel("", ["verdict=DROPPED"])
    assert got and all(f.verdict == fpb.DROPPED for f in got)
    got = sel("bookinfo", ["!verdict=FORWARDED", "to:label=app=ratings"])
    assert len(got) == 3 and all(f.destination.pod_name.startswith("ratings") for f in got)
    got = sel("", ["identity=world"])
    assert len(got) == 2 and all(f.source.identity == 2 for f in got)
    got = sel("kube-system", [])
    assert got and all("coredns" in f.destination.pod_name for f in got)
    got = sel("", ["protocol=udp", "to:port=53"])
    assert len(got) == 3
    got = sel("", ["http-status=5+"])
    assert len(got) == 1 and got[0].l7.http.code == 503
    got = sel("", ["ip=192.0.2.0/24"])
    assert len(got) == 2
    card = identify(bookinfo_flows()[2].destination)  # details
    got = sel("", [card.term])
    assert got and all("details" in (f.source.pod_name + f.destination.pod_name) for f in got)


# --- service cards -------------------------------------------------------------------

def test_cards_group_versions_and_reserved_identities():
    rv1 = identify(make_flow("reviews-v1", "ratings").source)
    rv2 = identify(make_flow("reviews-v2", "ratings").source)
    assert rv1 == rv2 and rv1.key == "bookinfo/reviews" and rv1.name == "reviews"
    dns = identify(make_flow("productpage", "coredns").destination)
    assert dns.name == "kube-dns" and dns.namespace == "kube-system"
    world = identify(make_flow("world", "productpage").source)
    assert (world.key, world.kind, world.term) == ("reserved:world", "world", "identity=2")
    host = identify(fpb.Endpoint(identity=1, labels=["reserved:host"]))
    assert host.kind == "host"
    anon = identify(fpb.Endpoint(identity=12345))
    assert anon.kind == "unknown" and anon.term == "identity=12345"


# --- the service map ---------------------------------------------------------------

def build_map(flows) -> ServiceMap:
    m = ServiceMap()
    for f in flows:
        m.add(f, 1000.0)
    return m


def test_map_cards_arrows_verdicts_and_l7():
    m = build_map(bookinfo_flows())
    cards = {c["id"]: c for c in m.cards_json()}
    assert set(cards) == {"default/loadgen", "bookinfo/productpage", "bookinfo/details", "bookinfo/reviews",
                          "bookinfo/ratings", "kube-system/kube-dns", "reserved:world"}
    reviews = cards["bookinfo/reviews"]
    assert reviews["identities"] == [259, 260]
    assert reviews["workloads"] == ["Deployment/reviews-v1", "Deployment/reviews-v2"]
    assert ["app", ["reviews"]] in reviews["labels"] and ["version", ["v1", "v2"]] in reviews["labels"]
    assert not any(k.startswith("io.") for k, _ in reviews["labels"])
    assert cards["bookinfo/details"]["ports"] == [{"port": 9080, "protocol": "TCP", "l7": ["HTTP"], "flows": 4}]
    assert cards["kube-system/kube-dns"]["ports"][0]["protocol"] == "UDP"
    assert cards["reserved:world"]["ips"] == ["192.0.2.50"]

    arrows = {a["id"]: a for a in m.arrows_json()}
    assert set(arrows) == {
        "default/loadgen>bookinfo/productpage:9080/TCP", "bookinfo/productpage>bookinfo/details:9080/TCP",
        "bookinfo/productpage>bookinfo/reviews:9080/TCP", "bookinfo/reviews>bookinfo/ratings:9080/TCP",
        "bookinfo/productpage>kube-system/kube-dns:53/UDP", "reserved:world>bookinfo/productpage:9080/TCP"}
    lg = arrows["default/loadgen>bookinfo/productpage:9080/TCP"]
    assert lg["flows"] == {"forwarded": 3, "dropped": 0, "other": 0, "total": 3}  # replies draw nothing
    rr = arrows["bookinfo/reviews>bookinfo/ratings:9080/TCP"]
    assert rr["verdict"] == "mixed" and rr["flows"]["dropped"] == 3
    assert rr["drop_reasons"] == {"POLICY_DENIED": 3}
    pd = arrows["bookinfo/productpage>bookinfo/details:9080/TCP"]
    assert pd["http"]["statuses"] == {"200": 1} and pd["http"]["requests"] == 1
    assert pd["http"]["routes"][0]["method"] == "GET" and pd["http"]["routes"][0]["path"] == "/details/0"
    assert pd["http"]["latency"]["avg_ms"] == pytest.approx(2.0)
    pr = arrows["bookinfo/productpage>bookinfo/reviews:9080/TCP"]
    assert pr["http"]["statuses"] == {"503": 1} and pr["http"]["latency"]["p95_ms"] == 50
    assert _arrow_label(pr) == ["7 flows", "HTTP 5xx×1 p95 ≤50ms"]


def test_only_dropped_is_dropped():
    m = build_map([make_flow("reviews-v1", "ratings", verdict=fpb.DROPPED)] * 2)
    (a,) = m.arrows_json()
    assert a["verdict"] == "dropped" and _arrow_label(a)[0] == "2 flows · 2 dropped"


def test_replies_of_unknown_direction_join_their_request():
    """Kernel drops come without is_reply: a dropped FIN from the server to the client's
    ephemeral port is a drop on the client->server arrow, not an arrow of its own."""
    m = build_map(bookinfo_flows())
    fin = make_flow("productpage", "loadgen", 9080, reply=True, sport=44338, verdict=fpb.DROPPED,
                    flags=("FIN", "ACK"))
    fin.ClearField("is_reply")
    m.add(fin, 1.0)
    arrows = {a["id"]: a for a in m.arrows_json()}
    assert "bookinfo/productpage>default/loadgen:44338/TCP" not in arrows
    assert arrows["default/loadgen>bookinfo/productpage:9080/TCP"]["flows"]["dropped"] == 1
    # a SYN to a closed port is a request, whatever the ports look like
    syn = make_flow("details", "ratings", 9999, verdict=fpb.DROPPED, sport=35494, flags=("SYN",))
    syn.ClearField("is_reply")
    m.add(syn, 1.0)
    a = next(a for a in m.arrows_json() if a["id"] == "bookinfo/details>bookinfo/ratings:9999/TCP")
    assert a["verdict"] == "dropped"
    # nothing known about the ports: the ephemeral one is the client's
    udp = make_flow("coredns", "productpage", 53, "UDP", sport=53, verdict=fpb.DROPPED)
    udp.ClearField("is_reply")
    udp.l4.UDP.source_port, udp.l4.UDP.destination_port = 53, 40001
    m2 = build_map([udp])
    assert [x["id"] for x in m2.arrows_json()] == ["bookinfo/productpage>kube-system/kube-dns:53/UDP"]


def test_dns_stats():
    q = fpb.Layer7(type=fpb.REQUEST, dns=fpb.DNS(query="details.bookinfo.svc.cluster.local.", qtypes=["A"]))
    r = fpb.Layer7(type=fpb.RESPONSE, dns=fpb.DNS(query="details.bookinfo.svc.cluster.local.", rcode=3))
    m = build_map([make_flow("productpage", "coredns", 53, "UDP", l7=q),
                   make_flow("coredns", "productpage", 53, "UDP", reply=True, l7=r)])
    (a,) = m.arrows_json()
    assert a["dns"]["queries"] == {"details.bookinfo.svc.cluster.local.": 1}
    assert a["dns"]["rcodes"] == {"NXDOMAIN": 1}
    assert m.cards["kube-system/kube-dns"].ports[(53, "UDP")].l7 == {"DNS"}


def test_map_bounds_and_expiry():
    m = ServiceMap(max_cards=4, max_arrows=3, ttl=10)
    names = ["loadgen", "productpage", "details", "reviews-v1", "ratings", "coredns"]
    for i, (a, b) in enumerate(itertools.permutations(names, 2)):
        m.add(make_flow(a, b), 100.0 + i)
    assert len(m.cards) <= 4 and len(m.arrows) <= 3
    m.expire(100.0 + 30 + 10 + 1)
    assert not m.arrows and not m.cards


def test_unbounded_values_stay_bounded():
    m = ServiceMap()
    for i in range(500):
        f = make_flow("productpage", "details", dport=1000 + i)
        f.destination.labels.append(f"k8s:x{i}=y")
        f.destination.pod_name = f"details-{i}"
        m.add(f, 1.0)
        for f in http_pair("productpage", "details", url=f"/p/{i}"):
            m.add(f, 1.0)
    c = m.cards["bookinfo/details"]
    assert len(c.ports) <= 32 and len(c.labels) <= 32 and len(c.pods) <= 32
    arrow = next(a for a in m.arrows.values() if a.http)
    assert len(arrow.http.routes) <= 17


# --- layout --------------------------------------------------------------------------

def overlaps(a, b, pad=0.0) -> bool:
    return (a["x"] < b["x"] + b["w"] + pad and b["x"] < a["x"] + a["w"] + pad and
            a["y"] < b["y"] + b["h"] + pad and b["y"] < a["y"] + a["h"] + pad)


def laid_out(flows):
    m = build_map(flows)
    cards, arrows = m.cards_json(), m.arrows_json()
    _pair_labels(arrows)
    layout(cards, arrows)
    return {c["id"]: c for c in cards}, arrows


def test_bookinfo_layout_callers_left_callees_right_no_overlaps():
    cards, arrows = laid_out(bookinfo_flows())
    col = {k: c["column"] for k, c in cards.items()}
    assert col["default/loadgen"] < col["bookinfo/productpage"] < col["bookinfo/reviews"] < col["bookinfo/ratings"]
    assert col["bookinfo/productpage"] < col["bookinfo/details"]
    assert col["reserved:world"] < col["bookinfo/productpage"]
    for a, b in itertools.combinations(cards.values(), 2):
        assert not overlaps(a, b), (a["id"], b["id"])
    for a in arrows:
        assert a["kind"] == "forward"
        src, dst = cards[a["source"]], cards[a["target"]]
        (x0, y0), (x1, y1) = a["points"][0], a["points"][-1]
        assert x0 == src["x"] + src["w"] and src["y"] <= y0 <= src["y"] + src["h"]
        port_row = next(r for r in dst["rows"] if r["type"] == "port" and r["port"] == a["port"])
        assert x1 == dst["x"] and y1 == dst["y"] + port_row["y"] + port_row["h"] / 2
    # arrows stay out of cards they do not connect: every intermediate point lies in a gap
    for a in arrows:
        for x, y in a["points"][1:-1]:
            for c in cards.values():
                if c["id"] not in (a["source"], a["target"]):
                    assert not (c["x"] < x < c["x"] + c["w"] and c["y"] < y < c["y"] + c["h"])


def test_arrow_labels_overlap_neither_each_other_nor_cards():
    cards, arrows = laid_out(bookinfo_flows())
    boxes = []
    for a in arrows:
        if not a["label"]:
            continue
        w, h = a["label_size"]  # what the page draws (layout.LABEL, sent in bounds)
        boxes.append((a["label_at"][0], a["label_at"][1], w, h))
    for (x1, y1, w1, h1), (x2, y2, w2, h2) in itertools.combinations(boxes, 2):
        assert not (abs(x1 - x2) * 2 < w1 + w2 and abs(y1 - y2) * 2 < h1 + h2)
    for x, y, w, h in boxes:
        for c in cards.values():
            assert not (abs(c["x"] + c["w"] / 2 - x) * 2 < c["w"] + w and
                        abs(c["y"] + c["h"] / 2 - y) * 2 < c["h"] + h), c["id"]


def test_light_reverse_traffic_does_not_turn_the_layout_around():
    """ICMPv6 neighbour discovery goes both ways between pods; callers stay left."""
    flows = bookinfo_flows() * 3
    for a, b in [("productpage", "loadgen"), ("reviews-v1", "productpage"), ("details", "productpage"),
                 ("ratings", "reviews-v2"), ("coredns", "reviews-v1")]:
        flows.append(make_flow(a, b, proto="ICMPv4"))
    cards, arrows = laid_out(flows)
    col = {k: c["column"] for k, c in cards.items()}
    assert col["default/loadgen"] < col["bookinfo/productpage"] < col["bookinfo/reviews"] < col["bookinfo/ratings"]
    assert col["bookinfo/productpage"] < col["bookinfo/details"]
    back = {(a["source"], a["target"]) for a in arrows if a["kind"] == "back"}
    assert ("bookinfo/productpage", "default/loadgen") in back and ("bookinfo/reviews", "bookinfo/productpage") in back
    for a, b in itertools.combinations(cards.values(), 2):
        assert not overlaps(a, b)


def test_cycles_self_loops_and_random_graphs_lay_out_without_overlaps():
    rng = random.Random(7)
    names = ["loadgen", "productpage", "details", "reviews-v1", "ratings", "coredns", "world"]
    for _ in range(30):
        flows = [make_flow(rng.choice(names), rng.choice(names), dport=rng.choice([80, 9080, 53]))
                 for _ in range(rng.randint(1, 25))]
        cards, arrows = laid_out(flows)
        for a, b in itertools.combinations(cards.values(), 2):
            assert not overlaps(a, b)
        assert all(len(a["points"]) >= 2 for a in arrows)


def _synthetic(n_cards: int, n_arrows: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    cards = [{"id": f"ns/c{i}", "kind": "service", "name": f"c{i}", "namespace": "ns", "h": 60}
             for i in range(n_cards)]
    arrows = []
    for j in range(n_arrows):
        s, t = rng.sample(range(n_cards), 2)
        arrows.append({"id": f"a{j}", "source": f"ns/c{s}", "target": f"ns/c{t}", "port": 80,
                       "protocol": "TCP", "flows": {"total": rng.randint(1, 50)}})
    return cards, arrows


def _ordered(cards, arrows):
    from webb_ui import layout as lay

    g = lay._graph(cards, arrows)
    lay._break_cycles(g)
    lay._assign_layers(g)
    lay._add_dummies(g)
    return lay, g


def test_barycenter_sweeps_reduce_crossings_and_large_graphs_keep_the_dfs_order(monkeypatch):
    lay, g = _ordered(*_synthetic(30, 80, 3))
    initial = lay._initial_order(g)
    lay._order_layers(g)
    assert len(g.dag) <= lay.SWEEP_MAX_EDGES
    assert lay._crossings(g.order, g.succ) < lay._crossings(initial, g.succ)
    # above the limit the DFS order is kept as it is: no O(E^2) crossing counts
    monkeypatch.setattr(lay, "SWEEP_MAX_EDGES", len(g.dag) - 1)
    monkeypatch.setattr(lay, "_crossings", lambda *a: pytest.fail("crossings counted"))
    lay._order_layers(g)
    assert g.order == initial


def test_layout_of_many_services_has_no_overlaps():
    # How long this takes is bench/ui_bench.py's business, not a test's.
    flows = []
    for i in range(150):
        f = make_flow("productpage", "details")
        f.source.labels[0] = f"k8s:app=svc{i}"
        f.destination.labels[0] = f"k8s:app=svc{(i * 7 + 3) % 150}"
        f.source.pod_name, f.destination.pod_name = f"a{i}", f"b{i}"
        flows.append(f)
    cards, _ = laid_out(flows)
    assert len(cards) == 150
    for a, b in itertools.combinations(cards.values(), 2):
        assert not overlaps(a, b)


# --- table rows ------------------------------------------------------------------------

def test_rows_have_hubble_ui_columns():
    f = make_flow("productpage", "details", flags=("SYN", "ACK"), node="n2")
    r = to_row(f)
    assert r["src"]["pod"] == "productpage-v1-5d8-aaaaa" and r["src"]["identity"] == 257
    assert r["dst"]["ip"] == "10.244.1.12" and r["dst"]["service"] == "details"
    assert (r["dport"], r["protocol"], r["flags"], r["verdict"]) == (9080, "TCP", "SYN, ACK", "FORWARDED")
    assert r["direction"] == "egress" and r["node"] == "n2" and r["reply"] is False
    d = to_row(make_flow("reviews-v1", "ratings", verdict=fpb.DROPPED))
    assert d["verdict"] == "DROPPED" and d["drop_reason"] == "POLICY_DENIED"
    req, resp = http_pair("productpage", "reviews-v2", url="/reviews/0?x=1", code=503, latency_ms=40)
    assert l7_info(req) == "HTTP GET /reviews/0"
    assert l7_info(resp) == "HTTP 503 GET /reviews/0 (40.0 ms)"
    icmp = to_row(make_flow("world", "productpage", proto="ICMPv4"))
    assert icmp["protocol"] == "ICMPv4" and icmp["icmp"] == {"type": 8, "code": 0}
    assert tcp_flags(make_flow("a" and "loadgen", "productpage", proto="UDP")) == ""
    j = to_json(f)
    assert j["source"]["pod_name"] == "productpage-v1-5d8-aaaaa" and j["l4"]["TCP"]["destination_port"] == 9080

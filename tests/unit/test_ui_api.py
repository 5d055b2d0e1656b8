"""webb-ui's JSON API and live events, with the real `webb-ui` process reading from a
small real gRPC server (test_ui_flowserver) that streams hand-built flows."""
from __future__ import annotations

import re
import threading
import time

import pytest

from support import free_port, wait_for
from test_ui_flowserver import FlowServer, UIProc, bookinfo_flows, http_pair, make_flow
from webb.api.flow import flow_pb2 as fpb


@pytest.fixture(scope="module")
def flowserver():
    s = FlowServer(free_port(), bookinfo_flows()).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ui(flowserver, tmp_path_factory):
    u = UIProc(f"127.0.0.1:{flowserver.port}", free_port(), tmp_path_factory.mktemp("ui") / "ui.log",
               ["--flows-window", "500", "--history", "300"]).start()
    yield u
    u.stop()


def test_status_shows_the_relay_and_its_nodes(ui):
    st = wait_for(lambda: (s := ui.get("/api/status"))["relay"]["state"] == "connected" and s, 10)
    assert st["relay"]["server"]["connected_nodes"] == 2
    assert [n["name"] for n in st["relay"]["nodes"]] == ["n1", "n2"]
    assert st["relay"]["nodes"][0]["state"] == "connected"
    assert st["process"]["rss_mb"] > 0


def test_namespaces(ui):
    assert ui.get("/api/namespaces")["namespaces"] == ["bookinfo", "default", "kube-system"]


def test_map_has_cards_arrows_layout_and_l7(ui):
    m = ui.get("/api/map", {"namespace": "bookinfo"})
    cards = {c["id"]: c for c in m["cards"]}
    assert {"bookinfo/productpage", "bookinfo/details", "bookinfo/reviews", "bookinfo/ratings",
            "default/loadgen", "kube-system/kube-dns", "reserved:world"} == set(cards)
    for c in cards.values():
        assert c["w"] > 0 and c["h"] > 0 and c["rows"]
    arrows = {a["id"]: a for a in m["arrows"]}
    rr = arrows["bookinfo/reviews>bookinfo/ratings:9080/TCP"]
    assert rr["verdict"] == "mixed" and rr["drop_reasons"] == {"POLICY_DENIED": 3}
    assert arrows["bookinfo/productpage>bookinfo/details:9080/TCP"]["http"]["statuses"] == {"200": 1}
    assert all(len(a["points"]) >= 2 and a["label"] for a in arrows.values())
    assert m["request"]["whitelist"] == [{"source_pod": ["bookinfo/"]}, {"destination_pod": ["bookinfo/"]}]
    assert m["view"]["state"] == "live"


def test_filters_are_sent_to_the_relay_as_flowfilters(ui, flowserver):
    params = {"namespace": "bookinfo", "filter": ["!verdict=FORWARDED", "to:label=k8s:app=ratings"]}
    m = ui.get("/api/map", params)
    req = next(r for r in reversed(flowserver.requests)
               if any(f.destination_label for f in r.whitelist))
    assert [list(f.verdict) for f in req.blacklist] == [[fpb.FORWARDED]]
    assert {(tuple(f.source_pod), tuple(f.destination_pod), tuple(f.destination_label)) for f in req.whitelist} == {
        (("bookinfo/",), (), ("k8s:app=ratings",)), ((), ("bookinfo/",), ("k8s:app=ratings",))}
    # the relay filtered: only the drops to ratings are left
    assert [a["id"] for a in m["arrows"]] == ["bookinfo/reviews>bookinfo/ratings:9080/TCP"]
    assert m["arrows"][0]["verdict"] == "dropped"
    assert m["filters"] == ["!verdict=FORWARDED", "to:label=k8s:app=ratings"]
    f = ui.get("/api/flows", params)
    assert len(f["rows"]) == 3 and all(r["verdict"] == "DROPPED" for r in f["rows"])
    assert ui.get("/api/filters", params)["blacklist"] == [{"verdict": ["FORWARDED"]}]


def test_invalid_filters_are_a_400(ui):
    code, body = ui.get_status("/api/map", {"filter": ["verdict=sideways"]})
    assert code == 400 and "unknown verdict" in body["detail"]
    code, body = ui.get_status("/api/events", {"filter": ["port=99999"]})
    assert code == 400
    code, body = ui.get_status("/api/flows", {"namespace": "a/b"})
    assert code == 400


def test_contradicting_filters_show_nothing(ui):
    m = ui.get("/api/map", {"namespace": "bookinfo", "filter": ["from:pod=x/a", "to:pod=y/b"]})
    assert m["cards"] == [] and m["view"]["state"] == "empty" and m["request"]["matches_nothing"]


def test_flows_and_flow_details(ui, flowserver):
    rows = ui.get("/api/flows", {"limit": 1000})["rows"]
    assert len(rows) == len(flowserver.flows)
    assert rows[0]["time"] <= rows[-1]["time"]  # oldest first
    r = rows[-1]
    one = ui.get(f"/api/flows/{r['id']}")
    assert one["flow"]["uuid"] == r["id"] and one["source"] == "window"
    code, _ = ui.get_status("/api/flows/00000000-0000-0000-0000-000000000000")
    assert code == 404


def test_openapi_and_static_files(ui):
    spec = ui.get("/openapi.json")
    for path in ("/api/map", "/api/flows", "/api/flows/{flow_id}", "/api/events", "/api/status",
                 "/api/namespaces", "/api/filters", "/api/filters/grammar"):
        assert path in spec["paths"]
    g = ui.get("/api/filters/grammar")
    assert "label" in [k["name"] for k in g["kinds"]] and g["term_pattern"]
    import urllib.request

    with urllib.request.urlopen(ui.url + "/docs") as r:
        docs = r.read().decode()
    assert "swagger" in docs.lower()
    assert not re.search(r'(src|href)="(https?:)?//', docs), "the API docs load from a CDN"
    with urllib.request.urlopen(ui.url + "/") as r:
        page = r.read().decode()
    assert 'src="/static/js/main.js"' in page
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page loads from a CDN"
    for asset in ("js/main.js", "js/map.js", "js/table.js", "js/live.js", "js/state.js",
                  "js/filterbar.js", "js/details.js", "js/terms.js", "js/util.js", "css/app.css"):
        with urllib.request.urlopen(f"{ui.url}/static/{asset}") as r:
            body = r.read().decode()
        assert r.status == 200
        assert not re.search(r'(from|import)\s*\(?\s*["\'](https?:)?//', body), f"{asset} imports from the net"


def test_live_events_bring_new_flows(ui, flowserver):
    # How fast is a figure of bench/ui_bench.py (the gap row), not a timed assertion here:
    # this checks that a pushed flow reaches both the table and the map of a live view.
    events = ui.events({"namespace": "bookinfo"})
    first = [next(events) for _ in range(3)]
    assert [e for e, _ in first] == ["status", "map", "flows"]
    assert first[0][1]["relay"]["state"] == "connected"
    assert first[2][1]["initial"] and first[2][1]["rows"]
    new = make_flow("productpage", "details", flags=("FIN",))
    flowserver.push(new)
    for ev, data in events:
        if ev == "flows" and any(r["id"] == new.uuid for r in data["rows"]):
            break
    else:
        pytest.fail("the event stream ended before the new flow was shown")
    # the map follows too
    for ev, data in events:
        if ev == "map":
            a = next(a for a in data["arrows"] if a["id"] == "bookinfo/productpage>bookinfo/details:9080/TCP")
            if a["flows"]["total"] >= 4:
                break
    else:
        pytest.fail("the event stream ended before the map counted the new flow")


def test_window_stays_bounded(ui, flowserver):
    flowserver.push(*[make_flow("loadgen", "productpage", sport=10000 + i) for i in range(2000)])
    wait_for(lambda: any(v["flows_seen"] > 2000 for v in ui.get("/api/status")["views"]), 10)
    for v in ui.get("/api/status")["views"]:
        assert v["window"] <= 500
    assert len(ui.get("/api/flows", {"limit": 10000})["rows"]) <= 500
    # the oldest flows left every window, but the relay still has them: looked up by uuid
    old = flowserver.flows[0]
    found = ui.get(f"/api/flows/{old.uuid}")
    assert found["flow"]["uuid"] == old.uuid and found["source"] == "relay"


def test_relay_unreachable_then_reconnects(tmp_path):
    port = free_port()
    ui = UIProc(f"127.0.0.1:{port}", free_port(), tmp_path / "ui.log").start()
    server = None
    try:
        st = wait_for(lambda: (s := ui.get("/api/status"))["relay"]["state"] == "unreachable" and s, 10)
        assert "UNAVAILABLE" in st["relay"]["error"]
        events = ui.events({"namespace": "bookinfo"}, timeout=15)
        ev, data = next(events)
        assert ev == "status" and data["relay"]["state"] == "unreachable"
        # the relay comes up: the UI notices by itself and the view starts streaming
        server = FlowServer(port, bookinfo_flows()).start()
        t0 = time.monotonic()
        connected = cards = False
        for ev, data in events:
            connected |= ev == "status" and data["relay"]["state"] == "connected"
            cards |= ev == "map" and bool(data["cards"])
            if connected and cards:
                break
            assert time.monotonic() - t0 < 15
        # and when it goes away again, the indicator says so
        server.stop()
        server = None
        for ev, data in events:
            if ev == "status" and data["relay"]["state"] == "unreachable":
                break
            assert time.monotonic() - t0 < 25
    finally:
        if server is not None:
            server.stop()
        ui.stop()


def test_resumes_after_relay_restart_without_duplicates(tmp_path):
    port = free_port()
    flows = bookinfo_flows()
    server = FlowServer(port, flows).start()
    ui = UIProc(f"127.0.0.1:{port}", free_port(), tmp_path / "ui.log").start()
    try:
        m = ui.get("/api/map")
        assert m["flows_seen"] == len(flows)
        server.stop()
        wait_for(lambda: ui.get("/api/status")["relay"]["state"] == "unreachable", 10)
        later = make_flow("loadgen", "productpage", t=time.time() + 1)
        server = FlowServer(port, flows + [later]).start()
        wait_for(lambda: ui.get("/api/map")["flows_seen"] == len(flows) + 1, 15)
        # One flow more, once counted, shows the stream is past the reconnect: a replayed
        # duplicate would have been counted by then (no sleep).
        server.push(make_flow("loadgen", "productpage", t=time.time() + 2))
        wait_for(lambda: ui.get("/api/map")["flows_seen"] >= len(flows) + 2, 15)
        assert ui.get("/api/map")["flows_seen"] == len(flows) + 2
    finally:
        server.stop()
        ui.stop()


def test_many_clients_share_one_view(ui, flowserver):
    before = len(flowserver.requests)
    results = []

    def fetch():
        results.append(ui.get("/api/map", {"namespace": "kube-system"}))
    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r["cards"] for r in results)
    # one history request for the whole view (and its follow request)
    mine = [r for r in flowserver.requests[before:]
            if any(list(f.source_pod) == ["kube-system/"] for f in r.whitelist)]
    assert len([r for r in mine if not r.follow]) == 1


def test_http_latency_and_status_on_arrows(ui, flowserver):
    flowserver.push(*http_pair("productpage", "reviews-v2", url="/reviews/1", code=200, latency_ms=8))

    def arrow():
        m = ui.get("/api/map", {"filter": ["http-status=2+"]})
        return next((a for a in m["arrows"] if a["target"] == "bookinfo/reviews"), None)
    a = wait_for(arrow, 10)
    assert a["http"]["statuses"] == {"200": 1}
    assert a["http"]["routes"][0]["path"] == "/reviews/1"
    assert a["http"]["latency"]["max_ms"] == pytest.approx(8.0)

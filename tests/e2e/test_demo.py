"""`webb demo` end to end: the bookinfo cluster with real traffic, read over the relay,
scaled while running, and torn down without leftovers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import defaultdict
from pathlib import Path

import grpc
import pytest

from support import BIN, free_port, lab_prefix, running_demo, wait_for
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc
from webb.netlab import list_netns

pytestmark = pytest.mark.root

PREFIX = lab_prefix("wtd")


def app_of(ep: fpb.Endpoint) -> str:
    for label in ep.labels:
        if label.startswith("k8s:app="):
            return label.split("=", 1)[1]
        if label.startswith("k8s:k8s-app="):
            return label.split("=", 1)[1]
    return ",".join(ep.labels)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    with running_demo(tmp_path_factory.mktemp("demo"), PREFIX, rate=8, duration=300) as info:
        info["channel"] = grpc.insecure_channel(f"127.0.0.1:{info['ports']['relay']}")
        try:
            yield info
        finally:
            info["channel"].close()


def observer(demo) -> observer_pb2_grpc.ObserverStub:
    return observer_pb2_grpc.ObserverStub(demo["channel"])


def talk_pairs(demo, seconds: float = 6) -> dict[tuple[str, str, int], int]:
    pairs: dict[tuple[str, str, int], int] = defaultdict(int)
    for r in observer(demo).GetFlows(opb.GetFlowsRequest(number=4000), timeout=seconds):
        if not r.HasField("flow"):
            continue
        f = r.flow
        if f.is_reply.value or not f.l4.HasField("TCP") and not f.l4.HasField("UDP"):
            continue
        port = f.l4.TCP.destination_port or f.l4.UDP.destination_port
        pairs[(app_of(f.source), app_of(f.destination), port)] += 1
    return pairs


def test_flows_between_every_pair_that_talks(demo):
    want = {("loadgen", "productpage", 9080), ("productpage", "details", 9080),
            ("productpage", "reviews", 9080), ("reviews", "ratings", 9080),
            ("productpage", "kube-dns", 53), ("loadgen", "kube-dns", 53),
            ("reviews", "kube-dns", 53)}

    def all_seen():
        pairs = talk_pairs(demo)
        missing = want - set(pairs)
        return not missing or None
    wait_for(all_seen, 60, 2, f"flows for {sorted(want)}")
    pairs = talk_pairs(demo)
    # details and ratings never call anyone; nothing calls the load generator.
    assert not any(src in ("details", "ratings") and port == 9080 for src, _, port in pairs)
    assert not any(dst == "loadgen" for _, dst, _ in pairs)


def test_healthy_bookinfo_traffic_has_no_drops(demo):
    """No policy is applied: a drop on :9080 would be a broken service (e.g. one that
    listens on IPv6 only while clients also try IPv4), which kernel-drop flows expose."""
    drops = [r.flow for r in observer(demo).GetFlows(opb.GetFlowsRequest(
        number=4000, whitelist=[fpb.FlowFilter(verdict=[fpb.DROPPED], destination_port=["9080"])]),
        timeout=6) if r.HasField("flow")]
    assert drops == [], [f.Summary for f in drops[:5]]


def test_reviews_versions_spread_over_nodes(demo):
    def versions():
        seen = set()
        for r in observer(demo).GetFlows(opb.GetFlowsRequest(
                number=2000, whitelist=[fpb.FlowFilter(destination_label=["app=reviews"],
                                                       destination_port=["9080"])]), timeout=6):
            if r.HasField("flow"):
                seen.add((r.flow.destination.workloads[0].name, r.flow.node_name))
        return {v for v, _ in seen} >= {"reviews-v1", "reviews-v2", "reviews-v3"} and seen
    seen = wait_for(versions, 60, 2, "calls to all three reviews versions")
    assert {node for _, node in seen} == {"n1", "n2"}


def test_both_nodes_in_get_nodes(demo):
    nodes = observer(demo).GetNodes(opb.GetNodesRequest(), timeout=10).nodes
    assert sorted(n.name for n in nodes) == ["n1", "n2"]
    assert all(n.state == 1 for n in nodes)  # NODE_CONNECTED
    st = observer(demo).ServerStatus(opb.ServerStatusRequest(), timeout=10)
    assert st.num_connected_nodes.value == 2 and st.num_flows > 0


def test_exec_resolves_service_names_like_a_cluster(demo):
    out = subprocess.run([str(BIN / "webb"), "demo", "--state-dir", str(demo["state"]), "exec",
                          "details", "--", "curl", "-s", "-m", "5", "http://reviews:9080/reviews/0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["podname"].startswith("reviews-v")
    bad = subprocess.run([str(BIN / "webb"), "demo", "--state-dir", str(demo["state"]), "exec",
                          "nosuchpod", "--", "true"], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "no pod" in bad.stderr


def test_scaled_pod_shows_up_with_its_siblings_identity(demo):
    out = subprocess.run([str(BIN / "webb"), "demo", "--state-dir", str(demo["state"]), "scale",
                          "details", "--replicas", "2"], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    state = json.loads((demo["state"] / "state.json").read_text())
    details = sorted((p for p in state["pods"] if p["workload"] == "details-v1"),
                     key=lambda p: p["name"])
    assert len(details) == 2

    def identities():
        ids: dict[str, int] = {}
        for r in observer(demo).GetFlows(opb.GetFlowsRequest(
                number=3000, whitelist=[fpb.FlowFilter(destination_pod=["bookinfo/details-"])]),
                timeout=6):
            if r.HasField("flow"):
                ids[r.flow.destination.pod_name] = r.flow.destination.identity
        return len(ids) == 2 and ids
    ids = wait_for(identities, 60, 2, "flows to both details pods")
    assert len(set(ids.values())) == 1 and min(ids.values()) >= 256
    bad = subprocess.run([str(BIN / "webb"), "demo", "--state-dir", str(demo["state"]), "scale",
                          "nosuch", "--replicas", "2"], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "no workload" in bad.stderr


def test_metrics_exporter_counts_the_demo_traffic(demo):
    import urllib.request

    def scrape():
        url = f"http://127.0.0.1:{demo['ports']['metrics']}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return [line for line in text.splitlines()
                if line.startswith("hubble_flows_processed_total") and "bookinfo" in line] or None
    lines = wait_for(scrape, 60, 1, "hubble_flows_processed_total for bookinfo")
    assert any('verdict="FORWARDED"' in line for line in lines)


def test_bookinfo_calls_are_l7_flows(demo):
    """productpage -> reviews as Cilium's tutorial shows them, with no proxy."""
    def got():
        req = opb.GetFlowsRequest(number=200, whitelist=[fpb.FlowFilter(
            protocol=["http"], http_url=["^http://reviews:9080/reviews/"])])
        fl = [r.flow for r in observer(demo).GetFlows(req, timeout=10) if r.HasField("flow")]
        kinds = {f.l7.type for f in fl}
        return fl if {fpb.REQUEST, fpb.RESPONSE} <= kinds else None
    flows = wait_for(got, 60, 2, "L7 flows productpage -> reviews")
    req = next(f for f in flows if f.l7.type == fpb.REQUEST)
    assert req.Type == fpb.L7 and req.event_type.type == 129
    assert req.Summary == "HTTP/1.1 GET http://reviews:9080/reviews/0"
    assert app_of(req.source) == "productpage" and app_of(req.destination) == "reviews"
    resp = next(f for f in flows if f.l7.type == fpb.RESPONSE)
    assert resp.l7.http.code == 200 and resp.l7.latency_ns > 0 and resp.is_reply.value
    # DNS, parsed by default on every endpoint's port 53.
    dns = [r.flow for r in observer(demo).GetFlows(opb.GetFlowsRequest(number=50, whitelist=[
        fpb.FlowFilter(protocol=["dns"], dns_query=[r"cluster\.local\.$"])]), timeout=10)
        if r.HasField("flow")]
    assert dns and any(f.l7.dns.ips for f in dns if f.l7.type == fpb.RESPONSE)
    # Names learnt from those answers are on later L3/L4 flows to the services.
    named = [r.flow for r in observer(demo).GetFlows(opb.GetFlowsRequest(number=20, whitelist=[
        fpb.FlowFilter(destination_fqdn=["reviews.bookinfo.svc.cluster.local"])]), timeout=10)
        if r.HasField("flow")]
    assert named and all(app_of(f.destination) == "reviews" for f in named)


def test_teardown_leaves_nothing(demo):
    """Runs last in this module: Ctrl-C, then no namespace, file or process remains."""
    proc = demo["proc"]
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(60) == 0
    assert not [n for n in list_netns() if n.startswith(f"{PREFIX}-")]
    assert not list(Path("/etc/netns").glob(f"{PREFIX}-*")) if Path("/etc/netns").exists() else True
    assert not demo["state"].exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(demo["state"]) not in ps


def test_clean_after_a_crash(tmp_path):
    """A demo killed with SIGKILL leaves processes and namespaces; `demo clean` (and the
    next run, which calls the same code first) removes them."""
    state = tmp_path / "state"
    prefix = lab_prefix("wtk")
    ports = [str(free_port()) for _ in range(4)]
    proc = subprocess.Popen(
        [str(BIN / "webb"), "demo", "--state-dir", str(state), "--prefix", prefix,
         "--agent-port", ports[0], "--relay-port", ports[1], "--metrics-port", ports[2],
         "--ui-port", ports[3], "--duration", "120"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (state / "ready").exists(), 120, 0.5, "the demo to be ready")
        pids = json.loads((state / "state.json").read_text())["pids"]
        proc.kill()  # no tear-down runs
        proc.wait(10)
        assert any(n.startswith(f"{prefix}-") for n in list_netns())
        out = subprocess.run([str(BIN / "webb"), "demo", "--state-dir", str(state), "--prefix",
                              prefix, "clean"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert not [n for n in list_netns() if n.startswith(f"{prefix}-")]
        assert not state.exists()
        def gone(pid: int) -> bool:
            try:
                return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
            except FileNotFoundError:
                return True
        # A killed process takes a moment to exit: wait for it (bounded), not a sleep.
        wait_for(lambda: all(gone(pid) for pid in pids.values()), 10, 0.05,
                 f"the demo's processes {sorted(pids.values())} to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run([str(BIN / "webb"), "demo", "--state-dir", str(state), "--prefix", prefix,
                        "clean"], capture_output=True, timeout=60)


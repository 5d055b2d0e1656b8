"""The relay end to end: three real agents (one per node namespace, each with its own
pods), real cross-node traffic, and webb-relay in front of them; later a fourth
agent announced at run time, and an agent killed and restarted under an open
follow stream."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

import support
from support import (FollowStream, client_server_lab, BIN, TRAFFIC, AgentProc, lab_prefix, pod_endpoint, run_in, start_in,
                     wait_for, write_endpoints)
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.relay import relay_pb2 as rpb
from webb.netlab import NetLab

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

PREFIX = lab_prefix("wtr")
WINDOW = 1.0  # the relay's sorting window in these tests (Hubble's default)
NODES = ("n1", "n2", "n3")
NAMESPACE = {"n1": "demo", "n2": "demo", "n3": "shop", "n4": "demo"}


def ts_ns(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def now_ts() -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(time.time_ns())
    return t


class RelayProc(support.RelayProc):
    """The shared relay process, with the queries these tests make."""

    def nodes(self) -> dict[str, opb.Node]:
        return {n.name: n for n in self.observer.GetNodes(opb.GetNodesRequest(), timeout=10).nodes}

    def wait_connected(self, names: set[str], timeout: float = 20) -> None:
        def ok() -> bool:
            n = self.nodes()
            return {k for k, v in n.items() if v.state == rpb.NODE_CONNECTED} == names
        wait_for(ok, timeout, 0.2, f"relay connected to {sorted(names)}")

    def responses(self, timeout: float = 20, **req: Any) -> list[opb.GetFlowsResponse]:
        return list(self.observer.GetFlows(opb.GetFlowsRequest(**req), timeout=timeout))


# -- the cluster ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab():
    with client_server_lab(PREFIX, NODES + ("n4",)) as lab:
        yield lab


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("relay")


def endpoints(lab: NetLab) -> list[dict]:
    out = []
    for i, name in enumerate(NODES + ("n4",), start=1):
        ns = NAMESPACE[name]
        out.append(pod_endpoint(lab.pods[f"c{i}"], f"client{i}", namespace=ns))
        out.append(pod_endpoint(lab.pods[f"s{i}"], f"server{i}", namespace=ns))
    return out


def write_cluster(lab: NetLab, path: Path, agents: dict[str, AgentProc]) -> None:
    """The endpoints file every agent reads; `nodes` lists the announced agents."""
    nodes = [{"name": n, "ips": [lab.nodes[n].ip], "agent_address": a.address}
             for n, a in agents.items()]
    write_endpoints(path, endpoints(lab), nodes)


@pytest.fixture(scope="module")
def cluster(lab, workdir):
    """Agents n1..n3 (n1 is the peer service and announces n2, n3); n4 is created
    but started only by the test that adds it."""
    eps = workdir / "endpoints.yaml"
    agents = {n: AgentProc(workdir, n, lab.nodes[n].netns, eps) for n in NODES + ("n4",)}
    write_cluster(lab, eps, {n: agents[n] for n in NODES})
    try:
        with ThreadPoolExecutor(3) as pool:  # bcc compiles for ~3 s: start them together
            list(pool.map(lambda n: agents[n].start(), NODES))
        for i, n in enumerate(NODES, start=1):
            agents[n].wait_attached([f"c{i}", f"s{i}"])
        yield agents, eps
    finally:
        for a in agents.values():
            a.stop()


@pytest.fixture(scope="module")
def relay(cluster, workdir):
    agents, _ = cluster
    r = RelayProc(workdir, "--peer-service", agents["n1"].address,
                  "--sort-buffer-drain-timeout", f"{WINDOW}s",
                  "--error-aggregation-window", "500ms",
                  "--reconnect-backoff-min", "200ms", "--reconnect-backoff-max", "1s")
    try:
        r.start()
        r.wait_connected(set(NODES))
        yield r
    finally:
        r.stop()


def cross_traffic(lab: NetLab, port: int, writes: int = 20, rounds: int = 1) -> None:
    """Concurrent TCP connections c1->s2, c2->s3, c3->s1 (each seen on two nodes)."""
    pairs = [(1, 2), (2, 3), (3, 1)]
    for _ in range(rounds):
        servers = [start_in(lab, lab.pods[f"s{d}"].netns, "tcp-server", str(port))
                   for _, d in pairs]
        clients = [lab.popen(lab.pods[f"c{c}"].netns, sys.executable, TRAFFIC, "tcp-client", lab.pods[f"s{d}"].ip4, str(port),
                             "--writes", str(writes), "--size", "100", "--pace", "0.002")
                   for c, d in pairs]
        for p in clients + servers:
            assert p.wait(20) == 0
        port += 1


@pytest.fixture(scope="module")
def history(lab, cluster, relay):
    """One round of known cross-node traffic, shared by the read-only tests."""
    cross_traffic(lab, 7000, rounds=2)
    agents, _ = cluster

    def drained(n: str) -> bool:  # the agents drain their perf buffers on a timer
        fins = [f.l4.TCP for f in agents[n].flows(number=2000) if f.l4.TCP.flags.FIN]
        return (any(t.destination_port == 7001 for t in fins)
                and any(t.source_port == 7001 for t in fins))
    wait_for(lambda: all(drained(n) for n in NODES), 15, 0.1, "the last round's FINs on every node")
    return 7000


def direct_flows(agents: dict[str, AgentProc], names=NODES, **req: Any) -> list[fpb.Flow]:
    out = []
    for n in names:
        out.extend(agents[n].flows(**req))
    return out


def key(f: fpb.Flow) -> tuple:
    return (f.node_name, ts_ns(f.time), f.uuid)


# -- GetFlows --------------------------------------------------------------------------

def test_history_of_three_nodes_merged_in_time_order(cluster, relay, history):
    agents, _ = cluster
    out = relay.responses()
    # node status first: the nodes asked, then flows
    assert out[0].HasField("node_status")
    assert out[0].node_status.state_change == rpb.NODE_CONNECTED
    assert set(out[0].node_status.node_names) == set(NODES)
    flows = [r.flow for r in out if r.HasField("flow")]
    times = [ts_ns(f.time) for f in flows]
    assert times == sorted(times), "history through the relay must be in time order"
    assert {f.node_name for f in flows} == set(NODES)
    # exactly the union of what each agent holds
    direct = direct_flows(agents)
    missing = set(map(key, direct)) - set(map(key, flows))
    extra = set(map(key, flows)) - set(map(key, direct))
    assert not missing and not extra, (len(flows), len(direct), sorted(missing)[:5], sorted(extra)[:5])
    # the nodes' flows really interleave (cross-node connections), not one node after another
    switches = sum(1 for a, b in zip(flows, flows[1:]) if a.node_name != b.node_name)
    assert switches >= 6, switches
    assert all(r.node_name == r.flow.node_name for r in out if r.HasField("flow"))


def test_number_is_cluster_wide(cluster, relay, history):
    agents, _ = cluster
    for n in NODES:
        t = [ts_ns(f.time) for f in agents[n].flows()]
        bad = [(i, (a - b) / 1e3) for i, (a, b) in enumerate(zip(t, t[1:])) if b < a]
        assert not bad, f"agent {n} sends flows out of time order (index, us): {bad[:5]}"
    union = sorted(direct_flows(agents), key=lambda f: ts_ns(f.time))
    assert len(union) > 20
    last = [r.flow for r in relay.responses(number=7) if r.HasField("flow")]
    assert [key(f) for f in last] == [key(f) for f in union[-7:]]
    first = [r.flow for r in relay.responses(number=5, first=True) if r.HasField("flow")]
    assert [key(f) for f in first] == [key(f) for f in union[:5]]
    # not N per node
    assert len({f.node_name for f in union[-7:]}) >= 1 and len(last) == 7


def test_filters_since_until_and_field_mask_pass_through(cluster, relay, history):
    agents, _ = cluster
    flt = [fpb.FlowFilter(source_pod=["demo/c1"]), fpb.FlowFilter(destination_pod=["demo/c1"])]
    flows = [r.flow for r in relay.responses(whitelist=flt) if r.HasField("flow")]
    assert flows and all("c1" in (f.source.pod_name, f.destination.pod_name) for f in flows)
    assert {f.node_name for f in flows} == {"n1", "n2"}  # c1 talks to s2 (node n2)
    black = [r.flow for r in relay.responses(blacklist=[fpb.FlowFilter(node_name=["n1", "n2"])])
             if r.HasField("flow")]
    assert black and {f.node_name for f in black} == {"n3"}
    union = sorted(direct_flows(agents), key=lambda f: ts_ns(f.time))
    mid = union[len(union) // 3].time
    end = union[2 * len(union) // 3].time
    ranged = [r.flow for r in relay.responses(since=mid, until=end) if r.HasField("flow")]
    want = [key(f) for f in union if ts_ns(mid) <= ts_ns(f.time) <= ts_ns(end)]
    assert [key(f) for f in ranged] == want
    masked = [r.flow for r in relay.responses(number=5, field_mask={"paths": ["time", "node_name"]})
              if r.HasField("flow")]
    assert len(masked) == 5
    assert all(f.node_name and f.time.seconds and not f.source.pod_name and not f.IP.source
               for f in masked)


def test_follow_merges_live_flows_within_the_window(lab, relay, history):
    stream = FollowStream(relay.observer, since=now_ts())
    try:
        wait_for(lambda: stream.statuses(), 10, what="node status")
        assert stream.statuses()[0][:2] == (rpb.NODE_CONNECTED, set(NODES))
        cross_traffic(lab, 7100, writes=30, rounds=2)
        wait_for(lambda: len({f.node_name for f in stream.flows()}) == 3
                 and len(stream.flows()) >= 30, 10, what="live flows of three nodes")

        def last_round_in() -> bool:  # the sort window releases them: wait for the FINs
            fins = {f.node_name for f in stream.flows() if f.l4.TCP.flags.FIN
                    and 7101 in (f.l4.TCP.source_port, f.l4.TCP.destination_port)}
            return len(fins) == 3
        wait_for(last_round_in, WINDOW + 10, 0.1, what="the last round's FINs from three nodes")
        flows = stream.flows()
        times = [ts_ns(f.time) for f in flows]
        # each flow is at most one window older than what came before it
        newest, worst = 0, 0
        for t in times:
            worst = max(worst, newest - t)
            newest = max(newest, t)
        assert worst < WINDOW * 1e9, f"out of order by {worst / 1e9:.3f}s"
        assert stream.error is None
    finally:
        stream.close()


def test_server_status_nodes_and_namespaces_aggregated(cluster, relay, history):
    agents, _ = cluster
    st = relay.observer.ServerStatus(opb.ServerStatusRequest(), timeout=10)
    direct = [agents[n].observer.ServerStatus(opb.ServerStatusRequest(), timeout=5) for n in NODES]
    assert st.num_flows == sum(d.num_flows for d in direct)
    assert st.max_flows == 3 * 4095
    assert st.seen_flows == sum(d.seen_flows for d in direct)
    assert st.flows_rate == pytest.approx(sum(d.flows_rate for d in direct), rel=0.5)
    assert st.num_connected_nodes.value == 3 and st.num_unavailable_nodes.value == 0
    assert st.version and not st.unavailable_nodes
    nodes = relay.nodes()
    assert set(nodes) == set(NODES)
    for n in NODES:
        node = nodes[n]
        assert node.state == rpb.NODE_CONNECTED
        assert node.address == agents[n].address
        assert node.version and node.uptime_ns > 0 and node.max_flows == 4095
        assert node.num_flows > 0 and node.seen_flows >= node.num_flows
    ns = relay.observer.GetNamespaces(opb.GetNamespacesRequest(), timeout=10).namespaces
    got = [(x.cluster, x.namespace) for x in ns]
    per_agent = [{(x.cluster, x.namespace) for x in agents[n].observer.GetNamespaces(
        opb.GetNamespacesRequest(), timeout=5).namespaces} for n in NODES]
    assert sum(map(len, per_agent)) > len(got)  # "demo" is on several nodes: deduplicated
    assert got == sorted(set().union(*per_agent))
    assert [n for _, n in got] == ["demo", "shop"]


def test_grpcurl_through_the_relay(relay, history):
    grpcurl = str(BIN / "grpcurl")
    out = subprocess.run([grpcurl, "-plaintext", relay.address, "list"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    services = set(out.stdout.split())
    assert {"observer.Observer", "grpc.health.v1.Health"} <= services
    out = subprocess.run([grpcurl, "-plaintext", "-d", '{"number": 4}', relay.address,
                          "observer.Observer/GetFlows"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    docs = [json.loads(c) for c in out.stdout.replace("}\n{", "}\x00{").split("\x00") if c.strip()]
    status = [d for d in docs if "node_status" in d]
    flows = [d for d in docs if "flow" in d]
    assert status[0]["node_status"]["state_change"] == "NODE_CONNECTED"
    assert sorted(status[0]["node_status"]["node_names"]) == list(NODES)
    assert len(flows) == 4 and {"source", "IP", "l4", "node_name"} <= set(flows[0]["flow"])
    out = subprocess.run([grpcurl, "-plaintext", relay.address, "observer.Observer/ServerStatus"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and json.loads(out.stdout)["num_connected_nodes"] == 3


@pytest.mark.parametrize("req,msg", [
    (dict(first=True, follow=True), "first"),
    (dict(whitelist=[fpb.FlowFilter(source_ip=["300.1.1.1"])]), ""),
    (dict(whitelist=[fpb.FlowFilter(http_status_code=["7xx"])]), ""),
    (dict(number=5, since={"seconds": 1}), "since"),
])
def test_bad_requests_are_invalid_argument(relay, req, msg):
    with pytest.raises(grpc.RpcError) as e:
        relay.responses(**req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert msg in e.value.details()


def test_static_peers(cluster, workdir, history):
    agents, _ = cluster
    r = RelayProc(workdir, "--peers", ",".join(agents[n].address for n in NODES))
    try:
        r.start()
        r.wait_connected(set(NODES))  # named after the agents' node names
        out = r.responses(number=3)
        assert len([x for x in out if x.HasField("flow")]) == 3
    finally:
        r.stop()


# -- failures and changes under an open stream -------------------------------------------

def test_agent_killed_during_follow_then_restarted(lab, cluster, relay, history):
    agents, _ = cluster
    stream = FollowStream(relay.observer, since=now_ts())
    n2 = agents["n2"]
    try:
        wait_for(lambda: stream.statuses(), 10, what="node status")
        n2.proc.kill()  # no goodbye
        n2.proc.wait(5)
        wait_for(lambda: any(s[0] in (rpb.NODE_ERROR, rpb.NODE_UNAVAILABLE) and "n2" in s[1]
                             for s in stream.statuses()), 10, what="NODE_ERROR for n2")
        err = [s for s in stream.statuses() if "n2" in s[1] and s[0] == rpb.NODE_ERROR]
        assert err and err[0][2], "the error says what happened"
        # the others go on: c3 -> s1 is seen on n3 and n1
        srv = start_in(lab, lab.pods["s1"].netns, "tcp-server", "7200")
        run_in(lab, lab.pods["c3"].netns, "tcp-client", lab.pods["s1"].ip4, "7200")
        srv.wait(10)
        wait_for(lambda: {"n1", "n3"} <= {f.node_name for f in stream.flows()
                                          if f.l4.TCP.destination_port == 7200
                                          or f.l4.TCP.source_port == 7200},
                 10, what="flows of the remaining nodes")
        st = relay.observer.ServerStatus(opb.ServerStatusRequest(), timeout=10)
        assert st.num_unavailable_nodes.value == 1 and list(st.unavailable_nodes) == ["n2"]
        assert relay.nodes()["n2"].state == rpb.NODE_UNAVAILABLE
        # back on the same address: it rejoins the open stream
        n2.start()
        n2.wait_attached(["c2", "s2"])
        wait_for(lambda: sum(1 for s in stream.statuses()
                             if s[0] == rpb.NODE_CONNECTED and "n2" in s[1]) >= 2,
                 20, what="n2 connected again")
        srv = start_in(lab, lab.pods["s2"].netns, "tcp-server", "7201")
        run_in(lab, lab.pods["c2"].netns, "tcp-client", lab.pods["s2"].ip4, "7201")
        srv.wait(10)
        wait_for(lambda: any(f.node_name == "n2" and 7201 in (f.l4.TCP.destination_port,
                                                             f.l4.TCP.source_port)
                             for f in stream.flows()), 10, what="n2's flows after its restart")
        assert stream.error is None
    finally:
        stream.close()
        if n2.proc is not None and n2.proc.poll() is not None:
            n2.start()


def test_agent_restarted_in_place_is_reported_lost_before_connected(lab, cluster, workdir,
                                                                    history):
    """An agent stopped and started again at once on its address (as a DaemonSet's new
    pod starts while the old one is still terminating) serves again well within the
    relay's error aggregation window (60 s here; Hubble's default is 10 s): the follow
    still reads the node's NODE_ERROR before its NODE_CONNECTED, then its new flows."""
    agents, _ = cluster
    n3 = agents["n3"]
    r = RelayProc(workdir, "--peer-service", agents["n1"].address,
                  "--error-aggregation-window", "60s",
                  "--reconnect-backoff-min", "200ms", "--reconnect-backoff-max", "1s")
    stream: FollowStream | None = None
    try:
        r.start()
        r.wait_connected(set(NODES))
        stream = FollowStream(r.observer, since=now_ts())
        wait_for(lambda: stream.statuses(), 10, what="node status")
        n3.stop()  # SIGTERM: the agent's server cancels its calls on the way out
        n3.start()
        n3.wait_attached(["c3", "s3"])

        def of_n3() -> list[tuple[int, str]]:
            return [(s[0], s[2]) for s in stream.statuses() if "n3" in s[1]]
        wait_for(lambda: rpb.NODE_CONNECTED in [s for s, _ in of_n3()[1:]], 30,
                 what="n3 connected again")
        assert [s for s, _ in of_n3()] == [rpb.NODE_CONNECTED, rpb.NODE_ERROR,
                                          rpb.NODE_CONNECTED], of_n3()
        assert of_n3()[1][1], "the error says what happened"
        srv = start_in(lab, lab.pods["s3"].netns, "tcp-server", "7210")
        run_in(lab, lab.pods["c3"].netns, "tcp-client", lab.pods["s3"].ip4, "7210")
        srv.wait(10)
        wait_for(lambda: any(f.node_name == "n3" and 7210 in (f.l4.TCP.destination_port,
                                                             f.l4.TCP.source_port)
                             for f in stream.flows()), 10, what="n3's flows after its restart")
        assert stream.error is None
    finally:
        if stream is not None:
            stream.close()
        r.stop()
        if n3.proc is None or n3.proc.poll() is not None:
            n3.start()


def test_peer_added_at_run_time_joins_an_open_stream(lab, cluster, relay, history):
    agents, eps = cluster
    n4 = agents["n4"]
    n4.start()
    n4.wait_attached(["c4", "s4"])
    stream = FollowStream(relay.observer, since=now_ts())
    try:
        wait_for(lambda: stream.statuses(), 10, what="node status")
        assert stream.statuses()[0][1] == set(NODES)
        write_cluster(lab, eps, {n: agents[n] for n in NODES + ("n4",)})  # n1 announces n4
        wait_for(lambda: any(s[0] == rpb.NODE_CONNECTED and s[1] == {"n4"}
                             for s in stream.statuses()), 15, what="n4 joins the stream")
        srv = start_in(lab, lab.pods["s4"].netns, "tcp-server", "7300")
        run_in(lab, lab.pods["c4"].netns, "tcp-client", lab.pods["s4"].ip4, "7300")
        srv.wait(10)
        wait_for(lambda: any(f.node_name == "n4" for f in stream.flows()), 10,
                 what="n4's flows in the open stream")
        assert relay.nodes()["n4"].state == rpb.NODE_CONNECTED
        # and removed again: it leaves the stream
        write_cluster(lab, eps, {n: agents[n] for n in NODES})
        wait_for(lambda: any(s[0] == rpb.NODE_GONE and s[1] == {"n4"} for s in stream.statuses()),
                 15, what="n4 leaves the stream")
        assert "n4" not in relay.nodes()
        assert stream.error is None
    finally:
        stream.close()
        n4.stop()

"""Flow history end to end: two real agents with tiny rings (15 flows) and a history
directory each, a real relay in front, real traffic that wraps the rings hundreds
of times; flows from before the wrap come back through the relay with since/until,
survive a restart and a SIGKILL mid-write, the export file holds them in Hubble's
format, and a window older than the retention comes with a LostEvent."""
from __future__ import annotations

import json
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from google.protobuf import json_format

import support
from support import (client_server_lab, ts, TRAFFIC, AgentProc, lab_prefix, pod_endpoint, run_in, start_in, wait_for,
                     write_endpoints)
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.netlab import NetLab

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

PREFIX = lab_prefix("wth")
NODES = ("n1", "n2")
ALL_NODES = NODES + ("n3",)  # n3: an agent with a 2-second retention
MARK_PORT = 7001
RING = 15



@pytest.fixture(scope="module")
def lab():
    with client_server_lab(PREFIX, ALL_NODES) as lab:
        yield lab


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("history")


def endpoints(lab: NetLab) -> list[dict]:
    out = []
    for i, _ in enumerate(ALL_NODES, start=1):
        out.append(pod_endpoint(lab.pods[f"c{i}"], f"client{i}"))
        out.append(pod_endpoint(lab.pods[f"s{i}"], f"server{i}"))
    return out


class Cluster:
    def __init__(self, lab: NetLab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.eps = workdir / "endpoints.yaml"
        write_endpoints(self.eps, endpoints(lab))
        self.agents: dict[str, AgentProc] = {}
        self.relay: support.RelayProc | None = None

    def history_dir(self, node: str) -> Path:
        return self.workdir / f"history-{node}"

    def start_agent(self, node: str, *more: str) -> AgentProc:
        extra = ["--history-dir", str(self.history_dir(node)), "--history-max-bytes", "50MB",
                 *more]
        if node == "n1":
            extra += ["--export-file-path", str(self.workdir / "export" / "flows.log"),
                      "--export-allowlist", json.dumps({"destination_port": [str(MARK_PORT)]}),
                      "--export-file-max-size-mb", "1"]
        a = AgentProc(self.workdir, node, self.lab.nodes[node].netns, self.eps, ring=RING,
                      extra=extra)
        self.agents[node] = a
        a.start()
        i = ALL_NODES.index(node) + 1
        a.wait_attached([f"c{i}", f"s{i}"])
        return a

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop()
        for a in self.agents.values():
            a.stop()


@pytest.fixture(scope="module")
def cluster(lab, workdir):
    c = Cluster(lab, workdir)
    try:
        for n in NODES:
            c.start_agent(n)
        c.relay = support.RelayProc(workdir, "--peers",
                                    ",".join(c.agents[n].address for n in NODES))
        c.relay.start()
        yield c
    finally:
        c.stop()


def marker(lab: NetLab, i: int, port: int = MARK_PORT) -> None:
    """One TCP connection client{i} → server{i}:port (a handful of flows)."""
    p = lab.pods
    srv = start_in(lab, p[f"s{i}"].netns, "tcp-server", str(port), "--count", "1")
    run_in(lab, p[f"c{i}"].netns, "tcp-client", p[f"s{i}"].ip4, str(port), "--writes", "3")
    srv.wait(10)


def flood(lab: NetLab, i: int, count: int = 1500) -> None:
    """Many short UDP 'connections' (one per port): far more flows than the ring holds."""
    p = lab.pods
    run_in(lab, p[f"c{i}"].netns, "udp-send", p[f"s{i}"].ip4, "20000", "--count", str(count),
           "--ports", str(count))


def seen(agent: AgentProc) -> int:
    return agent.observer.ServerStatus(opb.ServerStatusRequest(), timeout=5).seen_flows


def marks(flows: list[fpb.Flow]) -> list[fpb.Flow]:
    return [f for f in flows if f.l4.TCP.destination_port == MARK_PORT
            or f.l4.TCP.source_port == MARK_PORT]


@pytest.fixture(scope="module")
def window(lab, cluster):
    """Marker connections on both nodes, then floods that wrap both rings."""
    t0 = time.time_ns()
    for i in (1, 2):
        marker(lab, i)
    time.sleep(0.2)  # the agents drain every 10 ms
    t1 = time.time_ns()
    before = {n: seen(cluster.agents[n]) for n in NODES}
    for i in (1, 2):
        flood(lab, i)
    wait_for(lambda: all(seen(cluster.agents[n]) > before[n] + 50 * RING for n in NODES),
             20, 0.2, "the rings to wrap many times")
    return t0, t1


def relay_flows(cluster: Cluster, **req) -> list[opb.GetFlowsResponse]:
    assert cluster.relay is not None
    return list(cluster.relay.observer.GetFlows(opb.GetFlowsRequest(**req), timeout=60))


@contextmanager
def recording(cluster: Cluster, nodes: tuple[str, ...] = NODES):
    """Paced UDP on each node until the block ends, running once the agents see it:
    the rings go on wrapping while a query of the past is being answered."""
    p = cluster.lab.pods
    senders = []
    try:
        for n in nodes:
            i = ALL_NODES.index(n) + 1
            start = seen(cluster.agents[n])
            senders.append(cluster.lab.popen(
                p[f"c{i}"].netns, sys.executable, TRAFFIC, "udp-send", p[f"s{i}"].ip4, "40000",
                "--count", "60000", "--ports", "20000", "--pace", "0.0005"))
            wait_for(lambda a=cluster.agents[n], s=start: seen(a) > s + 100, 20, 0.05,
                     f"{n} recording the paced traffic")
        yield
    finally:
        for s in senders:
            s.kill()
            s.wait(10)


def test_flows_from_before_the_ring_wrap_through_the_relay(cluster, window):
    """A window from before the flood comes back whole and with no LostEvent, also
    while the nodes go on recording: flows newer than the request that overwrite the
    ring under the (slower) relay are no part of the window and no loss."""
    t0, t1 = window
    with recording(cluster):
        resp = relay_flows(cluster, since=ts(t0), until=ts(t1))
    flows = [r.flow for r in resp if r.HasField("flow")]
    assert not [r for r in resp if r.HasField("lost_events")]
    m = marks(flows)
    assert {f.node_name for f in m} == set(NODES)
    assert all(t0 <= f.time.ToNanoseconds() <= t1 for f in flows)
    # each node's SYN of the marker connection, from well before its ring wrapped
    for n in NODES:
        syns = [f for f in m if f.node_name == n and f.l4.TCP.flags.SYN and not f.l4.TCP.flags.ACK]
        assert syns, f"{n}: no SYN of the marker connection"
    # the relay's answer is the union of the agents' answers, each flow once
    direct = {f.uuid for n in NODES
              for f in cluster.agents[n].flows(since=ts(t0), until=ts(t1), timeout=30)}
    assert [f.uuid for f in flows] and len({f.uuid for f in flows}) == len(flows)
    assert {f.uuid for f in flows} == direct
    # the ring alone could not have answered: far more flows were seen since
    assert all(seen(cluster.agents[n]) > RING * 50 for n in NODES)


def test_filters_on_history_through_the_relay(cluster, window):
    t0, t1 = window
    everything = [r.flow for r in relay_flows(cluster, since=ts(t0)) if r.HasField("flow")]
    wl = [fpb.FlowFilter(destination_port=[str(MARK_PORT)]),
          fpb.FlowFilter(source_port=[str(MARK_PORT)])]
    filtered = [r.flow for r in relay_flows(cluster, since=ts(t0), whitelist=wl)
                if r.HasField("flow")]
    assert filtered and {f.uuid for f in filtered} == {f.uuid for f in marks(everything)}
    black = [r.flow for r in relay_flows(cluster, since=ts(t0), until=ts(t1),
                                         blacklist=[fpb.FlowFilter(node_name=["n1"])])
             if r.HasField("flow")]
    assert black and {f.node_name for f in black} == {"n2"}
    # first N from history, across the nodes
    first = [r.flow for r in relay_flows(cluster, since=ts(t0), first=True, number=3)
             if r.HasField("flow")]
    assert len(first) == 3 and all(f.time.ToNanoseconds() >= t0 for f in first)


def test_export_file_is_hubble_format(cluster, window):
    t0, t1 = window
    path = cluster.workdir / "export" / "flows.log"
    want = {f.uuid for f in cluster.agents["n1"].flows(since=ts(t0), until=ts(t1), timeout=30,
                                                         whitelist=[fpb.FlowFilter(
                                                             destination_port=[str(MARK_PORT)])])}

    def exported() -> set[str]:
        if not path.exists():
            return set()
        return {json.loads(line)["flow"]["uuid"] for line in path.read_text().splitlines()
                if '"flow"' in line}
    wait_for(lambda: want and want <= exported(), 10, 0.2, "the marker flows in the export")
    for line in path.read_text().splitlines():
        d = json.loads(line)
        assert set(d) == {"flow", "node_name", "time"} and d["node_name"] == "n1"
        ev = json_format.ParseDict(d, opb.ExportEvent())
        assert ev.flow.l4.TCP.destination_port == MARK_PORT  # the allowlist


def test_restart_keeps_history(cluster, window):
    t0, t1 = window
    a = cluster.agents["n1"]
    before = [f.uuid for f in a.flows(since=ts(t0), until=ts(t1), timeout=30)]
    assert marks(a.flows(since=ts(t0), until=ts(t1), timeout=30))
    a.stop()
    b = cluster.start_agent("n1")
    after = [f.uuid for f in b.flows(since=ts(t0), until=ts(t1), timeout=30)]
    assert after == before  # the same flows, the same UUIDs
    # new flows continue after the old ones
    marker(cluster.lab, 1, MARK_PORT + 1)
    newest = wait_for(lambda: b.flows(number=1, timeout=10), 10, 0.2, "a new flow")
    assert newest[0].uuid not in before


def test_killed_mid_write_reopens_cleanly(cluster, window):
    t0, t1 = window
    a = cluster.agents["n2"]
    before = [f.uuid for f in a.flows(since=ts(t0), until=ts(t1), timeout=30)]
    p = cluster.lab.pods
    sender = cluster.lab.popen(p["c2"].netns, sys.executable, TRAFFIC, "udp-send",
                               p["s2"].ip4, "30000", "--count", "20000", "--ports", "20000",
                               "--pace", "0.0002")
    try:
        start = seen(a)
        wait_for(lambda: seen(a) > start + 500, 20, 0.05, "flows being written")
        assert a.proc is not None
        a.proc.send_signal(signal.SIGKILL)  # mid-traffic: batches are being written
        a.proc.wait(10)
    finally:
        sender.kill()
        sender.wait(10)
    b = cluster.start_agent("n2")
    after = [f.uuid for f in b.flows(since=ts(t0), until=ts(t1), timeout=30)]
    assert after == before
    everything = b.flows(since=ts(t0), timeout=60)
    assert len({f.uuid for f in everything}) == len(everything)  # no seq reused


def test_a_window_older_than_the_retention_gets_a_lost_event(cluster):
    """Flows deleted by age retention are reported, not silently missing."""
    a = cluster.start_agent("n3", "--history-max-age", "2s")
    t0 = time.time_ns()
    marker(cluster.lab, 3)
    flood(cluster.lab, 3, 300)  # well past the 15-flow ring
    t1 = time.time_ns()

    def notice() -> list[opb.GetFlowsResponse]:
        resp = list(a.observer.GetFlows(opb.GetFlowsRequest(since=ts(t0), until=ts(t1)),
                                        timeout=30))
        return resp if resp and resp[0].HasField("lost_events") else []
    resp = wait_for(notice, 30, 0.5, "age retention to remove the window's flows")
    lost = resp[0].lost_events
    assert lost.source == fpb.HUBBLE_RING_BUFFER and lost.num_events_lost >= 300
    flows = [r.flow for r in resp if r.HasField("flow")]
    assert not marks(flows) and len(flows) <= RING  # only what the ring still holds

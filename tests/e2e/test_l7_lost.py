"""L7 records the datapath's ring buffer had no room for are reported, not dropped
silently: counted by the TC program, surfaced as LostEvents in GetFlows and as
datapath.lost_events. An agent with the smallest L7 ring is stopped (SIGSTOP) while a
client sends more HTTP requests than the ring holds records for, then resumed."""
from __future__ import annotations

import json
import mmap
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support import AgentProc, lab_prefix, pod_endpoint, wait_for, write_endpoints
from webb.api.admin import admin_pb2
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.netlab import NetLab

pytestmark = pytest.mark.root

PREFIX = lab_prefix("wlo")
L7 = str(Path(__file__).resolve().parents[1] / "helpers" / "l7_traffic.py")
PORT = 8080
# The smallest record of this test: ring header 8 + struct l7_event 72 + a request of
# ~45 bytes, padded to 8 (responses are longer).
MIN_RECORD = 120


@pytest.fixture
def lab():
    lab = NetLab(PREFIX)
    lab.cleanup()
    try:
        n1 = lab.add_node("n1", 1)
        lab.add_pod(n1, "client", 10)
        lab.add_pod(n1, "server", 11)
        yield lab
    finally:
        lab.cleanup()


@pytest.fixture
def agent(lab, tmp_path):
    p = lab.pods
    server = lab.popen(p["server"].netns, sys.executable, L7, "http-server", str(PORT),
                       "--timeout", "120", stdout=subprocess.PIPE, text=True)
    a = None
    try:
        assert server.stdout.readline().strip() == "ready"
        eps = tmp_path / "endpoints.yaml"
        srv = pod_endpoint(p["server"], "server")
        srv["annotations"] = {"policy.cilium.io/proxy-visibility": f"<Ingress/{PORT}/TCP/HTTP>"}
        write_endpoints(eps, [pod_endpoint(p["client"], "client"), srv])
        a = AgentProc(tmp_path, "n1", lab.nodes["n1"].netns, eps, ring=16383,
                      extra=["--l7-perf-pages", "1", "--no-kernel-drops"])
        a.start()
        a.wait_attached(["client", "server"])
        yield a
    finally:
        if a is not None:
            if a.proc is not None and a.proc.poll() is None:
                a.proc.send_signal(signal.SIGCONT)  # a stopped agent cannot stop
            a.stop()
        server.kill()
        server.wait(5)


def http(lab: NetLab, paths: list[str]) -> list[dict]:
    reqs = json.dumps([{"path": x} for x in paths])
    out = lab.exec(lab.pods["client"].netns, sys.executable, L7, "http-client",
                   lab.pods["server"].ip4, str(PORT), "--requests", reqs, timeout=60).stdout
    return json.loads(out)


def counters(agent: AgentProc) -> dict[str, int]:
    return dict(agent.admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=5).counters)


def test_l7_records_the_ring_had_no_room_for_are_lost_events(lab, agent):
    from webb_agent.datapath.loader import l7_ring_pages, possible_cpus

    # selection in effect: a probe's request and response come back as L7 flows
    assert [r["code"] for r in http(lab, ["/probe"])] == [200]
    wait_for(lambda: len([f for f in agent.flows() if f.Type == fpb.L7
                          and "/probe" in f.l7.http.url]) == 2, 10, 0.1, "the probe's L7 flows")
    ring_bytes = l7_ring_pages(1, possible_cpus()) * mmap.PAGESIZE
    n = ring_bytes // MIN_RECORD + 50  # 2n records of >= MIN_RECORD bytes: more than it holds
    c0 = counters(agent)
    assert c0["datapath.lost_events"] == 0 and c0["datapath.l7_lost"] == 0
    agent.proc.send_signal(signal.SIGSTOP)  # nobody drains the ring
    try:
        res = http(lab, [f"/burst/{i}" for i in range(n)])
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    assert len(res) == n and {r["code"] for r in res} == {200}

    def lost():
        c = counters(agent)
        return c if c["datapath.lost_events"] else None
    c1 = wait_for(lost, 10, 0.1, "lost events counted")
    # every request and every response was one payload segment: each is either a
    # record in the ring or counted as lost by the program
    assert c1["datapath.l7_events"] - c0["datapath.l7_events"] + c1["datapath.l7_lost"] == 2 * n
    assert c1["datapath.lost_events"] == c1["datapath.l7_lost"] > 0
    # ... and the losses are LostEvents in GetFlows, as perf buffer losses are
    got = list(agent.observer.GetFlows(opb.GetFlowsRequest(), timeout=10))
    events = [r.lost_events for r in got if r.HasField("lost_events")]
    assert events and all(e.source == fpb.PERF_EVENT_RING_BUFFER for e in events)
    assert sum(e.num_events_lost for e in events) == c1["datapath.l7_lost"]
    # what the ring held is read: the burst's first requests became L7 flows
    burst = [r.flow for r in got if r.HasField("flow") and r.flow.Type == fpb.L7
             and "/burst/" in r.flow.l7.http.url]
    assert burst and any(f.l7.http.url.endswith("/burst/0") for f in burst)

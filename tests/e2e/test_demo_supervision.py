"""`webb demo` supervises its processes like kubelet: SIGKILL an agent, the relay, the
UI server and the exporter in turn, under clients that keep following; each comes
back, the demo keeps running, the clients see what a cluster shows (the relay marks
the node failed, then connected again; the UI and the exporter carry on), and nothing
the surviving nodes recorded meanwhile is lost."""
from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import urllib.request

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from support import lab_prefix, running_demo, wait_for
from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc
from webb.api.relay import relay_pb2 as rpb

pytestmark = [pytest.mark.root, pytest.mark.timeout(420)]

PREFIX = lab_prefix("wts")


def ts(ns: int) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(ns)
    return t


class Follower:
    """`GetFlows follow` through the relay in a thread: every response, in order."""

    def __init__(self, relay: str, since_ns: int | None = None) -> None:
        self.channel = grpc.insecure_channel(relay)
        req = opb.GetFlowsRequest(follow=True)
        if since_ns is not None:
            req.since.CopyFrom(ts(since_ns))
        self.call = observer_pb2_grpc.ObserverStub(self.channel).GetFlows(req)
        self.items: list[opb.GetFlowsResponse] = []
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for r in self.call:
                self.items.append(r)
        except grpc.RpcError as e:
            self.error = e

    def flows(self, node: str | None = None) -> list:
        return [r.flow for r in list(self.items) if r.HasField("flow")
                and (node is None or r.flow.node_name == node)]

    def statuses(self) -> list[tuple[int, list[str]]]:
        return [(r.node_status.state_change, list(r.node_status.node_names))
                for r in list(self.items) if r.HasField("node_status")]

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(10)
        self.channel.close()


def pids(demo) -> dict[str, int]:
    return json.loads((demo["state"] / "state.json").read_text())["pids"]


def kill(demo, key: str) -> int:
    """SIGKILLs the demo's process `key`; returns its PID."""
    pid = pids(demo)[key]
    os.kill(pid, signal.SIGKILL)
    return pid


def restarted(demo, key: str, old: int) -> bool:
    assert demo["proc"].poll() is None, demo["log"].read_text()[-3000:]
    return pids(demo)[key] != old


def direct_uuids(demo, node_index: int, since: int, until: int) -> set[str]:
    with grpc.insecure_channel(f"127.0.0.{node_index}:{demo['ports']['agent']}") as ch:
        req = opb.GetFlowsRequest(since=ts(since), until=ts(until))
        return {r.flow.uuid for r in observer_pb2_grpc.ObserverStub(ch).GetFlows(req, timeout=30)
                if r.HasField("flow")}


def relay_serving(demo) -> bool:
    """The relay answers and has both nodes connected (a client would retry until then)."""
    try:
        with grpc.insecure_channel(demo["relay"]) as ch:
            nodes = observer_pb2_grpc.ObserverStub(ch).GetNodes(opb.GetNodesRequest(),
                                                                 timeout=2).nodes
    except grpc.RpcError:
        return False
    return sorted(n.name for n in nodes if n.state == rpb.NODE_CONNECTED) == ["n1", "n2"]


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def flows_processed(demo) -> float:
    text = http_get(f"http://127.0.0.1:{demo['ports']['metrics']}/metrics")
    return sum(float(m.group(1)) for m in
               re.finditer(r"^hubble_flows_processed_total\{[^}]*\} (\S+)$", text, re.M))


def ui_seq(demo) -> int:
    return json.loads(http_get(f"http://127.0.0.1:{demo['ports']['ui']}/api/flows?limit=1"))["seq"]


def answers(f, *args) -> bool:
    try:
        return bool(f(*args))
    except OSError:  # not listening (yet)
        return False


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    with running_demo(tmp_path_factory.mktemp("supervision"), PREFIX, rate=6,
                      duration=400) as info:
        info["relay"] = f"127.0.0.1:{info['ports']['relay']}"
        yield info


def test_a_killed_agent_restarts_and_the_relay_shows_it(demo):
    wait_for(lambda: answers(flows_processed, demo), 30, 0.2, "the exporter counting")
    f = Follower(demo["relay"])
    try:
        wait_for(lambda: f.flows("n1") and f.flows("n2"), 30, 0.2, "flows from both nodes")
        t_a = time.time_ns()
        old = kill(demo, "agent-n2")
        # The relay reports the broken stream (NODE_ERROR) and the new connection
        # (NODE_CONNECTED); the error may come after the reconnection, as the old
        # stream's end is merged in time order.
        def reported(state: int) -> bool:
            return any(st == state and "n2" in n for st, n in f.statuses()[1:])
        wait_for(lambda: restarted(demo, "agent-n2", old), 30, 0.1, "n2's agent restarted")
        wait_for(lambda: reported(rpb.NODE_ERROR) and reported(rpb.NODE_CONNECTED), 60, 0.2,
                 "the relay to report n2 failed and connected again")
        t_b = time.time_ns()
        wait_for(lambda: [x for x in f.flows("n2") if x.time.ToNanoseconds() > t_b], 30, 0.2,
                 "new flows from the restarted n2")
        wait_for(lambda: [x for x in f.flows("n1") if x.time.ToNanoseconds() > t_b], 30, 0.2,
                 "the follower past the restart on n1")
        # n1 went on recording: the follower got every flow it recorded meanwhile
        got = {x.uuid for x in f.flows("n1")}
        missing = direct_uuids(demo, 1, t_a, t_b) - got
        assert not missing, f"{len(missing)} of n1's flows never reached the follower"
        assert f.error is None
        assert not [r for r in f.items if r.HasField("lost_events")]
    finally:
        f.close()
    text = demo["log"].read_text()
    assert f"agent-n2 (pid {old}) was killed by SIGKILL" in text
    assert "agent-n2 restarted (pid" in text


def test_a_killed_relay_restarts_and_a_client_catches_up(demo):
    f = Follower(demo["relay"])
    try:
        wait_for(lambda: f.flows("n1") and f.flows("n2"), 30, 0.2, "flows through the relay")
        m0, u0 = flows_processed(demo), ui_seq(demo)
        old = kill(demo, "relay")
        f.thread.join(30)
        assert f.error is not None and f.error.code() == grpc.StatusCode.UNAVAILABLE
        last = max(x.time.ToNanoseconds() for x in f.flows())
    finally:
        f.close()
    wait_for(lambda: restarted(demo, "relay", old), 30, 0.1, "the relay restarted")
    # the client reconnects from where it stopped: both agents kept everything
    wait_for(lambda: relay_serving(demo), 60, 0.2, "the new relay serving both nodes")
    t_back = time.time_ns()
    g = Follower(demo["relay"], since_ns=last + 1)
    try:
        wait_for(lambda: all(any(x.time.ToNanoseconds() > t_back for x in g.flows(n))
                             for n in ("n1", "n2")), 60, 0.2,
                 "the follower past the relay's restart on both nodes")
        t_b = min(max(x.time.ToNanoseconds() for x in g.flows(n)) for n in ("n1", "n2"))
        got = {x.uuid for x in g.flows()}
        for i in (1, 2):
            missing = direct_uuids(demo, i, last + 1, t_b) - got
            assert not missing, f"n{i}: {len(missing)} flows lost across the relay's restart"
    finally:
        g.close()
    # the UI and the exporter reconnected to the new relay and go on
    wait_for(lambda: answers(lambda: flows_processed(demo) > m0), 60, 0.5,
             "the exporter counting again")
    wait_for(lambda: answers(lambda: ui_seq(demo) > u0), 60, 0.5, "the UI's flows going on")


@pytest.mark.parametrize("key", ["ui", "metrics"])
def test_a_killed_ui_or_exporter_restarts_and_answers(demo, key):
    probe = ui_seq if key == "ui" else flows_processed
    wait_for(lambda: answers(probe, demo), 30, 0.2, f"{key} answering")
    old = kill(demo, key)
    wait_for(lambda: restarted(demo, key, old), 30, 0.1, f"{key} restarted")
    wait_for(lambda: answers(probe, demo), 60, 0.2, f"{key} answering again")
    first = probe(demo)
    wait_for(lambda: probe(demo) > first, 60, 0.5, f"{key} going on with new flows")
    f = Follower(demo["relay"])  # the rest kept running
    try:
        wait_for(lambda: f.flows("n1") and f.flows("n2"), 30, 0.2, "flows from both nodes")
    finally:
        f.close()
    assert f"{key} (pid {old}) was killed by SIGKILL" in demo["log"].read_text()

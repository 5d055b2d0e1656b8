"""The relay's batched stream end to end: two real agents, one serving webb's
batched stream and one started with --disable-batch-service (a plain Hubble
server: the relay falls back to GetFlows for it), real cross-node traffic, and
webb-relay answering both GetFlowBatches and Hubble's GetFlows from the same
merge: the same flows in the same order, node status and errors, a slow batched
consumer, an agent killed under a batched follower."""
from __future__ import annotations

import contextlib
import io
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from support import (client_server_lab, ts, TRAFFIC, AgentProc, RelayProc, lab_prefix, pod_endpoint, run_in,
                     start_in, wait_for, write_endpoints)
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.relay import relay_pb2 as rpb
from webb.api.stream import stream_pb2 as spb
from webb.api.stream import stream_pb2_grpc
from webb.api.observer import observer_pb2_grpc
from webb.netlab import NetLab
from webb_cli.formats.printer import Printer
from webb_cli.main import build_parser
from webb_cli.main import main as webb_main
from webb_cli.observe import build_request, print_options

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

PREFIX = lab_prefix("wtb")
NODES = ("n1", "n2")
GET_FLOWS = "/observer.Observer/GetFlows"



@pytest.fixture(scope="module")
def lab():
    with client_server_lab(PREFIX, NODES) as lab:
        yield lab


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("relay-batches")


@pytest.fixture(scope="module")
def agents(lab, workdir):
    eps = workdir / "endpoints.yaml"
    write_endpoints(eps, [pod_endpoint(lab.pods[f"{k}{i}"], f"{k}{i}")
                          for i in (1, 2) for k in ("c", "s")])
    # rings larger than the slow-consumer test's flood: what is shed is the relay's
    a = {"n1": AgentProc(workdir, "n1", lab.nodes["n1"].netns, eps, ring=32767),
         "n2": AgentProc(workdir, "n2", lab.nodes["n2"].netns, eps, ring=32767,
                         extra=["--disable-batch-service"])}
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda n: a[n].start(), NODES))
        for i, n in enumerate(NODES, start=1):
            a[n].wait_attached([f"c{i}", f"s{i}"])
        yield a
    finally:
        for x in a.values():
            x.stop()


class Relay(RelayProc):
    def raw_flows(self, req: opb.GetFlowsRequest, timeout: float = 20) -> list[bytes]:
        assert self.channel is not None
        call = self.channel.unary_stream(GET_FLOWS,
                                         request_serializer=opb.GetFlowsRequest.SerializeToString,
                                         response_deserializer=lambda b: b)
        return list(call(req, timeout=timeout))

    def batches(self, req: opb.GetFlowsRequest, timeout: float = 20) -> list[spb.FlowBatch]:
        assert self.channel is not None
        return list(stream_pb2_grpc.FlowStreamStub(self.channel).GetFlowBatches(req,
                                                                               timeout=timeout))


@pytest.fixture(scope="module")
def relay(agents, workdir):
    r = Relay(workdir, "--peers", f"{agents['n1'].address},{agents['n2'].address}",
              "--queue-size", "64", "--slow-client-timeout", "300ms",
              "--error-aggregation-window", "300ms")
    try:
        r.start()
        wait_for(lambda: {n.name for n in r.observer.GetNodes(opb.GetNodesRequest(), timeout=5).nodes
                          if n.state == rpb.NODE_CONNECTED} == set(NODES), 20, 0.2,
                 "relay connected to both agents")
        yield r
    finally:
        r.stop()


def cross_traffic(lab: NetLab, port: int) -> None:
    """c1 -> s2 and c2 -> s1: each connection is seen on both nodes."""
    pairs = [(1, 2), (2, 1)]
    servers = [start_in(lab, lab.pods[f"s{d}"].netns, "tcp-server", str(port)) for _, d in pairs]
    clients = [lab.popen(lab.pods[f"c{c}"].netns, sys.executable, TRAFFIC, "tcp-client",
                         lab.pods[f"s{d}"].ip4, str(port), "--writes", "10", "--size", "100",
                         "--pace", "0.002") for c, d in pairs]
    for p in clients + servers:
        assert p.wait(20) == 0


def settled(lab: NetLab, agents: dict[str, AgentProc], port: int) -> Timestamp:
    """A time every later read sees whole: now, once the traffic before it is over, and
    only when each agent holds all it saw up to then. An agent releases its records in
    time order (ingest.py: HOLD_NS), so a datagram sent on each node after this time
    (c_i -> s_i, same node) is a barrier: once its flow is in that node's ring, so is
    every flow stamped before. (Waiting for some of the traffic's flows and sleeping
    was not enough: an agent descheduled under load released the rest later, and two
    reads up to the same time differed.)"""
    t = time.time_ns()
    for i, _ in enumerate(NODES, start=1):
        run_in(lab, lab.pods[f"c{i}"].netns, "udp-send", lab.pods[f"s{i}"].ip4, str(port),
               "--count", "1", "--ports", "1")

    def marked(n: str) -> bool:
        return any(f.l4.UDP.destination_port == port for f in agents[n].flows(since=ts(t)))
    wait_for(lambda: all(marked(n) for n in NODES), 30, 0.1, "each node's barrier datagram")
    return ts(t)


@pytest.fixture(scope="module")
def history(lab, agents, relay):
    cross_traffic(lab, 7300)
    until = settled(lab, agents, 7399)
    for n in NODES:
        assert any(7300 in (f.l4.TCP.source_port, f.l4.TCP.destination_port)
                   for f in agents[n].flows(until=until)), f"{n}: no flow of the traffic"
    return until


def decode(raws: list[bytes]) -> list[opb.GetFlowsResponse]:
    return [opb.GetFlowsResponse.FromString(r) for r in raws]


def flows_of(raws: list[bytes]) -> list[bytes]:
    return [r for r in raws if opb.GetFlowsResponse.FromString(r).HasField("flow")]


def check_columns(batches: list[spb.FlowBatch]) -> None:
    for b in batches:
        assert len(b.responses) == len(b.time_ns) == len(b.node_index)
        for raw, t, i in zip(b.responses, b.time_ns, b.node_index):
            r = opb.GetFlowsResponse.FromString(raw)
            assert r.time.ToNanoseconds() == t
            if r.HasField("flow"):
                assert b.nodes[i] == r.node_name == r.flow.node_name


@pytest.mark.parametrize("extra", [
    {},
    {"number": 9},
    {"number": 6, "first": True},
    {"whitelist": [fpb.FlowFilter(source_pod=["demo/c1"])]},
    {"field_mask": FieldMask(paths=["time", "node_name", "l4"])},
])
def test_batches_and_get_flows_give_the_same_flows_in_the_same_order(agents, relay, history,
                                                                     extra):
    req = opb.GetFlowsRequest(until=history, **extra)
    plain = relay.raw_flows(req)
    batches = relay.batches(req)
    check_columns(batches)
    entries = [e for b in batches for e in b.responses]
    assert flows_of(plain) and flows_of(entries) == flows_of(plain)  # byte for byte
    # node status in the same places: first the nodes asked (both: n2 by fallback)
    status = [(r.node_status.state_change, sorted(r.node_status.node_names))
              for r in decode(plain) if r.HasField("node_status")]
    assert status == [(r.node_status.state_change, sorted(r.node_status.node_names))
                      for r in decode(entries) if r.HasField("node_status")]
    assert status[0] == (rpb.NODE_CONNECTED, list(NODES)) and len(status) == 1
    got = [r for r in decode(entries) if r.HasField("flow")]
    times = [r.time.ToNanoseconds() for r in got]
    assert times == sorted(times)
    if not extra:  # exactly what the two agents hold, each through its own API
        direct = sorted(((f.time.ToNanoseconds(), f.uuid) for n in NODES
                         for f in agents[n].flows(until=history)))
        assert sorted((r.flow.time.ToNanoseconds(), r.flow.uuid) for r in got) == direct
        assert {r.node_name for r in got} == set(NODES) # n2 came through GetFlows


def webb_observe(*argv: str) -> tuple[int, str, str]:
    """`webb observe ARGV` in this process (no interpreter start), output captured."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            webb_main(["observe", *argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def printed_from_get_flows(address: str, argv: list[str]) -> tuple[str, str]:
    """What the same command line prints from Hubble's GetFlows, one flow per message,
    read here directly (the way `webb observe` read before the batched stream)."""
    a = build_parser().parse_args(["observe", *argv])
    out, err = io.StringIO(), io.StringIO()
    printer = Printer(print_options(a), out=out, err=err)
    with grpc.insecure_channel(address) as ch:
        for res in observer_pb2_grpc.ObserverStub(ch).GetFlows(build_request(a), timeout=20):
            printer.write_response(res)
    printer.close()
    return out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cli_window(lab, agents, relay, history) -> Timestamp:
    """Hundreds of flows on each node (new UDP destination ports: one flow each, seen on
    both nodes), and a time up to which every read sees them all (settled)."""
    for i in (1, 2):
        run_in(lab, lab.pods[f"c{i}"].netns, "udp-send", lab.pods[f"s{3 - i}"].ip4, "21000",
               "--count", "200", "--ports", "200")

    until = settled(lab, agents, 21999)
    for n in NODES:  # each node saw both directions: c_n's datagrams leave, s_n's arrive
        got = {(f.source.pod_name, f.l4.UDP.destination_port)
               for f in agents[n].flows(number=5000, until=until)
               if 21000 <= f.l4.UDP.destination_port < 21200}
        assert len(got) == 400, (n, len(got))
    return until


@pytest.mark.parametrize("target,method", [("relay", "GetFlowBatches"), ("n1", "GetFlowBatches"),
                                           ("n2", "GetFlows")])
def test_cli_observe_reads_batches_and_falls_back_to_get_flows(agents, relay, cli_window,
                                                               target, method):
    """`webb observe` reads webb's batched stream from the relay and from an agent, and
    Hubble's GetFlows from an agent without it (--disable-batch-service, as a Cilium
    agent): the output is byte for byte what GetFlows read one flow at a time gives."""
    address = relay.address if target == "relay" else agents[target].address
    until = cli_window.ToJsonString()
    for fmt, flows in ((["-o", "compact", "--print-node-name"], lambda o: o.count("\n") > 200),
                       (["-o", "jsonpb", "--last", "50"], lambda o: o.count('{"flow":') == 50),
                       (["-o", "dict", "--first", "30"], lambda o: o.count("  TIMESTAMP:") == 30)):
        argv = ["--server", address, "--until", until, "-D", *fmt]
        code, out, err = webb_observe(*argv)
        assert code == 0, err
        expected_out, expected_err = printed_from_get_flows(address, argv)
        assert out == expected_out and flows(out), out[-500:]
        debug = [ln for ln in err.splitlines() if ln.startswith("debug: ")]
        # node status (stderr with -D) is stamped when sent: all else the same
        assert unstamped(err) == unstamped(expected_err)
        m = re.fullmatch(r"debug: (\d+) responses in (\d+) (\w+) messages", debug[-1])
        assert m and m[3] == method, debug
        responses, messages = int(m[1]), int(m[2])
        if target == "n1":  # the agent's history: many flows to a message
            assert messages < responses / 10, debug
        # (the relay's batches follow the merge: n2's flows come one GetFlows message at
        # a time, so how many go into one batch depends on timing)
        if method == "GetFlows":
            assert "has no batched stream" in err and messages == responses, debug


def unstamped(stderr: str) -> list[str]:
    return [re.sub(r'[A-Z][a-z]{2} +\d+ [\d:.]+|"time":"[^"]*"', "", ln)
            for ln in stderr.splitlines() if not ln.startswith("debug: ")]


class BatchFollower:
    """A batched follow stream read by a thread (or not read, to play a slow client)."""

    def __init__(self, relay: Relay, read: bool = True, **req: Any) -> None:
        assert relay.channel is not None
        self.call = stream_pb2_grpc.FlowStreamStub(relay.channel).GetFlowBatches(
            opb.GetFlowsRequest(follow=True, **req), timeout=180)
        self.items: list[opb.GetFlowsResponse] = []
        self.error: grpc.RpcError | None = None
        self.go = threading.Event()
        if read:
            self.go.set()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            it = iter(self.call)
            self.items.extend(decode(list(next(it).responses)))  # node status first
            self.go.wait(60)
            for b in it:
                self.items.extend(decode(list(b.responses)))
        except grpc.RpcError as e:
            self.error = e

    def flows(self) -> list[fpb.Flow]:
        return [r.flow for r in list(self.items) if r.HasField("flow")]

    def statuses(self) -> list[tuple[int, set[str], str]]:
        return [(r.node_status.state_change, set(r.node_status.node_names), r.node_status.message)
                for r in list(self.items) if r.HasField("node_status")]

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)


def test_follow_gives_the_same_live_flows_both_ways(lab, agents, relay, history):
    since = ts(time.time_ns())
    batched = BatchFollower(relay, since=since)
    plain = relay.observer.GetFlows(opb.GetFlowsRequest(follow=True, since=since), timeout=60)
    got_plain: list[opb.GetFlowsResponse] = []

    def read_plain() -> None:
        try:
            for r in plain:
                got_plain.append(r)
        except grpc.RpcError as e:  # cancelled at the end; anything else fails the test
            if e.code() != grpc.StatusCode.CANCELLED:
                got_plain.append(e)  # type: ignore[arg-type]
    reader = threading.Thread(target=read_plain, daemon=True)
    reader.start()
    try:
        wait_for(lambda: batched.statuses() and got_plain, 10, what="node status")
        cross_traffic(lab, 7310)

        def keys(flows: list[fpb.Flow]) -> list[tuple]:
            return [(f.node_name, f.time.ToNanoseconds(), f.uuid) for f in flows
                    if 7310 in (f.l4.TCP.source_port, f.l4.TCP.destination_port)]

        def plain_flows() -> list[fpb.Flow]:
            return [r.flow for r in list(got_plain)
                if isinstance(r, opb.GetFlowsResponse) and r.HasField("flow")]
        # What both streams must bring: the traffic's flows as the agents hold them.
        until = settled(lab, agents, 7398)
        want = {k for n in NODES for k in keys(agents[n].flows(since=since, until=until))}
        assert {k[0] for k in want} == set(NODES)
        wait_for(lambda: want <= set(keys(batched.flows())) and want <= set(keys(plain_flows())),
                 30, 0.1, "the traffic's flows on both streams")
        b, p = keys(batched.flows()), keys(plain_flows())
        assert not [e for e in got_plain if isinstance(e, grpc.RpcError)] and batched.error is None
        assert set(b) == set(p) == want
        # Each node's flows in time order, the same on both streams. (Across nodes the
        # merge is exact only within the sort window: a node late by more than 1 s, as
        # under load, is interleaved by arrival, as in Hubble's relay.)
        for n in NODES:
            bn = [k for k in b if k[0] == n]
            assert bn == [k for k in p if k[0] == n] and bn == sorted(bn, key=lambda k: k[1])
    finally:
        plain.cancel()
        batched.close()
        reader.join(5)


def test_a_slow_batched_consumer_gets_a_lost_event(lab, relay, history):
    """A follower that stops reading: the relay sheds (bounded buffers) and tells it
    how much with a LostEvent when it reads again."""
    def shedding() -> int:  # upstream.py logs each episode of shedding for a client
        return relay.log.read_text(errors="replace").count("client too slow: dropping flows")
    before = shedding()
    slow = BatchFollower(relay, read=False, since=ts(time.time_ns()))
    try:
        wait_for(lambda: slow.statuses(), 10, what="node status")
        for i in (1, 2):  # thousands of flows: far more than gRPC's windows hold
            run_in(lab, lab.pods[f"c{i}"].netns, "udp-send", lab.pods[f"s{3 - i}"].ip4,
                   "20000", "--count", "3000", "--ports", "3000")
        # Read again only once the relay has shed (its slow-client timeout is 300 ms;
        # a fixed wait for it could end before a loaded relay got there, and then a
        # reader that keeps up would never be owed a LostEvent).
        wait_for(lambda: shedding() > before, 60, 0.1, "the relay shedding for the slow client")
        slow.go.set()
        wait_for(lambda: any(r.lost_events.source == fpb.OBSERVER_EVENTS_QUEUE
                             for r in slow.items if r.HasField("lost_events")), 20,
                 what="the relay's LostEvent for the slow client")
        lost = [r for r in slow.items if r.HasField("lost_events")
                and r.lost_events.source == fpb.OBSERVER_EVENTS_QUEUE]
        assert lost[0].lost_events.num_events_lost > 0 and lost[0].node_name in NODES
        for n in NODES:  # each node's flows in order (across nodes, an overflowing sort
            # buffer releases in arrival order, as Hubble's)
            t = [f.time.ToNanoseconds() for f in slow.flows() if f.node_name == n]
            assert t == sorted(t)
        assert slow.error is None
    finally:
        slow.close()


def test_agent_killed_under_a_batched_follower(lab, agents, relay, history):
    follower = BatchFollower(relay, since=ts(time.time_ns()))
    n1 = agents["n1"]
    try:
        wait_for(lambda: follower.statuses(), 10, what="node status")
        n1.proc.kill()  # no goodbye
        n1.proc.wait(5)
        wait_for(lambda: any(s[0] == rpb.NODE_ERROR and "n1" in s[1]
                             for s in follower.statuses()), 10, what="NODE_ERROR for n1")
        assert [s for s in follower.statuses() if s[0] == rpb.NODE_ERROR][0][2]
        # n2 goes on: c2 -> s2 is seen on n2 only
        srv = start_in(lab, lab.pods["s2"].netns, "tcp-server", "7320", "--count", "1")
        run_in(lab, lab.pods["c2"].netns, "tcp-client", lab.pods["s2"].ip4, "7320")
        srv.wait(10)
        wait_for(lambda: any(f.node_name == "n2" and 7320 in (f.l4.TCP.destination_port,
                                                             f.l4.TCP.source_port)
                             for f in follower.flows()), 10, what="n2's flows after n1 died")
        assert follower.error is None
    finally:
        follower.close()

"""The consumers of webb's flow stream (webb.flow_follow: the UI and the exporter) against
real agents on network-namespace nodes and a real relay, with real traffic. Node n2's agent
runs with --disable-batch-service, as a Cilium agent would (Hubble's GetFlows only):

- a following UI view and exporter read batches from the relay and go on through a relay
  restart: flows sent while the relay was down are counted, and none is counted twice
  (compared with the agents' own flows);
- the same UI and exporter against n2 alone fall back to GetFlows and count the same;
- a consumer slower than the stream sheds, and reports exactly what it shed as lost events.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from support import (AgentProc, free_port, lab_prefix, pod_endpoint, run_in, start_in, until, wait_for,
                     write_endpoints)
from test_metrics import Exporter, Relay, http_get
from webb.api.flow import flow_pb2 as fpb
from webb.flow_follow import FlowFollower
from webb.netlab import NetLab

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from test_ui_flowserver import UIProc  # noqa: E402

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

PREFIX = lab_prefix("wts")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stream")


@pytest.fixture(scope="module")
def lab():
    lab = NetLab(PREFIX)
    lab.cleanup()
    try:
        n1, n2 = lab.add_node("n1", 1), lab.add_node("n2", 2)
        lab.add_pod(n1, "client", 10)
        lab.add_pod(n2, "cart", 10)
        yield lab
    finally:
        lab.cleanup()


@pytest.fixture(scope="module")
def agents(lab, workdir):
    eps = workdir / "endpoints.yaml"
    agents = {"n1": AgentProc(workdir, "n1", lab.nodes["n1"].netns, eps),
              "n2": AgentProc(workdir, "n2", lab.nodes["n2"].netns, eps, extra=["--disable-batch-service"])}
    p = lab.pods
    write_endpoints(eps, [pod_endpoint(p["client"], "client", namespace="demo"),
                          pod_endpoint(p["cart"], "cart", namespace="shop")],
                    [{"name": n, "ips": [lab.nodes[n].ip], "agent_address": a.address}
                     for n, a in agents.items()])
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda a: a.start(), agents.values()))
        agents["n1"].wait_attached(["client"])
        agents["n2"].wait_attached(["cart"])
        yield agents
    finally:
        for a in agents.values():
            a.stop()


@pytest.fixture(scope="module")
def relay(agents, workdir):
    r = Relay(workdir, agents["n1"].address)
    try:
        yield r.start()
    finally:
        r.stop()


def tcp(lab: NetLab, port: int, connections: int = 1) -> None:
    p = lab.pods
    srv = start_in(lab, p["cart"].netns, "tcp-server", str(port), "--count", str(connections))
    for _ in range(connections):
        run_in(lab, p["client"].netns, "tcp-client", p["cart"].ip4, str(port), "--writes", "5")
    assert srv.wait(10) == 0


def to_port(agents, port: int) -> int:
    """Flows to `port` the agents hold (both nodes see each request: egress and ingress)."""
    return sum(1 for a in agents.values() for f in a.flows()
               if f.l4.HasField("TCP") and f.l4.TCP.destination_port == port)


def health(exporter: Exporter) -> dict:
    code, body = http_get(exporter.url + "/healthz")
    assert code == 200, body
    return json.loads(body)


def requests_to(agents, port: int) -> int:
    return sum(1 for a in agents.values() for f in a.flows()
               if f.verdict == fpb.FORWARDED and f.l4.HasField("TCP") and f.l4.TCP.destination_port == port
               and f.HasField("is_reply") and not f.is_reply.value)


def test_ui_and_exporter_resume_through_a_relay_restart(lab, agents, relay, workdir):
    exporter = Exporter(workdir, "metrics", relay.address)
    ui = UIProc(relay.address, free_port(), workdir / "ui.log")
    try:
        exporter.start()
        ui.start()
        ports = (7080, 7081, 7082)
        for port in ports:  # open the views now: they must follow through the restart
            ui.get("/api/map", {"filter": [f"to:port={port}"]})

        def view(port: int) -> dict:
            vs = ui.get("/api/status")["views"]
            return next(v for v in vs if v["key"].endswith(f"port={port}"))
        for port in ports:
            wait_for(lambda: view(port)["state"] == "live", 20, 0.2, f"view of port {port} live")
        tcp(lab, 7080, connections=2)

        def same(port: int) -> bool:
            want = to_port(agents, port)
            got_ui = view(port)["flows_seen"]
            got_ex = exporter.value("hubble_port_distribution_total", port=str(port))
            return want > 0 and got_ui == want and got_ex == requests_to(agents, port)
        wait_for(lambda: same(7080), 20, 0.2, "UI and exporter see port 7080")
        relay.stop()
        wait_for(lambda: exporter.value("webb_metrics_source_up") == 0, 10, 0.1, "exporter noticing")
        tcp(lab, 7081, connections=2)  # while the relay is down: the agents keep it
        relay.start()
        wait_for(lambda: exporter.value("webb_metrics_source_up") == 1, 20, 0.2, "exporter back")
        for port in ports:
            wait_for(lambda: view(port)["reconnects"] >= 1 and view(port)["state"] == "live", 20, 0.2,
                     f"view of port {port} back")
        # New traffic to every port after each stream came back: it follows whatever the
        # resumed streams replay, so once it is counted, a flow replayed twice would have
        # been counted too (no waiting for "long enough").
        for port in ports:
            tcp(lab, port)
        for port in ports:
            wait_for(lambda: same(port), 20, 0.2, f"port {port}: seen once by UI and exporter")
        st = view(7080)
        assert st["reconnects"] >= 1 and st["shed"] == 0 and st["stream"] == "batches"
        assert exporter.value("webb_metrics_source_reconnects_total") >= 1
        assert health(exporter)["stream"] == "batches"
    finally:
        ui.stop()
        exporter.stop()


def test_ui_and_exporter_fall_back_to_getflows_on_a_hubble_only_server(lab, agents, workdir):
    n2 = agents["n2"]  # --disable-batch-service: answers GetFlowBatches with UNIMPLEMENTED
    exporter = Exporter(workdir, "metrics-n2", n2.address)
    ui = UIProc(n2.address, free_port(), workdir / "ui-n2.log")
    try:
        exporter.start()
        ui.start()
        ui.get("/api/map", {"filter": ["to:port=7090"]})

        def view() -> dict:
            return next(v for v in ui.get("/api/status")["views"] if v["key"].endswith("port=7090"))
        wait_for(lambda: view()["state"] == "live", 20, 0.2, "view live")
        tcp(lab, 7090, connections=3)

        def same() -> bool:
            want = to_port({"n2": n2}, 7090)
            return (want > 0 and view()["flows_seen"] == want
                    and exporter.value("hubble_port_distribution_total", port="7090")
                    == requests_to({"n2": n2}, 7090))
        wait_for(same, 20, 0.2, "UI and exporter count n2's flows to 7090")
        assert view()["stream"] == "getflows" and health(exporter)["stream"] == "getflows"
    finally:
        ui.stop()
        exporter.stop()


def test_a_slow_consumer_sheds_and_reports_what_it_shed(lab, agents, relay):
    """The follower under a consumer that is stuck while a burst arrives and then takes
    0.3 s per batch, with room for 200 flows: what it delivered plus what it reported lost
    (its own shedding, and the relay's if any) is every flow the agents hold since it
    started."""
    start = time.time_ns()
    name = "slow-consumer"
    got: dict[str, int] = {"delivered": 0, "own_lost": 0, "relay_lost": 0}
    seen: set[str] = set()
    duplicates: list[str] = []

    stuck = [True]

    async def consume(f: FlowFollower, burst: asyncio.Future) -> None:
        async for batch in f.follow():
            if stuck[0]:
                # Stuck on the first batch until the burst is out and the follower has had
                # to shed: shedding then does not hang on how fast this machine is today.
                await burst
                await until(lambda: f.stats.shed > 0, 60, "the follower shedding")
                stuck[0] = False
            for r in batch.responses():
                which = r.WhichOneof("response_types")
                if which == "flow":
                    got["delivered"] += 1
                    if r.flow.uuid in seen:
                        duplicates.append(r.flow.uuid)
                    seen.add(r.flow.uuid)
                elif which == "lost_events" and r.lost_events.source == fpb.OBSERVER_EVENTS_QUEUE:
                    got["own_lost" if r.node_name == name else "relay_lost"] += \
                        r.lost_events.num_events_lost
            await asyncio.sleep(0.3)  # the slow part

    async def main() -> tuple[FlowFollower, int]:
        async with grpc.aio.insecure_channel(relay.address) as ch:
            f = FlowFollower(ch, since_ns=start, max_pending=200, shed_after_s=0.05, name=name)
            burst = asyncio.get_running_loop().run_in_executor(None, _burst, lab)
            reader = asyncio.create_task(consume(f, burst))
            try:
                await burst
                # The burst is over; the agents still hand on its last records (the hold-back)
                # and the slow consumer works through what is queued. Done when every flow
                # the agents hold is accounted for, or when nothing moved for 10 s (then the
                # assertions below say what is missing).
                held, last, still = -1, None, time.monotonic()
                while True:
                    assert not reader.done(), "the stream ended"
                    held = await asyncio.get_running_loop().run_in_executor(
                        None, _held_since, agents, start)
                    now = (held, dict(got))
                    if sum(got.values()) == held or time.monotonic() - still > 10:
                        return f, held
                    if now != last or stuck[0]:
                        last, still = now, time.monotonic()
                    await asyncio.sleep(0.2)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    f, held = asyncio.run(asyncio.wait_for(main(), 150))
    assert not duplicates, f"flows delivered twice: {duplicates[:5]}"
    accounted = sum(got.values())
    if accounted != held:
        missing = [(fl.node_name, fl.time.ToNanoseconds(), fl.uuid) for a in agents.values()
                   for fl in a.flows() if fl.time.ToNanoseconds() >= start and fl.uuid not in seen]
        missing.sort(key=lambda m: m[1])
        raise AssertionError(f"held {held}, accounted {accounted} ({got}, stats {f.stats}); "
                             f"{len(missing)} not delivered, the first: {missing[:5]}, "
                             f"the last: {missing[-5:]}")
    assert f.stats.shed > 0, "the consumer was slow enough to shed"
    assert got["own_lost"] == f.stats.shed, "everything shed was reported"


def _burst(lab: NetLab) -> None:
    # 1500 datagrams to as many ports: 1500 new connections, a flow each at least
    p = lab.pods
    run_in(lab, p["client"].netns, "udp-send", p["cart"].ip4, "20000", "--count", "1500", "--ports", "1500")


def _held_since(agents, start_ns: int) -> int:
    return sum(1 for a in agents.values() for f in a.flows()
               if f.time.seconds * 1_000_000_000 + f.time.nanos >= start_ns)

"""The agent end to end: real eBPF on veths between network namespaces, real traffic,
flows read back over gRPC."""
from __future__ import annotations

import itertools
import json
import os
import sys
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support import (lab_prefix, BIN, TRAFFIC, AgentProc, RelayProc, pod_endpoint, run_in, start_in,
                     wait_for, write_endpoints)
from webb.api.admin import admin_pb2
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.peer import peer_pb2, peer_pb2_grpc
from webb.api.relay import relay_pb2 as rpb
from webb.api.stream import stream_pb2_grpc
from webb.netlab import NetLab

pytestmark = pytest.mark.root

PREFIX = lab_prefix("wta")


@pytest.fixture(scope="module")
def lab():
    lab = NetLab(PREFIX)
    lab.cleanup()
    try:
        n1 = lab.add_node("n1", 1)
        lab.add_pod(n1, "client", 10)
        lab.add_pod(n1, "server", 11)
        lab.add_pod(n1, "other", 12)
        lab.add_world()
        yield lab
    finally:
        lab.cleanup()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("agent")


def endpoints_of(lab: NetLab) -> list[dict]:
    p = lab.pods
    return [pod_endpoint(p["client"], "client", extra_labels={"tier": "front"}),
            pod_endpoint(p["server"], "server", extra_labels={"tier": "back"}),
            pod_endpoint(p["other"], "other", namespace="extra")]


@pytest.fixture(scope="module")
def agent(lab, workdir):
    eps = workdir / "endpoints.yaml"
    write_endpoints(eps, endpoints_of(lab))
    a = AgentProc(workdir, "n1", lab.nodes["n1"].netns, eps)
    try:
        a.start()
        a.wait_attached(["client", "server", "other"])
        yield a
    finally:
        a.stop()


@pytest.fixture(scope="module")
def traffic(lab, agent):
    """One round of known traffic, shared by the read-only tests below."""
    p = lab.pods
    srv = start_in(lab, p["server"].netns, "tcp-server", "8080", "--count", "1")
    # ~1,000 data packets on one connection: aggregation must keep the flows few.
    run_in(lab, p["client"].netns, "tcp-client", p["server"].ip4, "8080",
           "--writes", "1000", "--size", "200")
    srv.wait(10)
    udp = start_in(lab, p["server"].netns, "udp-echo", "5353", "--count", "3")
    run_in(lab, p["client"].netns, "udp-send", p["server"].ip4, "5353", "--count", "3")
    udp.wait(10)
    lab.exec(p["client"].netns, "ping", "-c", "2", "-i", "0.2", "-W", "1", p["server"].ip4)
    srv6 = start_in(lab, p["server"].netns, "tcp-server", "8086", "--ipv6")
    run_in(lab, p["client"].netns, "tcp-client", p["server"].ip6, "8086")
    srv6.wait(10)
    lab.exec(p["other"].netns, "ping", "-c", "1", "-W", "1", lab.world_ip)

    def recorded() -> bool:  # the agent drains its perf buffers on a timer: wait for it
        flows = agent.flows(number=500)
        return (any(f.IP.destination == lab.world_ip for f in flows)
                and any(f.l4.TCP.destination_port == 8086 and f.l4.TCP.flags.FIN for f in flows))
    wait_for(recorded, 15, 0.1, "the traffic's flows in the agent")
    return p


def conn_flows(flows, sport_or_dport: int, proto: str = "TCP"):
    out = []
    for f in flows:
        l4 = getattr(f.l4, proto)
        if f.l4.HasField(proto) and sport_or_dport in (l4.source_port, l4.destination_port):
            out.append(f)
    return out


def test_tcp_connection_flags_directions_and_aggregation(agent, traffic):
    flows = conn_flows(agent.flows(), 8080)
    # Two observation points (client veth, server veth) see each packet.
    assert 8 <= len(flows) <= 30, [f.Summary for f in flows]
    client_side = [f for f in flows if f.trace_observation_point == fpb.FROM_ENDPOINT
                   and f.source.pod_name == "client"]
    assert client_side[0].Summary == "TCP Flags: SYN"
    assert client_side[0].l4.TCP.flags.SYN and not client_side[0].l4.TCP.flags.ACK
    assert client_side[0].is_reply.value is False
    assert client_side[0].traffic_direction == fpb.EGRESS
    assert client_side[0].event_type.type == 4 and client_side[0].event_type.sub_type == 5
    assert client_side[0].l4.TCP.destination_port == 8080
    synack = [f for f in flows if f.l4.TCP.flags.SYN and f.l4.TCP.flags.ACK]
    assert synack and all(f.is_reply.value for f in synack)
    assert all(f.source.pod_name == "server" for f in synack)
    # At the server's veth the SYN arrives: to-endpoint, ingress for the server.
    to_server = [f for f in flows if f.trace_observation_point == fpb.TO_ENDPOINT
                 and f.destination.pod_name == "server" and f.l4.TCP.flags.SYN]
    assert to_server and to_server[0].traffic_direction == fpb.INGRESS
    assert to_server[0].event_type.sub_type == 0
    summaries = {f.Summary for f in flows}
    assert {"TCP Flags: SYN", "TCP Flags: SYN, ACK", "TCP Flags: ACK, FIN"} <= summaries
    # The request side sends its SYN before the reply side answers.
    times = [(f.time.seconds, f.time.nanos) for f in flows]
    assert times == sorted(times)


def test_endpoints_and_identities(agent, traffic):
    flows = conn_flows(agent.flows(), 8080)
    f = flows[0]
    assert f.source.namespace == "demo" and f.source.pod_name == "client"
    assert f.destination.pod_name == "server"
    assert "k8s:app=client" in f.source.labels
    assert "k8s:io.kubernetes.pod.namespace=demo" in f.source.labels
    assert f.source.identity >= 256 and f.destination.identity >= 256
    assert f.source.identity != f.destination.identity
    assert f.source.workloads[0].name == "client-v1"
    assert f.source.workloads[0].kind == "Deployment"
    assert f.source.ID > 0
    assert f.node_name == "n1"
    assert f.emitter.name == "webb"
    assert f.IP.source == traffic["client"].ip4 and f.IP.ipVersion == fpb.IPv4
    assert f.ethernet.source
    # Same identity from the identity API.
    ident = agent.admin.GetIdentity(admin_pb2.GetIdentityRequest(id=f.source.identity))
    assert "k8s:app=client" in ident.labels


def test_udp_icmp_ipv6_and_world(agent, traffic):
    flows = agent.flows()
    udp = conn_flows(flows, 5353, "UDP")
    assert any(f.Summary == "UDP" and not f.is_reply.value for f in udp)
    assert any(f.is_reply.value and f.source.pod_name == "server" for f in udp)
    icmp = [f for f in flows if f.l4.HasField("ICMPv4") and f.destination.pod_name in ("server", "client")]
    req = [f for f in icmp if f.l4.ICMPv4.type == 8]
    rep = [f for f in icmp if f.l4.ICMPv4.type == 0]
    assert req and rep and req[0].Summary == "ICMPv4 EchoRequest"
    assert all(f.is_reply.value for f in rep) and not any(f.is_reply.value for f in req)
    v6 = conn_flows(flows, 8086)
    assert v6 and v6[0].IP.ipVersion == fpb.IPv6 and v6[0].IP.source == traffic["client"].ip6
    # The pod's IPv6 gateway (neighbour discovery) is the node's link-local address: host.
    to_gateway = [f for f in flows if f.IP.destination == "fe80::1"]
    assert to_gateway and all(f.destination.identity == 1 for f in to_gateway)
    assert list(to_gateway[0].destination.labels) == ["reserved:host"]
    world = [f for f in flows if f.IP.destination == traffic_world(agent)]
    assert world and world[0].destination.identity == 2
    assert list(world[0].destination.labels) == ["reserved:world"]
    assert world[0].source.pod_name == "other" and world[0].source.namespace == "extra"


def traffic_world(agent) -> str:
    return _lab_world_ip[0]


_lab_world_ip: list[str] = []


@pytest.fixture(autouse=True, scope="module")
def _remember_world(lab):
    _lab_world_ip.append(lab.world_ip)


def test_follow_delivers_new_connection(lab, agent, traffic):
    # How soon is a bench figure (bench/pipeline_bench.py's live latency rows), not a timed
    # assertion: here the new connection must reach an already open follow stream at all.
    p = lab.pods
    got: list[float] = []
    probed = threading.Event()
    stream = agent.observer.GetFlows(opb.GetFlowsRequest(
        follow=True, whitelist=[fpb.FlowFilter(destination_port=["8090", "8091"])]), timeout=30)

    def reader():
        for r in stream:
            if r.HasField("flow") and r.flow.l4.UDP.destination_port == 8091:
                probed.set()
            elif r.HasField("flow") and r.flow.l4.TCP.destination_port == 8090:
                got.append(time.time())
                return
    t = threading.Thread(target=reader)
    t.start()
    # Readiness instead of a sleep: UDP probes until one comes out of the open stream.
    for _ in range(40):
        run_in(lab, p["client"].netns, "udp-send", p["server"].ip4, "8091")
        if probed.wait(0.5):
            break
    assert probed.is_set(), "the follow stream delivered no probe flow"
    srv = start_in(lab, p["server"].netns, "tcp-server", "8090")
    run_in(lab, p["client"].netns, "tcp-client", p["server"].ip4, "8090")
    srv.wait(10)
    t.join(10)
    stream.cancel()
    assert got, "no flow arrived on the follow stream"


def req_with(**filt) -> opb.GetFlowsRequest:
    return opb.GetFlowsRequest(whitelist=[fpb.FlowFilter(**filt)])


@pytest.mark.parametrize("filt,check", [
    ({"source_pod": ["demo/client"]}, lambda f: f.source.pod_name == "client"),
    ({"destination_pod": ["demo/serv"]}, lambda f: f.destination.pod_name == "server"),
    ({"source_ip": ["10.244.1.10"]}, lambda f: f.IP.source == "10.244.1.10"),
    ({"destination_ip": ["10.244.1.0/24"]}, lambda f: f.IP.destination.startswith("10.244.1.")),
    ({"source_label": ["app=client"]}, lambda f: "k8s:app=client" in f.source.labels),
    ({"destination_label": ["tier in (back)"]}, lambda f: "k8s:tier=back" in f.destination.labels),
    ({"destination_port": ["8080"]}, lambda f: f.l4.TCP.destination_port == 8080),
    ({"protocol": ["udp"]}, lambda f: f.l4.HasField("UDP")),
    ({"protocol": ["icmp"]}, lambda f: f.l4.HasField("ICMPv4") or f.l4.HasField("ICMPv6")),
    ({"verdict": [fpb.FORWARDED]}, lambda f: f.verdict == fpb.FORWARDED),
    ({"event_type": [fpb.EventTypeFilter(type=4, match_sub_type=True, sub_type=0)]},
     lambda f: f.trace_observation_point == fpb.TO_ENDPOINT),
    ({"traffic_direction": [fpb.INGRESS]}, lambda f: f.traffic_direction == fpb.INGRESS),
    ({"tcp_flags": [fpb.TCPFlags(SYN=True, ACK=True)]}, lambda f: f.l4.TCP.flags.SYN and f.l4.TCP.flags.ACK),
    ({"node_name": ["n1"]}, lambda f: f.node_name == "n1"),
    ({"reply": [True]}, lambda f: f.is_reply.value),
    ({"ip_version": [fpb.IPv6]}, lambda f: f.IP.ipVersion == fpb.IPv6),
    ({"destination_identity": [2]}, lambda f: f.destination.identity == 2),
    ({"source_pod": ["extra/"]}, lambda f: f.source.namespace == "extra"),
])
def test_each_filter(agent, traffic, filt, check):
    flows = agent.flows(whitelist=[fpb.FlowFilter(**filt)])
    assert flows, f"no flow matched {filt}"
    assert all(check(f) for f in flows)
    everything = agent.flows()
    # The filter selected exactly the flows the predicate selects (same ring content).
    assert len([f for f in everything if check(f)]) >= len(flows)


def test_identity_and_http_filters(agent, traffic):
    f0 = conn_flows(agent.flows(), 8080)[0]
    ident = f0.source.identity
    flows = agent.flows(whitelist=[fpb.FlowFilter(source_identity=[ident])])
    assert flows and all(f.source.identity == ident for f in flows)
    # No L7 flows exist yet: an L7 filter matches nothing, and is accepted.
    assert agent.flows(whitelist=[fpb.FlowFilter(http_status_code=["5+"])]) == []
    assert agent.flows(whitelist=[fpb.FlowFilter(http_method=["GET"])]) == []
    assert agent.flows(whitelist=[fpb.FlowFilter(dns_query=[".*"])]) == []


def test_whitelist_blacklist_combinations(agent, traffic):
    udp = agent.flows(whitelist=[fpb.FlowFilter(protocol=["udp"])])
    icmp = agent.flows(whitelist=[fpb.FlowFilter(protocol=["icmp"])])
    both = agent.flows(whitelist=[fpb.FlowFilter(protocol=["udp"]), fpb.FlowFilter(protocol=["icmp"])])
    assert len(both) == len(udp) + len(icmp)  # filters in a list OR
    anded = agent.flows(whitelist=[fpb.FlowFilter(protocol=["tcp"], destination_port=["8080"],
                                                  source_pod=["demo/client"])])
    assert anded and all(f.source.pod_name == "client" and f.l4.TCP.destination_port == 8080
                         for f in anded)  # fields AND
    minus = agent.flows(whitelist=[fpb.FlowFilter(protocol=["tcp"])],
                        blacklist=[fpb.FlowFilter(destination_port=["8080"]),
                                   fpb.FlowFilter(source_port=["8080"])])
    assert minus and all(8080 not in (f.l4.TCP.source_port, f.l4.TCP.destination_port)
                         for f in minus)
    only_black = agent.flows(blacklist=[fpb.FlowFilter(protocol=["tcp"])])
    assert only_black and not any(f.l4.HasField("TCP") for f in only_black)


def test_number_first_since_until(agent, traffic):
    # The flows of one finished connection: nothing new can match while we ask.
    done = [fpb.FlowFilter(destination_port=["8080"]), fpb.FlowFilter(source_port=["8080"])]
    allf = agent.flows(whitelist=done)
    assert len(allf) > 10
    last3 = agent.flows(number=3, whitelist=done)
    assert [f.uuid for f in last3] == [f.uuid for f in allf[-3:]]
    first3 = agent.flows(number=3, first=True, whitelist=done)
    assert [f.uuid for f in first3] == [f.uuid for f in allf[:3]]
    key = lambda f: (f.time.seconds, f.time.nanos)  # noqa: E731
    mid = allf[len(allf) // 2]
    since = agent.flows(since=mid.time, whitelist=done)
    assert since and all(key(f) >= key(mid) for f in since)
    assert [f.uuid for f in since] == [f.uuid for f in allf if key(f) >= key(mid)]
    until = agent.flows(until=mid.time, whitelist=done)
    assert [f.uuid for f in until] == [f.uuid for f in allf if key(f) <= key(mid)]
    # A future window is empty, not an error.
    future = Timestamp(seconds=int(time.time()) + 3600)
    assert agent.flows(since=future) == []


@pytest.mark.parametrize("req,msg", [
    (opb.GetFlowsRequest(first=True, follow=True), "first"),
    (opb.GetFlowsRequest(number=5, since=Timestamp(seconds=1)), "since"),
    (opb.GetFlowsRequest(whitelist=[fpb.FlowFilter(source_ip=["10.0.0.0/99"])]), "10.0.0.0/99"),
    (opb.GetFlowsRequest(whitelist=[fpb.FlowFilter(source_label=["app in (("])]), ""),
    (opb.GetFlowsRequest(whitelist=[fpb.FlowFilter(http_status_code=["5x"])]), "5x"),
])
def test_bad_requests_are_invalid_argument(agent, req, msg):
    with pytest.raises(grpc.RpcError) as e:
        list(agent.observer.GetFlows(req, timeout=5))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert msg in e.value.details()
    # The server is still serving.
    assert agent.observer.ServerStatus(opb.ServerStatusRequest(), timeout=5).max_flows == 4095


def test_server_status_nodes_namespaces_health_peer(agent, traffic):
    st = agent.observer.ServerStatus(opb.ServerStatusRequest(), timeout=5)
    assert st.max_flows == 4095 and 0 < st.num_flows <= 4095
    assert st.seen_flows >= st.num_flows and st.uptime_ns > 0
    assert st.flows_rate > 0 and st.version
    assert st.num_connected_nodes.value == 1
    nodes = agent.observer.GetNodes(opb.GetNodesRequest(), timeout=5).nodes
    assert [n.name for n in nodes] == ["n1"] and nodes[0].state == 1  # NODE_CONNECTED
    ns = agent.observer.GetNamespaces(opb.GetNamespacesRequest(), timeout=5).namespaces
    assert {n.namespace for n in ns} == {"demo", "extra"}
    health = health_pb2_grpc.HealthStub(agent.channel)
    # "" and Hubble's v1.ObserverServiceName (what `hubble status` asks), as a Hubble
    # server registers them, and webb's services by their gRPC names.
    for svc in ("", "hubble.server.Observer", "observer.Observer", "peer.Peer"):
        assert health.Check(health_pb2.HealthCheckRequest(service=svc), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
    notes = peer_pb2_grpc.PeerStub(agent.channel).Notify(peer_pb2.NotifyRequest(), timeout=3)
    first = next(iter(notes))
    notes.cancel()
    assert first.name == "n1" and first.address == agent.address
    assert first.type == peer_pb2.PEER_ADDED


def test_grpcurl_reflection_and_json(agent, traffic):
    grpcurl = str(BIN / "grpcurl")
    out = subprocess.run([grpcurl, "-plaintext", agent.address, "list"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    services = set(out.stdout.split())
    assert {"observer.Observer", "peer.Peer", "grpc.health.v1.Health",
            "webb.stream.FlowStream"} <= services
    out = subprocess.run([grpcurl, "-plaintext", "-d", '{"number": 2}', agent.address,
                          "webb.stream.FlowStream/GetFlowBatches"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    batch = json.loads(out.stdout)  # one batch: both entries were ready at once
    assert batch["nodes"] == ["n1"] and len(batch["responses"]) == len(batch["time_ns"]) == 2
    out = subprocess.run([grpcurl, "-plaintext", "-d", '{"number": 3}', agent.address,
                          "observer.Observer/GetFlows"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    docs = [json.loads(chunk) for chunk in out.stdout.replace("}\n{", "}\x00{").split("\x00") if chunk.strip()]
    assert len(docs) == 3
    f = docs[0]["flow"]
    # grpcurl prints proto field names, as in Hubble's own grpcurl examples.
    assert docs[0]["node_name"] == "n1"
    assert f["verdict"] == "FORWARDED" and f["Type"] == "L3_L4"
    assert "source" in f and "IP" in f and "l4" in f and "is_reply" in f
    assert f["emitter"]["name"] == "webb"


def test_endpoint_added_at_run_time(lab, agent, workdir):
    late = lab.add_pod(lab.nodes["n1"], "late", 20)
    try:
        write_endpoints(workdir / "endpoints.yaml",
                        endpoints_of(lab)[:3] + [pod_endpoint(late, "late")])
        agent.wait_attached(["late"])
        lab.exec(late.netns, "ping", "-c", "1", "-W", "1", lab.pods["server"].ip4)

        def seen():
            return agent.flows(whitelist=[fpb.FlowFilter(source_pod=["demo/late"])])
        flows = wait_for(seen, 5, what="flows from the late pod")
        assert flows[0].source.identity >= 256 and "k8s:app=late" in flows[0].source.labels
        # And one added through the admin API.
        ep = admin_pb2.Endpoint(name="api-made", namespace="demo",
                                labels={"app": "late", "version": "v1"}, service_account="late",
                                ips=["10.244.1.99"], node="n1")
        got = agent.admin.PutEndpoint(admin_pb2.PutEndpointRequest(endpoint=ep), timeout=5).endpoint
        assert got.identity == flows[0].source.identity  # same labels, same identity
        names = {e.name for e in agent.admin.ListEndpoints(admin_pb2.ListEndpointsRequest()).endpoints}
        assert "api-made" in names
        agent.admin.DeleteEndpoint(admin_pb2.DeleteEndpointRequest(namespace="demo", name="api-made"))
    finally:
        write_endpoints(workdir / "endpoints.yaml", endpoints_of(lab)[:3])
        lab.remove_pod("late")


def test_ring_overwrite_gives_lost_event(lab, workdir):
    """A tiny ring and a reader that stalls: the overwritten span comes back as a LostEvent."""
    eps = workdir / "endpoints-small.yaml"
    write_endpoints(eps, endpoints_of(lab))
    small = AgentProc(workdir, "n1small", lab.nodes["n1"].netns, eps, ring=15,
                      extra=["--node-name", "n1"])
    try:
        small.start()
        small.wait_attached(["client", "server"])
        p = lab.pods
        def seen() -> int:
            return small.observer.ServerStatus(opb.ServerStatusRequest(), timeout=5).seen_flows
        before = seen()
        stream = small.observer.GetFlows(opb.GetFlowsRequest(follow=True), timeout=60)
        it = iter(stream)
        # Many short UDP "connections": each new port is a new flow.
        run_in(lab, p["client"].netns, "udp-send", p["server"].ip4, "20000",
               "--count", "3000", "--ports", "3000")
        # The stalled reader falls behind the 15-flow ring once the agent has taken in
        # far more than gRPC's window (without BDP, 64 KiB: a few hundred flows) holds;
        # waited for, not slept on: a loaded agent may take in the burst late.
        wait_for(lambda: seen() - before >= 1000, 30, 0.1, "the burst in the agent's ring")
        lost = 0
        deadline = time.time() + 10
        for r in it:
            if r.HasField("lost_events"):
                assert r.lost_events.source == fpb.HUBBLE_RING_BUFFER
                lost += r.lost_events.num_events_lost
                break
            if time.time() > deadline:
                break
        stream.cancel()
        assert lost > 0
    finally:
        small.stop()


def test_agent_without_endpoints_serves_empty_healthy_api(lab, workdir):
    """... and, with --disable-batch-service, plays a plain Hubble server."""
    bare = AgentProc(workdir, "bare", lab.nodes["n1"].netns, None,
                     extra=["--disable-batch-service"])
    try:
        bare.start()
        assert bare.flows(number=10) == []
        st = bare.observer.ServerStatus(opb.ServerStatusRequest(), timeout=5)
        assert st.num_flows == 0 and st.max_flows == 4095
        with pytest.raises(grpc.RpcError) as e:
            list(stream_pb2_grpc.FlowStreamStub(bare.channel).GetFlowBatches(
                opb.GetFlowsRequest(number=1), timeout=5))
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        out = subprocess.run([str(BIN / "grpcurl"), "-plaintext", bare.address, "list"],
                             capture_output=True, text=True, timeout=30)
        assert "observer.Observer" in out.stdout and "webb.stream" not in out.stdout
    finally:
        bare.stop()


def test_unix_socket_and_agent_events(agent, traffic):
    with grpc.insecure_channel(f"unix://{agent.sock}") as ch:
        from webb.api.observer import observer_pb2_grpc
        stub = observer_pb2_grpc.ObserverStub(ch)
        flows = [r.flow for r in stub.GetFlows(opb.GetFlowsRequest(number=2), timeout=5)]
        assert len(flows) == 2
        events = [r.agent_event for r in stub.GetAgentEvents(opb.GetAgentEventsRequest(), timeout=5)]
    types = [e.type for e in events]
    assert fpb.AGENT_STARTED in types
    created = [e.endpoint_update.pod_name for e in events if e.type == fpb.ENDPOINT_CREATED]
    assert {"client", "server", "other"} <= set(created)


def test_long_lived_connection_is_reported_periodically(lab, workdir):
    eps = workdir / "endpoints-report.yaml"
    write_endpoints(eps, endpoints_of(lab))
    a = AgentProc(workdir, "n1report", lab.nodes["n1"].netns, eps,
                  extra=["--node-name", "n1", "--report-interval", "0.5"])
    try:
        a.start()
        a.wait_attached(["client", "server"])
        p = lab.pods
        srv = start_in(lab, p["server"].netns, "tcp-server", "8095")
        # ~2.5 s of steady data: no new flags after the first ACK+PSH, so only the
        # periodic report produces further flows.
        run_in(lab, p["client"].netns, "tcp-client", p["server"].ip4, "8095",
               "--writes", "50", "--pace", "0.05")
        srv.wait(10)
        flows = [f for f in a.flows(whitelist=[fpb.FlowFilter(destination_port=["8095"],
                                                              source_pod=["demo/client"])])
                 if f.trace_observation_point == fpb.FROM_ENDPOINT]
        psh = [f for f in flows if f.Summary == "TCP Flags: ACK, PSH"]
        assert len(psh) >= 3, [f.Summary for f in flows]  # first sighting + reports
        assert all(f.trace_reason == fpb.ESTABLISHED for f in psh)
    finally:
        a.stop()


def test_perf_buffer_loss_becomes_lost_event_through_the_relay(lab, workdir):
    """One perf page per CPU (--perf-pages 1) and the agent's reader stalled (SIGSTOP)
    while a burst of thousands of new flows (far more than a page holds) goes through
    the datapath: the kernel overruns the buffer whatever the machine's load. Once the
    agent runs again the loss is a LostEvent (PERF_EVENT_RING_BUFFER, the node's name)
    from the agent, and from the relay in front of it on GetFlows and GetFlowBatches."""
    eps = workdir / "endpoints-perf.yaml"
    write_endpoints(eps, endpoints_of(lab))
    a = AgentProc(workdir, "n1perf", lab.nodes["n1"].netns, eps,
                  extra=["--node-name", "n1", "--perf-pages", "1"])
    relay = RelayProc(workdir, "--peers", a.address)
    try:
        a.start()
        a.wait_attached(["client", "server"])
        relay.start()
        wait_for(lambda: [n.state for n in relay.observer.GetNodes(opb.GetNodesRequest(),
                                                                   timeout=5).nodes]
                 == [rpb.NODE_CONNECTED], 20, 0.2, "relay connected to the agent")
        since = Timestamp()
        since.GetCurrentTime()
        p = lab.pods
        assert a.proc is not None
        # Perf buffers are per CPU and an event goes to the CPU the sender runs on: the
        # burst runs on every CPU in turn (taskset), so every buffer overruns, and a probe
        # brings a loss record wherever the scheduler puts it.
        cpus = sorted(os.sched_getaffinity(0))

        def send_on(cpu: int, port: int, count: int) -> None:
            lab.exec(p["client"].netns, "taskset", "-c", str(cpu), sys.executable, TRAFFIC,
                     "udp-send", p["server"].ip4, str(port), "--count", str(count),
                     "--ports", str(count))
        os.kill(a.proc.pid, signal.SIGSTOP)  # nothing reads the perf buffers now
        try:
            for i, cpu in enumerate(cpus):
                send_on(cpu, 30000 + i * 5000, 5000)
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)

        def perf_lost(responses: list[opb.GetFlowsResponse]) -> list[opb.GetFlowsResponse]:
            return [r for r in responses if r.HasField("lost_events")
                    and r.lost_events.source == fpb.PERF_EVENT_RING_BUFFER]
        # The kernel writes its "lost N" record into a CPU's buffer with the next event
        # that fits there: new flows (new ports: each a perf event) until it has come.
        probe = itertools.count(30000 + len(cpus) * 5000, 20)

        def reported() -> list[opb.GetFlowsResponse]:
            port = next(probe)
            send_on(cpus[port // 20 % len(cpus)], port, 20)
            return perf_lost(list(a.observer.GetFlows(opb.GetFlowsRequest(since=since),
                                                      timeout=10)))
        direct = wait_for(reported, 15, 0.1, "the agent's perf LostEvent")
        assert all(r.node_name == "n1" and r.lost_events.num_events_lost > 0 for r in direct)
        seen = a.observer.ServerStatus(opb.ServerStatusRequest(), timeout=5).seen_flows
        assert seen < 10000 * len(cpus)  # each datagram seen leaving and arriving: many lost

        def key(rs: list[opb.GetFlowsResponse]) -> set[tuple]:
            return {(r.node_name, r.lost_events.num_events_lost, r.lost_events.cpu.value,
                     r.time.ToNanoseconds()) for r in rs}
        # in the agent's ring now, so in the relay's answers, the same, both ways (a CPU
        # whose loss is reported only later may add one)
        req = opb.GetFlowsRequest(since=since)
        plain = perf_lost(list(relay.observer.GetFlows(req, timeout=10)))
        batched = perf_lost([opb.GetFlowsResponse.FromString(raw)
                             for b in stream_pb2_grpc.FlowStreamStub(relay.channel)
                             .GetFlowBatches(req, timeout=10) for raw in b.responses])
        assert key(direct) <= key(plain) and key(direct) <= key(batched)
        assert all(r.node_name == "n1" for r in plain + batched)
    finally:
        relay.stop()
        if a.proc is not None and a.proc.poll() is None:
            os.kill(a.proc.pid, signal.SIGCONT)  # a stopped process cannot take SIGTERM
        a.stop()


@pytest.mark.parametrize("args,msg", [
    (["--ring-capacity", "1000"], "2^n-1"),
    (["--perf-pages", "3"], "power of two"),
    (["--listen-address", "127.0.0.1:notaport"], ""),
])
def test_bad_flags_exit_with_a_message(lab, args, msg):
    out = subprocess.run([str(BIN / "webb-agent"), "--netns", lab.nodes["n1"].netns,
                          "--unix-socket", "", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert msg in out.stderr
    assert "Traceback" not in out.stderr


def test_field_mask_and_experimental(agent, traffic):
    from google.protobuf.field_mask_pb2 import FieldMask
    req = opb.GetFlowsRequest(number=3, field_mask=FieldMask(paths=["source.pod_name", "verdict"]))
    req.experimental.SetInParent()
    flows = [r.flow for r in agent.observer.GetFlows(req, timeout=5)]
    assert len(flows) == 3
    for f in flows:
        assert f.verdict != fpb.VERDICT_UNKNOWN
        assert not f.HasField("IP") and not f.HasField("l4") and not f.source.labels
    with pytest.raises(grpc.RpcError) as e:
        list(agent.observer.GetFlows(opb.GetFlowsRequest(
            field_mask=FieldMask(paths=["no_such_field"])), timeout=5))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_batched_stream_gives_the_get_flows_entries(agent, traffic):
    """webb.stream.FlowStream/GetFlowBatches: GetFlows' entries, byte for byte, in
    GetFlows' order, many to a message."""
    from google.protobuf.field_mask_pb2 import FieldMask
    until = Timestamp()
    # A fixed window both calls see whole: the agent drains perf buffers every 10 ms,
    # so every flow older than a second is in the ring already.
    until.FromNanoseconds(time.time_ns() - 1_000_000_000)
    raw = agent.channel.unary_stream("/observer.Observer/GetFlows",
                                     request_serializer=opb.GetFlowsRequest.SerializeToString,
                                     response_deserializer=lambda b: b)
    batched = stream_pb2_grpc.FlowStreamStub(agent.channel)
    # Filters on what the ring holds: earlier tests may have overwritten the traffic
    # fixture's flows.
    held = [opb.GetFlowsResponse.FromString(b) for b in raw(opb.GetFlowsRequest(until=until))]
    verdict = fpb.FlowFilter(verdict=[next(r.flow.verdict for r in held if r.HasField("flow"))])
    for req in (opb.GetFlowsRequest(until=until),
                opb.GetFlowsRequest(until=until, number=7),
                opb.GetFlowsRequest(until=until, first=True, number=5, whitelist=[verdict]),
                opb.GetFlowsRequest(until=until, number=50, blacklist=[verdict],
                                    field_mask=FieldMask(paths=["source.pod_name", "l4"]))):
        plain = list(raw(req, timeout=10))
        batches = list(batched.GetFlowBatches(req, timeout=10))
        assert (plain or req.blacklist) and [e for b in batches for e in b.responses] == plain, req
        assert len(batches) < len(plain) or len(plain) <= 1
        for b in batches:
            assert list(b.nodes) == ["n1"] and list(b.node_index) == [0] * len(b.responses)
            assert list(b.time_ns) == [opb.GetFlowsResponse.FromString(e).time.ToNanoseconds()
                                       for e in b.responses]

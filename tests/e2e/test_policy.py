"""Network policy end to end: real eBPF on veths between network namespaces, policies
applied through the admin API, traffic checked from the sender (connect or time out),
and the DROPPED / PolicyVerdict flows read back over gRPC."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp

from support import lab_prefix, BIN, AgentProc, pod_endpoint, wait_for
from webb.api.admin import admin_pb2 as apb
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.netlab import NetLab

pytestmark = pytest.mark.root

PREFIX = lab_prefix("wtq")
# Extra addresses of the "world" namespace: a CIDR except, a CIDR member, a remote node.
EXCEPT_IP, MEMBER_IP, REMOTE_NODE_IP = "10.99.0.200", "10.99.0.201", "10.99.0.202"
POLICY_DENIED = 133
L3_ONLY, L3_L4, L4_ONLY, MATCH_ALL = 1, 2, 3, 4
DENIED = {"verdict": [fpb.DROPPED], "drop_reason_desc": [fpb.POLICY_DENIED]}
# How long a TCP attempt of SYNs only stays one attempt in this module's agent
# (--bpf-ct-timeout-regular-tcp-syn, 1 min by default): short, to see one expire; between
# the SYN retransmissions of the probes' 1 s connects (one, after 1 s) and the next (+2 s).
CT_TIMEOUT_SYN = 2.5

# A server for every listed TCP/UDP port, dual-stack, answering "ok"; it lives `life` s.
SERVE = r'''
import socket, sys, threading, time
tcp = [int(p) for p in sys.argv[1].split(",") if p]
udp = [int(p) for p in sys.argv[2].split(",") if p]
life = float(sys.argv[3])
def handle(c):
    try:
        c.settimeout(5)
        while c.recv(65536):
            pass
        c.sendall(b"ok")
    except OSError:
        pass
    c.close()
def accept(s):
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()
def echo(s):
    while True:
        data, peer = s.recvfrom(65536)
        s.sendto(b"ok", peer)
for port in tcp:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port)); s.listen(128)
    threading.Thread(target=accept, args=(s,), daemon=True).start()
for port in udp:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    threading.Thread(target=echo, args=(s,), daemon=True).start()
print("ready", flush=True)
time.sleep(life)
'''

# Tries every target at once; prints one result per target: ok, timeout, refused, ...
PROBE = r'''
import json, socket, sys, threading, time
targets = json.loads(sys.argv[1]); timeout = float(sys.argv[2])
results = [None] * len(targets)
def run(i, t):
    kind, host, port, src = t
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if kind in ("tcp", "tcpslow"):
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(timeout)
            if src:
                s.bind((src, 0))
            s.connect((host, port))
            for _ in range(40 if kind == "tcpslow" else 1):  # slow: 4 s of writes
                s.sendall(b"hello")
                if kind == "tcpslow":
                    time.sleep(0.1)
            s.shutdown(socket.SHUT_WR)
            data = s.recv(16)
        elif kind == "udpc":  # connected: ICMP errors come back as exceptions
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.settimeout(timeout)
            s.connect((host, port))
            s.send(b"hello")
            data = s.recv(64)
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.settimeout(timeout)
            if src:
                s.bind((src, 0))
            s.sendto(b"hello", (host, port))
            data, _ = s.recvfrom(64)
        s.close()
        results[i] = "ok" if data == b"ok" else "bad reply %r" % data
    except socket.timeout:
        results[i] = "timeout"
    except ConnectionRefusedError:
        results[i] = "refused"
    except OSError as e:
        results[i] = "%s: %s" % (type(e).__name__, e)
ts = [threading.Thread(target=run, args=(i, t)) for i, t in enumerate(targets)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("policy")
    (d / "serve.py").write_text(SERVE)
    (d / "probe.py").write_text(PROBE)
    (d / "policies").mkdir()
    return d


@pytest.fixture(scope="module")
def lab(workdir):
    lab = NetLab(PREFIX)
    lab.cleanup()
    procs: list[subprocess.Popen] = []
    try:
        n1 = lab.add_node("n1", 1)
        for i, name in enumerate(("client", "server", "other"), start=10):
            lab.add_pod(n1, name, i)
        world_ns, _ = lab.add_world()
        for ip in (EXCEPT_IP, MEMBER_IP, REMOTE_NODE_IP):
            lab.exec(world_ns, "ip", "addr", "add", f"{ip}/32", "dev", "eth0")
        p = lab.pods

        def serve(netns: str, tcp: str, udp: str = "") -> None:
            proc = lab.popen(netns, sys.executable, str(workdir / "serve.py"), tcp, udp, "600",
                             stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        serve(p["server"].netns, "8079,8080,8081,8082,8083", "5353")
        serve(p["client"].netns, "9000")
        serve(p["other"].netns, "8080")
        serve(world_ns, "80")
        serve(n1.netns, "7070")
        yield lab
    finally:
        for proc in procs:
            proc.kill()
        lab.cleanup()


def endpoints_of(lab: NetLab) -> list[dict]:
    p = lab.pods
    return [pod_endpoint(p["client"], "client"), pod_endpoint(p["server"], "server"),
            pod_endpoint(p["other"], "other", namespace="extra")]


@pytest.fixture(scope="module")
def agent(lab, workdir):
    eps = workdir / "endpoints.yaml"
    nodes = [{"name": "n1", "ips": [lab.nodes["n1"].ip]}, {"name": "n2", "ips": [REMOTE_NODE_IP]}]
    # Namespace labels for namespaceSelectors come with the endpoints.
    eps.write_text(yaml.safe_dump({
        "endpoints": endpoints_of(lab), "nodes": nodes,
        "namespaces": [{"name": "demo", "labels": {"team": "red"}},
                       {"name": "extra", "labels": {"team": "blue"}}]}))
    a = AgentProc(workdir, "n1", lab.nodes["n1"].netns, eps,
                  extra=["--policy-dir", str(workdir / "policies"),
                         "--bpf-ct-timeout-regular-tcp-syn", f"{CT_TIMEOUT_SYN}s"])
    try:
        a.start()
        a.wait_attached(["client", "server", "other"])
        yield a
    finally:
        a.stop()


@pytest.fixture(autouse=True)
def no_policies_after(agent, workdir):
    """Every test starts and ends without policies."""
    yield
    for f in (workdir / "policies").iterdir():
        f.unlink()
    wait_for(lambda: not [p for p in _list(agent) if p.source != "api"], 10, 0.2,
             "file policies to go")
    for p in _list(agent):
        agent.admin.DeletePolicy(apb.DeletePolicyRequest(name=p.name, namespace=p.namespace,
                                                         kind=p.kind), timeout=5)


def _list(agent) -> list[apb.Policy]:
    return list(agent.admin.ListPolicies(apb.ListPoliciesRequest(), timeout=5).policies)


def apply(agent, text: str) -> apb.ApplyPoliciesResponse:
    return agent.admin.ApplyPolicies(apb.ApplyPoliciesRequest(documents=text), timeout=10)


def reach(lab, workdir, netns: str, *targets: tuple, timeout: float = 1.0) -> list[str]:
    """Results of connecting from netns: targets are (proto, host, port[, source address])."""
    full = [list(t) + [""] * (4 - len(t)) for t in targets]
    out = lab.exec(netns, sys.executable, str(workdir / "probe.py"), json.dumps(full),
                   str(timeout), timeout=30)
    return json.loads(out.stdout)


def now_ts() -> Timestamp:
    t = Timestamp()
    t.GetCurrentTime()
    return t


def flows(agent, since: Timestamp, **filt) -> list[fpb.Flow]:
    req = opb.GetFlowsRequest(since=since, whitelist=[fpb.FlowFilter(**filt)] if filt else [])
    return [r.flow for r in agent.observer.GetFlows(req, timeout=10) if r.HasField("flow")]


def wait_flows(agent, since: Timestamp, what: str, pred=None, **filt) -> list[fpb.Flow]:
    def got():
        fs = [f for f in flows(agent, since, **filt) if pred is None or pred(f)]
        return fs or None
    return wait_for(got, 10, 0.2, what)


def endpoint(agent, name: str) -> apb.Endpoint:
    eps = agent.admin.ListEndpoints(apb.ListEndpointsRequest(), timeout=5).endpoints
    return next(e for e in eps if e.name == name)


def cnp(name: str, spec: str, namespace: str = "demo") -> str:
    return (f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\n"
            f"  namespace: {namespace}\nspec:\n" + "\n".join("  " + line for line in
                                                         spec.strip("\n").splitlines()) + "\n")


# -- tests -----------------------------------------------------------------------------------

def test_without_policy_everything_passes_and_nothing_is_enforced(lab, workdir, agent):
    p = lab.pods
    assert reach(lab, workdir, p["client"].netns, ("tcp", p["server"].ip4, 8080),
                 ("tcp", p["other"].ip4, 8080), ("tcp", lab.world_ip, 80),
                 ("udp", p["server"].ip4, 5353)) == ["ok"] * 4
    for name in ("client", "server", "other"):
        ep = endpoint(agent, name)
        assert not ep.policy_enforcement_ingress and not ep.policy_enforcement_egress


def test_from_endpoints_allows_the_selected_and_drops_the_rest(lab, workdir, agent):
    p = lab.pods
    apply(agent, cnp("server-from-client", """
endpointSelector: {matchLabels: {app: server}}
ingress:
- fromEndpoints: [{matchLabels: {app: client}}]
"""))
    srv = endpoint(agent, "server")
    assert srv.policy_enforcement_ingress and not srv.policy_enforcement_egress
    assert list(srv.ingress_policies) == ["demo/server-from-client"]
    t0 = now_ts()
    # client is allowed on any port (L3 rule); "other" lives in another namespace: the
    # selector only sees the policy's namespace, so it is denied.
    assert reach(lab, workdir, p["client"].netns, ("tcp", p["server"].ip4, 8080),
                 ("udp", p["server"].ip4, 5353)) == ["ok", "ok"]
    assert reach(lab, workdir, p["other"].netns, ("tcp", p["server"].ip4, 8080)) == ["timeout"]
    # The server's own connections out are not restricted (no egress policy).
    assert reach(lab, workdir, p["server"].netns, ("tcp", p["other"].ip4, 8080)) == ["ok"]

    drops = wait_flows(agent, t0, "policy drop", **DENIED)
    d = drops[0]
    assert d.drop_reason_desc == fpb.POLICY_DENIED and d.drop_reason == POLICY_DENIED
    assert d.event_type.type == 1 and d.event_type.sub_type == POLICY_DENIED
    assert d.traffic_direction == fpb.INGRESS
    assert d.source.pod_name == "other" and d.destination.pod_name == "server"
    assert d.source.identity == endpoint(agent, "other").identity
    assert d.destination.identity == srv.identity
    assert d.l4.TCP.destination_port == 8080 and d.l4.TCP.flags.SYN
    assert [(x.name, x.namespace, x.kind) for x in d.ingress_denied_by] == \
        [("server-from-client", "demo", "CiliumNetworkPolicy")]
    assert "k8s:io.cilium.k8s.policy.name=server-from-client" in d.ingress_denied_by[0].labels
    assert d.ingress_denied_by[0].revision > 0
    assert d.interface.name == p["server"].host_if
    pvs = wait_flows(agent, t0, "policy verdicts",
                     event_type=[fpb.EventTypeFilter(type=5)], destination_pod=["demo/server"])
    pv = next(f for f in pvs if f.l4.HasField("TCP"))
    assert pv.verdict == fpb.FORWARDED and pv.traffic_direction == fpb.INGRESS
    assert pv.source.pod_name == "client" and pv.policy_match_type == L3_ONLY
    assert [x.name for x in pv.ingress_allowed_by] == ["server-from-client"]
    # One policy verdict per connection: the first packet, not the replies.
    assert len([f for f in pvs if f.l4.TCP.destination_port == 8080]) == 1


def test_to_ports_allow_one_port_and_protocol(lab, workdir, agent):
    p = lab.pods
    apply(agent, cnp("server-l4", """
endpointSelector: {matchLabels: {app: server}}
ingress:
- fromEndpoints: [{matchLabels: {app: client}}]
  toPorts:
  - ports: [{port: "8080", protocol: TCP}]
"""))
    t0 = now_ts()
    assert reach(lab, workdir, p["client"].netns, ("tcp", p["server"].ip4, 8080),
                 ("tcp", p["server"].ip4, 8081), ("udp", p["server"].ip4, 5353)) == \
        ["ok", "timeout", "timeout"]
    pv = wait_flows(agent, t0, "policy verdict", event_type=[fpb.EventTypeFilter(type=5)])[0]
    assert pv.policy_match_type == L3_L4
    drops = wait_flows(agent, t0, "two drops", lambda f: True, **DENIED)
    wait_for(lambda: len({(f.l4.TCP.destination_port, f.l4.UDP.destination_port)
                          for f in flows(agent, t0, **DENIED)}) == 2, 10, 0.2,
             "drops of 8081/TCP and 5353/UDP")
    assert all(f.drop_reason_desc == fpb.POLICY_DENIED for f in drops)


def test_port_range_with_end_port(lab, workdir, agent):
    p = lab.pods
    apply(agent, cnp("server-range", """
endpointSelector: {matchLabels: {app: server}}
ingress:
- toPorts:
  - ports: [{port: "8080", endPort: 8082, protocol: TCP}]
"""))
    t0 = now_ts()
    res = reach(lab, workdir, p["client"].netns, *[("tcp", p["server"].ip4, port)
                                                  for port in (8079, 8080, 8081, 8082, 8083)])
    assert res == ["timeout", "ok", "ok", "ok", "timeout"]
    # A rule without peers allows everyone on those ports: L4-only, also from "other".
    assert reach(lab, workdir, p["other"].netns, ("tcp", p["server"].ip4, 8081)) == ["ok"]
    pv = wait_flows(agent, t0, "policy verdict", event_type=[fpb.EventTypeFilter(type=5)])[0]
    assert pv.policy_match_type == L4_ONLY


def test_egress_default_deny_keeps_ipv6_neighbour_discovery(lab, workdir, agent):
    p = lab.pods
    apply(agent, cnp("client-egress", """
endpointSelector: {matchLabels: {app: client}}
egress:
- toEndpoints: [{matchLabels: {app: server}}]
  toPorts:
  - ports: [{port: "8080", protocol: TCP}]
"""))
    cl = endpoint(agent, "client")
    assert cl.policy_enforcement_egress and not cl.policy_enforcement_ingress
    t0 = now_ts()
    res = reach(lab, workdir, p["client"].netns, ("tcp", p["server"].ip4, 8080),
                ("tcp", p["server"].ip6, 8080), ("tcp", p["server"].ip4, 8081),
                ("tcp", p["other"].ip4, 8080), ("tcp", lab.world_ip, 80))
    assert res == ["ok", "ok", "timeout", "timeout", "timeout"]
    drops = wait_flows(agent, t0, "egress drop", lambda f: f.destination.pod_name == "other",
                       **DENIED)
    d = drops[0]
    assert d.traffic_direction == fpb.EGRESS and d.source.pod_name == "client"
    assert [x.name for x in d.egress_denied_by] == ["client-egress"] and not d.ingress_denied_by
    assert d.aggregate.egress_flow_count >= 1
    world = wait_flows(agent, t0, "drop to world", lambda f: f.IP.destination == lab.world_ip,
                       **DENIED)
    assert world[0].destination.identity == 2 and list(world[0].destination.labels) == ["reserved:world"]


def test_replies_pass_even_where_the_other_direction_is_denied(lab, workdir, agent):
    """client: default deny at ingress (`ingress: [{}]`). Its own connections still get
    their answers at both interfaces; connections to it are dropped."""
    p = lab.pods
    apply(agent, cnp("client-no-ingress", """
endpointSelector: {matchLabels: {app: client}}
ingress:
- {}
"""))
    assert endpoint(agent, "client").policy_enforcement_ingress
    assert reach(lab, workdir, p["client"].netns, ("tcp", p["server"].ip4, 8080),
                 ("udp", p["server"].ip4, 5353), ("tcp", lab.world_ip, 80)) == ["ok"] * 3
    assert reach(lab, workdir, p["server"].netns, ("tcp", p["client"].ip4, 9000)) == ["timeout"]
    lab.exec(p["client"].netns, "ping", "-c", "1", "-W", "1", p["server"].ip4)  # echo replies pass
    # ICMP errors about the client's own packets are related to them and pass too.
    assert reach(lab, workdir, p["client"].netns, ("udpc", p["server"].ip4, 9998),
                 ("udpc", p["server"].ip6, 9998)) == ["refused", "refused"]
    # The node itself may always reach its endpoints (allow-localhost, as in Cilium).
    assert reach(lab, workdir, lab.nodes["n1"].netns, ("tcp", p["client"].ip4, 9000)) == ["ok"]


def test_an_echo_request_is_no_reply_to_the_peers_echo_request(lab, workdir, agent):
    """client: egress only to server:8080/TCP. Once "other" pinged the client (its
    requests in, the client's replies out: allowed), the client's own echo request to
    "other" is still checked and dropped, not taken for an answer to other's."""
    p = lab.pods
    apply(agent, cnp("client-egress-tcp", """
endpointSelector: {matchLabels: {app: client}}
egress:
- toEndpoints: [{matchLabels: {app: server}}]
  toPorts:
  - ports: [{port: "8080", protocol: TCP}]
"""))
    assert endpoint(agent, "client").policy_enforcement_egress
    lab.exec(p["other"].netns, "ping", "-c", "1", "-W", "2", p["client"].ip4)  # replies pass
    t0 = now_ts()
    res = lab.exec(p["client"].netns, "ping", "-c", "1", "-W", "1", p["other"].ip4, check=False)
    assert res.returncode != 0, res.stdout
    d = wait_flows(agent, t0, "the echo request's drop",
                   lambda f: f.destination.pod_name == "other" and f.l4.HasField("ICMPv4"),
                   **DENIED)[0]
    assert d.traffic_direction == fpb.EGRESS and d.l4.ICMPv4.type == 8


# Connects from a fixed source port; prints "refused", "ok" or the error.
CONNECT_FROM = r'''
import socket, sys
src, sport, host, port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.settimeout(2)
s.bind((src, sport))
try:
    s.connect((host, port))
    print("ok")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    print(type(e).__name__)
'''


def test_a_refused_attempts_tuple_later_is_a_new_attempt_with_its_verdict(lab, workdir, agent):
    """As Cilium's CT entry of a connection that never got past its SYN expires
    (--bpf-ct-timeout-regular-tcp-syn): a SYN from the tuple of a refused attempt made
    longer ago than that is a new connection, policy-checked with its own verdict, not a
    retransmission of the old SYN (which the datapath would pass on the old check)."""
    p = lab.pods
    apply(agent, cnp("client-egress-server", """
endpointSelector: {matchLabels: {app: client}}
egress:
- toEndpoints: [{matchLabels: {app: server}}]
"""))
    assert endpoint(agent, "client").policy_enforcement_egress
    sport, closed = 61090, 8099  # above the pods' ephemeral ports; nothing listens on 8099
    t0 = now_ts()

    def attempt() -> str:
        return lab.exec(p["client"].netns, sys.executable, "-c", CONNECT_FROM, p["client"].ip4,
                        str(sport), p["server"].ip4, str(closed), timeout=30).stdout.strip()
    assert attempt() == "refused"
    time.sleep(CT_TIMEOUT_SYN + 0.5)  # the attempt's age is what is tested, not a readiness wait
    assert attempt() == "refused"
    got: list = []

    def verdicts():
        got[:] = [f for f in flows(agent, t0, event_type=[fpb.EventTypeFilter(type=5)],
                                   source_port=[str(sport)])]
        return got if len(got) >= 2 else None
    try:
        wait_for(verdicts, 10, 0.2, "a policy verdict for each of the 2 attempts")
    except AssertionError as e:
        raise AssertionError(f"{e}; verdicts seen {got}") from None
    assert [(f.destination.pod_name, f.l4.TCP.destination_port, f.verdict, f.traffic_direction)
            for f in got] == [("server", closed, fpb.FORWARDED, fpb.EGRESS)] * 2, got


def test_deny_wins_over_allow(lab, workdir, agent):
    p = lab.pods
    apply(agent, cnp("server-allow-all", """
endpointSelector: {matchLabels: {app: server}}
ingress:
- fromEntities: [all]
""") + "---\n" + cnp("server-deny-client-8081", """
endpointSelector: {matchLabels: {app: server}}
ingressDeny:
- fromEndpoints: [{matchLabels: {app: client}}]
  toPorts:
  - ports: [{port: "8081", protocol: TCP}]
"""))
    t0 = now_ts()
    assert reach(lab, workdir, p["client"].netns, ("tcp", p["server"].ip4, 8080),
                 ("tcp", p["server"].ip4, 8081)) == ["ok", "timeout"]
    assert reach(lab, workdir, p["other"].netns, ("tcp", p["server"].ip4, 8081)) == ["ok"]
    d = wait_flows(agent, t0, "deny drop", **DENIED)[0]
    assert d.source.pod_name == "client" and d.l4.TCP.destination_port == 8081
    assert [x.name for x in d.ingress_denied_by] == ["server-deny-client-8081"]
    pv = wait_flows(agent, t0, "policy verdict", lambda f: f.source.pod_name == "client",
                    event_type=[fpb.EventTypeFilter(type=5)])[0]
    assert pv.policy_match_type == MATCH_ALL
    assert [x.name for x in pv.ingress_allowed_by] == ["server-allow-all"]


def test_cidr_with_except(lab, workdir, agent):
    p = lab.pods
    apply(agent, cnp("client-to-underlay", """
endpointSelector: {matchLabels: {app: client}}
egress:
- toCIDRSet:
  - cidr: 10.99.0.0/24
    except: [10.99.0.200/32]
""") + "---\n" + cnp("server-from-member", """
endpointSelector: {matchLabels: {app: server}}
ingress:
- fromCIDR: [10.99.0.201/32]
"""))
    t0 = now_ts()
    res = reach(lab, workdir, p["client"].netns, ("tcp", lab.world_ip, 80),
                ("tcp", MEMBER_IP, 80), ("tcp", EXCEPT_IP, 80), ("tcp", p["server"].ip4, 8080))
    # Endpoints inside the CIDR keep their own identity: a CIDR rule does not select them.
    assert res == ["ok", "ok", "timeout", "timeout"]
    w = lab.world_ns
    assert reach(lab, workdir, w, ("tcp", p["server"].ip4, 8080, MEMBER_IP),
                 ("tcp", p["server"].ip4, 8080, lab.world_ip)) == ["ok", "timeout"]
    d = wait_flows(agent, t0, "drop to the except", lambda f: f.IP.destination == EXCEPT_IP,
                   **DENIED)[0]
    assert d.destination.identity >= 16777217
    assert list(d.destination.labels) == ["cidr:10.99.0.200/32", "reserved:world"]
    ident = agent.admin.GetIdentity(apb.GetIdentityRequest(id=d.destination.identity), timeout=5)
    assert "cidr:10.99.0.200/32" in ident.labels
    d2 = wait_flows(agent, t0, "drop from world", lambda f: f.IP.source == lab.world_ip,
                    **DENIED)[0]
    assert d2.destination.pod_name == "server" and d2.traffic_direction == fpb.INGRESS


def test_entities(lab, workdir, agent):
    p = lab.pods
    node = lab.nodes["n1"]
    apply(agent, cnp("client-to-host-and-world", """
endpointSelector: {matchLabels: {app: client}}
egress:
- toEntities: [host, world]
""") + "---\n" + cnp("server-from-cluster", """
endpointSelector: {matchLabels: {app: server}}
ingress:
- fromEntities: [cluster]
""") + "---\n" + cnp("other-from-remote-node", """
endpointSelector: {matchLabels: {app: other}}
ingress:
- fromEntities: [remote-node]
""", namespace="extra"))
    assert reach(lab, workdir, p["client"].netns, ("tcp", node.ip, 7070),
                 ("tcp", lab.world_ip, 80), ("tcp", p["server"].ip4, 8080)) == \
        ["ok", "ok", "timeout"]
    assert reach(lab, workdir, p["other"].netns, ("tcp", p["server"].ip4, 8080)) == ["ok"]
    w = lab.world_ns
    assert reach(lab, workdir, w, ("tcp", p["server"].ip4, 8080),
                 ("tcp", p["other"].ip4, 8080, REMOTE_NODE_IP),
                 ("tcp", p["other"].ip4, 8080, MEMBER_IP)) == ["timeout", "ok", "timeout"]


def test_kubernetes_network_policy(lab, workdir, agent):
    p = lab.pods
    apply(agent, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-np, namespace: demo}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: blue}}
    ports:
    - {protocol: TCP, port: 8080, endPort: 8081}
  - from:
    - ipBlock: {cidr: 10.99.0.0/24, except: [10.99.0.200/32]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress-np, namespace: demo}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {app: server}}
""")
    assert endpoint(agent, "server").policy_enforcement_ingress
    assert endpoint(agent, "client").policy_enforcement_egress
    assert not endpoint(agent, "client").policy_enforcement_ingress
    t0 = now_ts()
    # "other" is in namespace extra (team=blue); client is in demo (team=red).
    assert reach(lab, workdir, p["other"].netns, ("tcp", p["server"].ip4, 8080),
                 ("tcp", p["server"].ip4, 8081), ("tcp", p["server"].ip4, 8082)) == \
        ["ok", "ok", "timeout"]
    assert reach(lab, workdir, p["client"].netns, ("tcp", p["server"].ip4, 8080),
                 ("tcp", p["other"].ip4, 8080)) == ["timeout", "timeout"]
    w = lab.world_ns
    assert reach(lab, workdir, w, ("tcp", p["server"].ip4, 8083, MEMBER_IP),
                 ("tcp", p["server"].ip4, 8083, EXCEPT_IP)) == ["ok", "timeout"]
    d = wait_flows(agent, t0, "drop", **DENIED,
                   source_pod=["extra/other"])[0]
    assert d.ingress_denied_by[0].kind == "NetworkPolicy"


def test_update_and_delete_apply_to_running_connections(lab, workdir, agent):
    p = lab.pods
    allow = cnp("server-ingress", """
endpointSelector: {matchLabels: {app: server}}
ingress:
- fromEndpoints: [{matchLabels: {app: client}}]
""")
    r1 = apply(agent, allow)
    rev1 = r1.policies[0].revision
    t_start = now_ts()
    # A slow connection is running when the policy changes under it.
    slow = lab.popen(p["client"].netns, sys.executable, str(workdir / "probe.py"),
                     json.dumps([["tcpslow", p["server"].ip4, 8080, ""]]), "3",
                     stdout=subprocess.PIPE, text=True)
    try:
        # The connection is up (its SYN-ACK seen) before the policy changes: no sleep.
        wait_flows(agent, t_start, "the slow connection's handshake",
                   pred=lambda f: f.l4.TCP.flags.SYN and f.l4.TCP.flags.ACK, source_port=["8080"])
        r2 = apply(agent, allow.replace("app: client", "app: nobody"))
        assert r2.policies[0].revision > rev1
        out, _ = slow.communicate(timeout=20)
        assert json.loads(out) != ["ok"], "the connection survived a policy that denies it"
    finally:
        if slow.poll() is None:
            slow.kill()
    assert reach(lab, workdir, p["client"].netns, ("tcp", p["server"].ip4, 8080)) == ["timeout"]
    # Applying the same document again changes nothing (same revision).
    assert apply(agent, allow.replace("app: client", "app: nobody")).policies[0].revision == \
        r2.policies[0].revision
    gone = agent.admin.DeletePolicy(apb.DeletePolicyRequest(name="server-ingress",
                                                            namespace="demo"), timeout=5)
    assert [x.name for x in gone.deleted] == ["server-ingress"]
    assert not endpoint(agent, "server").policy_enforcement_ingress
    assert reach(lab, workdir, p["client"].netns, ("tcp", p["server"].ip4, 8080)) == ["ok"]
    kinds = [r.agent_event.type for r in agent.observer.GetAgentEvents(
        opb.GetAgentEventsRequest(number=20), timeout=5)]
    assert fpb.POLICY_UPDATED in kinds and fpb.POLICY_DELETED in kinds
    with pytest.raises(grpc.RpcError) as e:
        agent.admin.DeletePolicy(apb.DeletePolicyRequest(name="server-ingress", namespace="demo"),
                                 timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_malformed_policy_is_rejected_and_nothing_changes(lab, workdir, agent):
    p = lab.pods
    good = cnp("server-ingress", """
endpointSelector: {matchLabels: {app: server}}
ingress:
- fromEndpoints: [{matchLabels: {app: client}}]
  toPorts:
  - ports: [{port: "8080", protocol: TCP}]
""")
    apply(agent, good)
    before = [(x.name, x.revision) for x in _list(agent)]
    bad = good.replace('"8080"', '"http-alt"').replace("server-ingress", "other-name")
    with pytest.raises(grpc.RpcError) as e:
        apply(agent, good.replace("8080", "8081") + "---\n" + bad)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.ingress[0].toPorts[0].ports[0].port" in e.value.details()
    assert "document 2" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        apply(agent, good.replace("ingress:", "ingres:"))
    assert "spec.ingres: unknown field" in e.value.details()
    assert [(x.name, x.revision) for x in _list(agent)] == before
    assert reach(lab, workdir, p["client"].netns, ("tcp", p["server"].ip4, 8080),
                 ("tcp", p["server"].ip4, 8081)) == ["ok", "timeout"]


def test_a_flood_of_denied_packets_is_a_handful_of_flows(lab, workdir, agent):
    p = lab.pods
    apply(agent, cnp("server-deny-udp", """
endpointSelector: {matchLabels: {app: server}}
enableDefaultDeny: {ingress: false}
ingressDeny:
- toPorts:
  - ports: [{port: "5353", protocol: UDP}]
"""))
    t0 = now_ts()
    traffic = str(Path(__file__).parents[1] / "helpers" / "traffic.py")
    lab.exec(p["client"].netns, sys.executable, traffic, "udp-send", p["server"].ip4, "5353",
             "--count", "3000")
    time.sleep(1.2)  # past the drop report interval: the next drop reports the count
    lab.exec(p["client"].netns, sys.executable, traffic, "udp-send", p["server"].ip4, "5353",
             "--count", "1")

    def counted():
        fs = flows(agent, t0, **DENIED)
        return sum(f.aggregate.ingress_flow_count for f in fs) >= 3001 and fs
    fs = wait_for(counted, 10, 0.2, "drop counts adding up")
    assert len(fs) <= 4, [f.aggregate for f in fs]
    # Deny rules without default deny (enableDefaultDeny.ingress false): the rest passes.
    assert not endpoint(agent, "server").policy_enforcement_ingress
    assert reach(lab, workdir, p["client"].netns, ("tcp", p["server"].ip4, 8080)) == ["ok"]


def test_kernel_drop_of_a_closed_port(lab, workdir, agent):
    p = lab.pods
    t0 = now_ts()
    assert reach(lab, workdir, p["client"].netns, ("tcp", p["server"].ip4, 9999)) == ["refused"]
    reach(lab, workdir, p["client"].netns, ("udp", p["server"].ip4, 9998), timeout=0.3)
    fs = wait_flows(agent, t0, "kernel drops", lambda f: f.ext_drop_reason_desc == "NO_SOCKET",
                    verdict=[fpb.DROPPED])
    wait_for(lambda: {f.l4.WhichOneof("protocol") for f in flows(agent, t0, verdict=[fpb.DROPPED])
                      if f.ext_drop_reason_desc == "NO_SOCKET"} == {"TCP", "UDP"}, 10, 0.2,
             "TCP and UDP kernel drops")
    tcp = next(f for f in fs if f.l4.HasField("TCP"))
    assert tcp.drop_reason_desc == fpb.SOCKET_LOOKUP_FAILED
    assert tcp.event_type.type == 1 and tcp.event_type.sub_type == fpb.SOCKET_LOOKUP_FAILED
    assert "NO_SOCKET" in tcp.Summary and tcp.l4.TCP.destination_port == 9999
    assert tcp.source.pod_name == "client" and tcp.destination.pod_name == "server"
    assert tcp.traffic_direction == fpb.INGRESS and tcp.interface.name == p["server"].host_if
    # Packets that arrived (consumed) are never reported as drops.
    assert not [f for f in flows(agent, t0, verdict=[fpb.DROPPED]) if f.l4.TCP.destination_port == 8080]


def test_ipv6_endpoints_policy(lab, workdir, agent):
    p = lab.pods
    apply(agent, cnp("server-v6", """
endpointSelector: {matchLabels: {app: server}}
ingress:
- fromEndpoints: [{matchLabels: {app: client}}]
  toPorts:
  - ports: [{port: "8080"}]
"""))
    assert reach(lab, workdir, p["client"].netns, ("tcp", p["server"].ip6, 8080),
                 ("udp", p["server"].ip6, 5353)) == ["ok", "timeout"]
    assert reach(lab, workdir, p["other"].netns, ("tcp", p["server"].ip6, 8080)) == ["timeout"]


def test_policy_files_in_the_watched_directory(lab, workdir, agent):
    p = lab.pods
    f = workdir / "policies" / "server.yaml"
    f.write_text(cnp("from-file", """
endpointSelector: {matchLabels: {app: server}}
ingress:
- fromEndpoints: [{matchLabels: {app: other}}]
"""))
    wait_for(lambda: [x for x in _list(agent) if x.name == "from-file"], 10, 0.2, "file policy")
    assert [x.source for x in _list(agent)] == [str(f)]
    assert reach(lab, workdir, p["client"].netns, ("tcp", p["server"].ip4, 8080)) == ["timeout"]
    rejected = "rejected, keeping its previous policies"
    seen = agent.log.read_text().count(rejected)
    f.write_text("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\n"
                 "spec: {endpointSelector: {matchLabels: {app: server}}, egres: []}\n")
    # The agent has read and rejected it (its log says so): then the old policy stays.
    wait_for(lambda: agent.log.read_text().count(rejected) > seen, 10, 0.1, "the file rejected")
    assert [x.name for x in _list(agent)] == ["from-file"]
    f.unlink()
    wait_for(lambda: not _list(agent), 10, 0.2, "file policy gone")
    assert reach(lab, workdir, p["client"].netns, ("tcp", p["server"].ip4, 8080)) == ["ok"]


def test_cli_apply_get_delete(lab, workdir, agent):
    f = workdir / "cli.yaml"
    f.write_text(cnp("cli-policy", """
endpointSelector: {matchLabels: {app: server}}
ingress:
- fromEndpoints: [{matchLabels: {app: client}}]
"""))
    cli = [str(BIN / "webb"), "policy"]
    srv = ["--server", agent.address]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args, *srv], capture_output=True, text=True, timeout=30)
    out = run("apply", "-f", str(f))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ciliumnetworkpolicy.cilium.io/cli-policy created"
    assert run("apply", "-f", str(f)).stdout.strip() == \
        "ciliumnetworkpolicy.cilium.io/cli-policy unchanged"
    table = run("get", "-A").stdout
    assert "cli-policy" in table and "CiliumNetworkPolicy" in table and "NAMESPACE" in table
    doc = run("get", "cli-policy", "-n", "demo", "-o", "yaml").stdout
    assert "endpointSelector" in doc and "app: server" in doc
    bad = workdir / "bad.yaml"
    bad.write_text(f.read_text().replace("fromEndpoints", "fromEndpoint"))
    out = run("apply", "-f", str(bad))
    assert out.returncode == 1 and "spec.ingress[0].fromEndpoint: unknown field" in out.stderr
    out = run("delete", "demo/cli-policy")
    assert out.stdout.strip() == 'ciliumnetworkpolicy.cilium.io "cli-policy" deleted'
    out = run("delete", "demo/cli-policy")
    assert out.returncode == 1 and "not found" in out.stderr

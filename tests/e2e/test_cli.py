"""The webb command line end to end: two real agents (eBPF on veths between network
namespaces), the real relay in front of them (plaintext and TLS), real traffic, and
the commands a Hubble user types: status, list, observe (filters, formats, follow),
monitor, identity, endpoint."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from support import (lab_prefix, BIN, RelayProc, TRAFFIC, AgentProc, free_port, pod_endpoint, run_in, start_in, wait_for,
                     write_endpoints)
from webb.netlab import NetLab
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb_cli.main import main

pytestmark = pytest.mark.root

PREFIX = lab_prefix("wtc")
WEBB = str(BIN / "webb")
# Every flow of the buffers. (--all asks for 2^64-1 flows; the relay in progress cannot
# take that number yet, so relay tests ask for more flows than both rings hold.)
ALL = ("--last", "100000")


@pytest.fixture(scope="module")
def lab():
    lab = NetLab(PREFIX)
    lab.cleanup()
    try:
        n1 = lab.add_node("n1", 1)
        n2 = lab.add_node("n2", 2)
        lab.add_pod(n1, "client", 10)
        lab.add_pod(n2, "server", 11)
        lab.add_pod(n1, "other", 12)
        lab.add_world()
        yield lab
    finally:
        lab.cleanup()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def agents(lab, workdir):
    p = lab.pods
    eps = workdir / "endpoints.yaml"
    write_endpoints(eps, [pod_endpoint(p["client"], "client", namespace="shop"),
                          pod_endpoint(p["server"], "server", namespace="shop"),
                          pod_endpoint(p["other"], "other", namespace="extra")])
    ids = ["--identity-file", str(workdir / "identities.json")]
    procs = {n: AgentProc(workdir, n, lab.nodes[n].netns, eps, extra=ids) for n in ("n1", "n2")}
    try:
        # Both compile their eBPF programs at the same time.
        threads = [threading.Thread(target=a.start) for a in procs.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        procs["n1"].wait_attached(["client", "other"])
        procs["n2"].wait_attached(["server"])
        yield procs
    finally:
        for a in procs.values():
            a.stop()


@pytest.fixture(scope="module")
def relay(agents, workdir):
    r = RelayProc(workdir, "--peers", ",".join(a.address for a in agents.values()),
                  "--node-name", "relay").start()
    try:
        def two_nodes() -> bool:
            if r.proc.poll() is not None:
                raise AssertionError(f"relay exited: {r.log.read_text()[-2000:]}")
            code, out, _ = run_main("status", "--server", r.address)
            return code == 0 and "Connected Nodes: 2/2" in out
        wait_for(two_nodes, 30, 0.3, "relay connected to both agents")
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def traffic(lab, agents):
    """Known traffic: client (n1) -> server (n2) TCP 8080 and UDP 5353, other -> world ping."""
    p = lab.pods
    srv = start_in(lab, p["server"].netns, "tcp-server", "8080", "--count", "1")
    run_in(lab, p["client"].netns, "tcp-client", p["server"].ip4, "8080", "--writes", "5")
    srv.wait(10)
    udp = start_in(lab, p["server"].netns, "udp-echo", "5353", "--count", "2")
    run_in(lab, p["client"].netns, "udp-send", p["server"].ip4, "5353", "--count", "2")
    udp.wait(10)
    lab.exec(p["other"].netns, "ping", "-c", "1", "-W", "1", lab.world_ip)

    def recorded() -> bool:  # the agents drain their perf buffers on a timer: wait for it
        n1, n2 = agents["n1"].flows(number=200), agents["n2"].flows(number=200)
        return (any(f.IP.destination == lab.world_ip and f.l4.HasField("ICMPv4") for f in n1)
                and any(f.l4.TCP.destination_port == 8080 and f.l4.TCP.flags.FIN for f in n1)
                and any(f.l4.UDP.source_port == 5353 for f in n2))
    wait_for(recorded, 15, 0.1, "the traffic's flows in both agents")
    return p


def run_main(*argv: str) -> tuple[int, str, str]:
    """`webb ARGV` in this process (fast: no interpreter start), output captured."""
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def ok(*argv: str) -> str:
    code, out, err = run_main(*argv)
    assert code == 0, (argv, err)
    return out


def flows_json(relay, *argv: str) -> list[dict]:
    out = ok("observe", "--server", relay.address, "-o", "json", *argv)
    return [json.loads(line)["flow"] for line in out.splitlines() if '"flow"' in line]


# -- status, list ------------------------------------------------------------------------

def test_status_through_relay_and_agent(relay, agents, traffic):
    out = ok("status", "--server", relay.address)
    assert out.startswith(f"Healthcheck (via {relay.address}): Ok\nCurrent/Max Flows: ")
    assert "/8,190 (" in out  # two rings of 4095
    assert re.search(r"^Flows/s: \d+\.\d\d$", out, re.M) and "Connected Nodes: 2/2" in out
    out = ok("status", "--server", f"unix://{agents['n2'].sock}")  # the agent's own socket
    assert "Current/Max Flows: " in out and "/4,095 (" in out
    out = ok("status", "--server", agents["n1"].address, "-o", "dict")
    assert "          MAX FLOWS: 4,095\n" in out and "NUM CONNECTED NODES: 1\n" in out


def test_list_nodes_and_namespaces(relay, traffic):
    out = ok("list", "nodes", "--server", relay.address)
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "AGE", "FLOWS/S", "CURRENT/MAX-FLOWS"]
    assert [ln.split()[:2] for ln in lines[1:]] == [["n1", "Connected"], ["n2", "Connected"]]
    nodes = json.loads(ok("list", "nodes", "--server", relay.address, "-o", "json"))
    assert {n["name"] for n in nodes} == {"n1", "n2"}
    assert all(n["state"] == "NODE_CONNECTED" and int(n["max_flows"]) == 4095 for n in nodes)
    assert ok("list", "namespaces", "--server", relay.address) == "NAMESPACE\nextra\nshop\n"


# -- observe -------------------------------------------------------------------------------

def test_observe_compact_shows_the_connection_from_both_nodes(relay, traffic):
    p = traffic
    out = ok("observe", "--server", relay.address, "--to-port", "8080", *ALL, "--print-node-name")
    lines = out.splitlines()
    syn = [ln for ln in lines if ln.endswith("(TCP Flags: SYN)")]
    assert syn, out
    # The SYN leaves the client on n1 and reaches the server on n2.
    pat = (r"^\w{3} [ \d]\d \d\d:\d\d:\d\d\.\d{3} \[(n1|n2)\]: shop/client:\d+ \(ID:(\d+)\) -> "
           r"shop/server:8080 \(ID:(\d+)\) (from-endpoint|to-endpoint) FORWARDED \(TCP Flags: SYN\)$")
    seen = {(m[1], m[4]) for m in (re.match(pat, ln) for ln in syn) if m}
    assert {("n1", "from-endpoint"), ("n2", "to-endpoint")} <= seen, syn
    assert all(re.match(pat, ln) for ln in syn), syn
    # Replies come from port 8080: --port matches either side; the arrow points back.
    out = ok("observe", "--server", relay.address, "--port", "8080", *ALL)
    assert any(re.search(r": shop/client:\d+ \(ID:\d+\) <- shop/server:8080 \(ID:\d+\) \S+ "
                         r"FORWARDED \(TCP Flags: SYN, ACK\)$", ln) for ln in out.splitlines()), out
    # --numeric: addresses instead of names
    out = ok("observe", "--server", relay.address, "--to-port", "8080", *ALL, "--numeric")
    assert f"{p['client'].ip4}:" in out and f"-> {p['server'].ip4}:8080 (ID:" in out


def test_observe_filters_through_the_relay(relay, traffic):
    p = traffic
    flows = flows_json(relay, "--from-pod", "shop/client", "--to-port", "8080", *ALL)
    assert flows and all(f["source"]["pod_name"] == "client" and
                         f["l4"]["TCP"]["destination_port"] == 8080 for f in flows)
    extra = flows_json(relay, "--namespace", "extra", *ALL)
    assert extra and all("extra" in (f["source"].get("namespace"), f["destination"].get("namespace"))
                         for f in extra)
    rest = flows_json(relay, "--not", "--namespace", "extra", *ALL)
    assert rest and not any("extra" in (f["source"].get("namespace"), f["destination"].get("namespace"))
                            for f in rest)
    to_ep = flows_json(relay, "--type", "trace:to-endpoint", *ALL)
    assert to_ep and all(f["trace_observation_point"] == "TO_ENDPOINT" for f in to_ep)
    world = flows_json(relay, "--identity", "world", "--protocol", "icmp", *ALL)
    assert world and all(2 in (f["source"]["identity"], f["destination"]["identity"]) for f in world)
    udp = flows_json(relay, "--protocol", "udp", "--to-ip", p["server"].ip4, *ALL)
    assert udp and all("UDP" in f["l4"] and f["IP"]["destination"] == p["server"].ip4 for f in udp)
    ident = flows[0]["source"]["identity"]
    mine = flows_json(relay, "--from-identity", str(ident), "--to-label", "app=server", *ALL)
    assert mine and all(f["source"]["identity"] == ident for f in mine)
    n2 = flows_json(relay, "--node-name", "n2", *ALL)
    assert n2 and {f["node_name"] for f in n2} == {"n2"}
    ingress = flows_json(relay, "--traffic-direction", "ingress", "--to-pod", "shop/server", *ALL)
    assert ingress and all(f["traffic_direction"] == "INGRESS" for f in ingress)
    syn = flows_json(relay, "--tcp-flags", "syn", "--not", "--tcp-flags", "ack", *ALL)
    assert syn and all(f["l4"]["TCP"]["flags"] == {"SYN": True} for f in syn)


def test_observe_selectors(relay, agents, traffic):
    allf = flows_json(relay, "--server", agents["n1"].address, "--all")  # an agent takes --all
    assert len(allf) > 5
    last = flows_json(relay, "--server", agents["n1"].address, "--last", "3")
    assert [f["uuid"] for f in last] == [f["uuid"] for f in allf[-3:]]
    first = flows_json(relay, "--server", agents["n1"].address, "--first", "2")
    assert [f["uuid"] for f in first] == [f["uuid"] for f in allf[:2]]
    total = len(flows_json(relay, *ALL))
    assert len(flows_json(relay)) == min(20, total)  # default: the last 20
    mid = allf[len(allf) // 2]["time"]
    since = flows_json(relay, "--server", agents["n1"].address, "--since", mid)
    assert since and all(f["time"] >= mid for f in since)
    until = flows_json(relay, "--server", agents["n1"].address, "--until", mid)
    assert until and all(f["time"] <= mid for f in until)
    assert flows_json(relay, "--since", "1h", "--to-port", "8080")  # relative
    assert flows_json(relay, "--until", "1h") == []  # nothing that old


def test_observe_formats_on_real_flows(relay, traffic):
    out = ok("observe", "--server", relay.address, "--to-port", "8080", "--last", "4", "-o", "table")
    lines = out.splitlines()
    assert lines[0].split() == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    starts = {ln.index("shop/") for ln in lines[1:]}
    assert len(lines) > 1 and len(starts) == 1  # one aligned SOURCE column
    out = ok("observe", "--server", relay.address, "--to-port", "8080", "--last", "2", "-o", "dict",
             "--print-node-name", "--time-format", "RFC3339")
    assert re.search(r"^  TIMESTAMP: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", out, re.M)
    assert "       NODE: n" in out and "------------\n" in out and "DESTINATION: shop/server:8080\n" in out
    raw = ok("observe", "--server", relay.address, "--from-pod", "shop/client", "--print-raw-filters")
    assert yaml.safe_load(raw) == {"allowlist": ['{"source_pod":["shop/client"]}']}


def test_observe_errors_are_one_line(relay):
    code, out, err = run_main("observe", "--server", relay.address, "--from-ip", "10.0.0.0/99")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("Error: rpc error: code = InvalidArgument desc = ") and "10.0.0.0/99" in err
    code, out, err = run_main("observe", "--server", relay.address, "--http-status", "5x")
    assert code == 1 and "5x" in err and err.count("\n") == 1
    code, out, err = run_main("observe", "--server", f"127.0.0.1:{free_port()}")
    assert code == 1 and err.startswith("Error: failed to connect to '127.0.0.1:") and err.count("\n") == 1


class _Lines:
    """A follow command's stdout, read in a thread (readline blocks) into one list."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            with self._cv:
                self.lines.append(line)
                self._cv.notify_all()

    def wait(self, pattern: str, timeout: float) -> str | None:
        """The first line (since the start) matching pattern, waiting up to timeout."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                hit = next((ln for ln in self.lines if re.search(pattern, ln)), None)
                left = deadline - time.monotonic()
                if hit is not None or left <= 0:
                    return hit
                self._cv.wait(left)

    def until_following(self, probe, pattern: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
        """Readiness of a follow stream, instead of a sleep: sends probe traffic until a
        line for it comes out, so the stream is open end to end before the traffic the
        test is about starts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe()
            if self.wait(pattern, 1.0):
                return
        raise AssertionError(f"the follow stream showed no probe ({pattern}) in {timeout} s: "
                             f"{self.lines[-5:]}")


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, proc.stderr.read()  # type: ignore[union-attr]


def test_follow_shows_a_new_connection_and_ctrl_c_exits_quietly(lab, relay, traffic):
    p = traffic
    proc = subprocess.Popen([WEBB, "observe", "--server", relay.address, "-f", "--to-port", "8090",
                             "--to-port", "8091"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = _Lines(proc)
        out.until_following(lambda: run_in(lab, p["client"].netns, "udp-send", p["server"].ip4,
                                           "8091"), r"-> shop/server:8091 ")
        srv = start_in(lab, p["server"].netns, "tcp-server", "8090")
        run_in(lab, p["client"].netns, "tcp-client", p["server"].ip4, "8090")
        srv.wait(10)
        line = out.wait(r"shop/client:\d+ \(ID:\d+\) -> shop/server:8090 .*\(TCP Flags: SYN\)", 20)
        assert line, "the new connection did not show up"
    finally:
        code, err = _stop(proc)
    assert code == 0 and "Traceback" not in err


def test_monitor_prints_cilium_style_lines(lab, relay, agents, traffic):
    p = traffic
    server_ep = json.loads(ok("endpoint", "get", "shop/server", "-o", "json",
                              "--server", agents["n2"].address))
    ep_id, server_ident = server_ep["id"], server_ep["identity"]
    proc = subprocess.Popen([WEBB, "monitor", "--server", relay.address, "--type", "trace",
                             "--related-to", str(ep_id)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = _Lines(proc)
        out.until_following(lambda: run_in(lab, p["client"].netns, "udp-send", p["server"].ip4,
                                           "8085"), rf"-> {re.escape(p['server'].ip4)}:8085 udp")
        srv = start_in(lab, p["server"].netns, "tcp-server", "8082")
        run_in(lab, p["client"].netns, "tcp-client", p["server"].ip4, "8082")
        srv.wait(10)
        pat = (rf"^-> endpoint {ep_id} flow 0x[0-9a-f]+ identity \d+->{server_ident} state new "
               rf"ifindex \S+: {re.escape(p['client'].ip4)}:\d+ -> {re.escape(p['server'].ip4)}:8082 tcp SYN$")
        line = out.wait(pat, 20)
        assert line, out.lines[-5:]
        assert all(f"endpoint {ep_id} " in ln or f"{ep_id}" in ln for ln in out.lines)
    finally:
        code, err = _stop(proc)
    assert code == 0 and err.startswith(f"Listening for events on {relay.address}\n")


# -- identity, endpoint (an agent's admin API) ---------------------------------------------

def test_identity_and_endpoint_commands(agents, traffic):
    a1, a2 = agents["n1"].address, agents["n2"].address
    eps = json.loads(ok("endpoint", "list", "-o", "json", "--server", a1))
    client = next(e for e in eps if e["name"] == "client")
    out = ok("endpoint", "list", "--server", a1)
    row = next(ln for ln in out.splitlines() if "shop/client" in ln).split()
    assert row[:6] == [str(client["id"]), "shop/client", "Disabled", "Disabled",
                       str(client["identity"]), "k8s:app=client"]
    assert row[-1] == "ready" and traffic["client"].ip4 in row
    assert ok("endpoint", "list", "-n", "extra", "--server", a1).count("\n") >= 2
    detail = ok("endpoint", "get", "client", "--server", a1)
    assert f"       ENDPOINT: {client['id']}\n" in detail and "         STATUS: ready\n" in detail
    ident = ok("identity", "get", str(client["identity"]), "--server", a1)
    assert ident.splitlines()[1].split() == [str(client["identity"]), "k8s:app=client"]
    assert "k8s:io.kubernetes.pod.namespace=shop" in ident
    # the same identity on the other node (shared allocation)
    assert ok("identity", "get", str(client["identity"]), "--server", a2) == ident
    listing = ok("identity", "list", "--server", a1)
    assert re.search(r"^2\s+reserved:world$", listing, re.M)
    mine = ok("identity", "list", "--endpoints", "--server", a1)
    assert f"{client['identity']} " in mine and "REFCOUNT" in mine and "reserved:world" not in mine
    code, _, err = run_main("identity", "get", "99999", "--server", a1)
    assert (code, err) == (1, "Error: identity 99999 not found\n")


def test_endpoints_are_each_nodes_own_with_ids_on_flows_and_events(agents, traffic):
    """Cilium's rule: a node lists its own endpoints, each with a non-zero ID unique on
    the node; flows carry it as source/destination ID (0 for another node's pod), and
    agent events name it."""
    listed = {n: json.loads(ok("endpoint", "list", "-o", "json", "--server", a.address))
              for n, a in agents.items()}
    assert sorted(e["name"] for e in listed["n1"]) == ["client", "other"]
    assert [e["name"] for e in listed["n2"]] == ["server"]
    ids = {e["name"]: e["id"] for e in listed["n1"] + listed["n2"]}
    assert all(ids.values()) and ids["client"] != ids["other"]
    table = ok("endpoint", "list", "--server", agents["n1"].address)
    assert re.search(rf"^{ids['client']}\s+shop/client\s", table, re.M)
    assert re.search(rf"^{ids['other']}\s+extra/other\s", table, re.M)
    assert "server" not in table
    tcp = fpb.FlowFilter(destination_port=["8080"], protocol=["tcp"])
    out = agents["n1"].flows(number=50, whitelist=[tcp])
    inn = agents["n2"].flows(number=50, whitelist=[tcp])
    assert out and {(f.source.ID, f.destination.ID) for f in out
                    if f.source.pod_name == "client"} == {(ids["client"], 0)}
    assert inn and {(f.source.ID, f.destination.ID) for f in inn
                    if f.destination.pod_name == "server"} == {(0, ids["server"])}
    for node, names in (("n1", {"client", "other"}), ("n2", {"server"})):
        events = [r.agent_event for r in agents[node].observer.GetAgentEvents(
            opb.GetAgentEventsRequest(), timeout=5)]
        created = {(e.endpoint_update.pod_name, e.endpoint_update.id) for e in events
                   if e.type == fpb.ENDPOINT_CREATED}
        assert created == {(n, ids[n]) for n in names}, node


# -- TLS to the relay ------------------------------------------------------------------------

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_relay(agents, workdir):
    d = workdir / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=webb-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name, cn in (("relay", "relay.webb.test"), ("cli", "webb-cli")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout",
                 f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(f"subjectAltName=DNS:{cn}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    r = RelayProc(workdir, "--peers", ",".join(a.address for a in agents.values()),
                  "--node-name", "relay", "--tls-cert", str(d / "relay.pem"),
                  "--tls-key", str(d / "relay.key"), "--tls-client-ca", str(d / "ca.pem")).spawn()
    try:
        yield r, d
    finally:
        r.stop()


def test_tls_relay(tls_relay, traffic):
    r, d = tls_relay
    client = ["--tls-client-cert-file", str(d / "cli.pem"), "--tls-client-key-file", str(d / "cli.key")]
    verified = ["--tls-ca-cert-files", str(d / "ca.pem"), "--tls-server-name", "relay.webb.test", *client]

    def serving() -> bool:
        code, out, _ = run_main("status", "--server", f"tls://{r.address}", *verified)
        return code == 0 and "Connected Nodes: 2/2" in out
    wait_for(serving, 30, 0.3, "TLS relay serving")
    out = ok("observe", "--server", f"tls://{r.address}", *verified, "--to-port", "8080", "--last", "2")
    assert "-> shop/server:8080" in out
    out = ok("list", "nodes", "--server", r.address, "--tls-allow-insecure", *client)
    assert "n1 " in out and "n2 " in out
    code, out, err = run_main("status", "--server", r.address, "--tls", "--timeout", "2s", *client)
    assert code == 1 and out == "" and err.count("\n") == 1  # the relay's CA is not a public one
    code, out, err = run_main("status", "--server", r.address, "--timeout", "2s")  # plaintext
    assert code == 1 and err.count("\n") == 1


# -- a policy drop, as the tutorial shows it ---------------------------------------------------

POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: server-from-client
  namespace: shop
spec:
  endpointSelector:
    matchLabels:
      app: server
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
"""


@pytest.fixture
def server_policy(agents):
    import grpc

    from webb.api.admin import admin_pb2
    a2 = agents["n2"]
    a2.admin.ApplyPolicies(admin_pb2.ApplyPoliciesRequest(documents=POLICY), timeout=10)
    try:
        yield a2
    finally:
        a2.admin.DeletePolicy(admin_pb2.DeletePolicyRequest(name="server-from-client",
                                                            namespace="shop"), timeout=10)


def test_policy_denied_drop_in_monitor_observe_and_endpoint(lab, relay, agents, traffic, server_policy):
    p = traffic
    a2 = server_policy
    server = json.loads(ok("endpoint", "get", "shop/server", "-o", "json", "--server", a2.address))
    other = json.loads(ok("endpoint", "get", "extra/other", "-o", "json",
                          "--server", agents["n1"].address))
    row = next(ln for ln in ok("endpoint", "list", "--server", a2.address).splitlines()
               if "shop/server" in ln).split()
    assert row[2:4] == ["Enabled", "Disabled"]  # ingress default deny now
    proc = subprocess.Popen([WEBB, "monitor", "--server", relay.address, "--type", "drop"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = _Lines(proc)
        out.until_following(lambda: run_in(lab, p["other"].netns, "udp-send", p["server"].ip4,
                                           "8084"), rf"-> {re.escape(p['server'].ip4)}:8084 udp")
        lab.exec(p["other"].netns, sys.executable, TRAFFIC, "tcp-client", p["server"].ip4, "8083",
                 "--timeout", "1", check=False, timeout=20)
        pat = (rf"^xx drop \(Policy denied\) flow 0x[0-9a-f]+ to endpoint {server['id']}, identity "
               rf"{other['identity']}->{server['identity']}: {re.escape(p['other'].ip4)}:\d+ -> "
               rf"{re.escape(p['server'].ip4)}:8083 tcp SYN$")
        line = out.wait(pat, 20)
        assert line, out.lines[-5:]
    finally:
        code, err = _stop(proc)
    assert code == 0
    out = ok("observe", "--server", relay.address, "--verdict", "DROPPED", "--to-port", "8083", *ALL)
    # A drop does not know whether it was a reply: "<>", as Hubble prints drops.
    assert re.search(r": extra/other:\d+ \(ID:\d+\) <> shop/server:8083 \(ID:\d+\) Policy denied "
                     r"DROPPED \(TCP Flags: SYN\)$", out, re.M), out
    drops = flows_json(relay, "--drop-reason-desc", "POLICY_DENIED", "--to-port", "8083", *ALL)
    assert drops and all(f["verdict"] == "DROPPED" and f["event_type"]["type"] == 1 for f in drops)

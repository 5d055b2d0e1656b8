"""The webb commands end to end against an in-process gRPC server with canned answers:
requests sent, output printed, errors as one line and exit codes, TLS, Ctrl-C, help."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import BoolValue, UInt32Value
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ports import free_port
from webb.api.admin import admin_pb2 as apb
from webb.api.admin import admin_pb2_grpc
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc
from webb.api.relay import relay_pb2 as rpb
from webb_cli.main import build_parser, main

WEBB = str(Path(sys.executable).parent / "webb")


def flow(i: int, **kw) -> fpb.Flow:
    f = fpb.Flow(
        time=Timestamp(seconds=1_704_682_997 + i, nanos=123_000_000), verdict=fpb.FORWARDED,
        IP=fpb.IP(source="10.42.0.220", destination="10.42.0.231", ipVersion=fpb.IPv4),
        l4=fpb.Layer4(TCP=fpb.TCP(source_port=50000 + i, destination_port=9080,
                                  flags=fpb.TCPFlags(SYN=True))),
        source=fpb.Endpoint(ID=2105, identity=23407, namespace="bookinfo", pod_name="productpage-v1-x"),
        destination=fpb.Endpoint(ID=148, identity=15745, namespace="bookinfo", pod_name="reviews-v3-y"),
        Type=fpb.L3_L4, node_name="node-1", event_type=fpb.CiliumEventType(type=4, sub_type=0),
        is_reply=BoolValue(value=False), Summary="TCP Flags: SYN", **kw)
    return f


class FakeObserver(observer_pb2_grpc.ObserverServicer):
    def __init__(self) -> None:
        self.requests: list[opb.GetFlowsRequest] = []
        self.flows = [flow(i) for i in range(30)]

    def GetFlows(self, request, context):
        self.requests.append(request)
        for ff in request.whitelist:
            if any("/99" in ip for ip in ff.source_ip):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              "invalid source_ip filter: invalid CIDR in filter: '10.0.0.0/99'")
        n = request.number if request.number and request.number < len(self.flows) else len(self.flows)
        for f in self.flows[-n:] if not request.follow else self.flows[-2:]:
            yield opb.GetFlowsResponse(flow=f, node_name=f.node_name, time=f.time)
        if request.follow:
            yield opb.GetFlowsResponse(node_status=rpb.NodeStatusEvent(
                state_change=rpb.NODE_UNAVAILABLE, node_names=["node-9"]), node_name="relay")
            while context.is_active():
                time.sleep(0.05)

    def ServerStatus(self, request, context):
        return opb.ServerStatusResponse(num_flows=30, max_flows=4095, seen_flows=300,
                                        uptime_ns=60 * 10**9, version="test",
                                        num_connected_nodes=UInt32Value(value=1),
                                        num_unavailable_nodes=UInt32Value(value=0))

    def GetNodes(self, request, context):
        return opb.GetNodesResponse(nodes=[
            opb.Node(name="node-2", state=rpb.NODE_CONNECTED, address="10.0.0.2:4244"),
            opb.Node(name="node-1", state=rpb.NODE_CONNECTED, address="10.0.0.1:4244",
                     uptime_ns=10 * 10**9, seen_flows=100, num_flows=5, max_flows=4095)])

    def GetNamespaces(self, request, context):
        return opb.GetNamespacesResponse(namespaces=[opb.Namespace(namespace="bookinfo")])


class FakeAdmin(admin_pb2_grpc.AdminServicer):
    def ListEndpoints(self, request, context):
        return apb.ListEndpointsResponse(endpoints=[
            apb.Endpoint(id=148, name="reviews-v3-y", namespace="bookinfo", identity=15745,
                         ips=["10.42.0.231"], identity_labels=["k8s:app=reviews"], attached=True)])

    def ListIdentities(self, request, context):
        return apb.ListIdentitiesResponse(identities=[
            apb.Identity(id=2, labels=["reserved:world"]),
            apb.Identity(id=15745, labels=["k8s:app=reviews"])])

    def GetIdentity(self, request, context):
        if request.id != 15745:
            context.abort(grpc.StatusCode.NOT_FOUND, f"identity {request.id} not found")
        return apb.Identity(id=15745, labels=["k8s:app=reviews"])


class Server:
    def __init__(self, admin: bool = True, creds=None) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.observer = FakeObserver()
        observer_pb2_grpc.add_ObserverServicer_to_server(self.observer, self.server)
        if admin:
            admin_pb2_grpc.add_AdminServicer_to_server(FakeAdmin(), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        # What a Hubble server registers (Cilium's v1.ObserverServiceName).
        self.health.set("hubble.server.Observer", health_pb2.HealthCheckResponse.SERVING)
        if creds is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(0)


@pytest.fixture(scope="module")
def srv():
    s = Server()
    yield s
    s.stop()


def webb(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def closed_port() -> int:
    # outside the ephemeral range: no connect() can self-connect to it or hold it
    return free_port()


# -- observe -------------------------------------------------------------------------------

def test_observe_default_last_20(srv, capsys):
    code, out, err = webb(capsys, "observe", "--server", srv.address)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 20
    assert lines[-1] == ("Jan  8 03:03:46.123: bookinfo/productpage-v1-x:50029 (ID:23407) -> "
                         "bookinfo/reviews-v3-y:9080 (ID:15745) to-endpoint FORWARDED (TCP Flags: SYN)")
    assert srv.observer.requests[-1] == opb.GetFlowsRequest(number=20)


def test_observe_sends_filters(srv, capsys):
    code, out, _ = webb(capsys, "observe", "--server", srv.address, "--namespace", "bookinfo",
                        "--verdict", "DROPPED", "--not", "--to-port", "53", "--last", "3", "-o", "json")
    assert code == 0
    req = srv.observer.requests[-1]
    assert req.number == 3
    assert list(req.whitelist) == [fpb.FlowFilter(source_pod=["bookinfo/"], verdict=[fpb.DROPPED]),
                                   fpb.FlowFilter(destination_pod=["bookinfo/"], verdict=[fpb.DROPPED])]
    assert list(req.blacklist) == [fpb.FlowFilter(destination_port=["53"])]
    docs = [json.loads(x) for x in out.splitlines()]
    assert len(docs) == 3 and docs[0]["flow"]["destination"]["pod_name"] == "reviews-v3-y"
    assert docs[0]["node_name"] == "node-1"


def test_observe_table_and_dict(srv, capsys):
    code, out, _ = webb(capsys, "observe", "--server", srv.address, "--last", "2", "-o", "table",
                        "--print-node-name")
    assert code == 0
    assert out.splitlines()[0].split() == ["TIMESTAMP", "NODE", "SOURCE", "DESTINATION", "TYPE",
                                           "VERDICT", "SUMMARY"]
    assert len(out.splitlines()) == 3
    code, out, _ = webb(capsys, "observe", "--server", srv.address, "--last", "2", "-o", "dict")
    assert out.count("------------") == 1 and out.count("  TIMESTAMP: ") == 2


def test_observe_server_rejects_filter(srv, capsys):
    code, out, err = webb(capsys, "observe", "--server", srv.address, "--from-ip", "10.0.0.0/99")
    assert code == 1 and out == ""
    assert err == ("Error: rpc error: code = InvalidArgument desc = invalid source_ip filter: "
                   "invalid CIDR in filter: '10.0.0.0/99'\n")


def test_unreachable_server_is_one_line_and_fast(capsys):
    port = closed_port()
    t = time.monotonic()
    code, out, err = webb(capsys, "observe", "--server", f"127.0.0.1:{port}")
    assert code == 1 and out == ""
    assert err.startswith(f"Error: failed to connect to '127.0.0.1:{port}': ")
    assert "onnection refused" in err and err.count("\n") == 1
    assert time.monotonic() - t < 5


def test_silent_server_times_out(capsys):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(5)  # accepts, never speaks HTTP/2
    try:
        t = time.monotonic()
        code, _, err = webb(capsys, "status", "--server", f"127.0.0.1:{lsock.getsockname()[1]}",
                            "--timeout", "500ms")
        assert code == 1 and err.count("\n") == 1
        assert "failed to connect" in err and time.monotonic() - t < 5
    finally:
        lsock.close()


def test_bad_flag_values_are_one_line(capsys):
    for argv, msg in [
        (["observe", "-o", "yaml"], "invalid output format: yaml"),
        (["observe", "--time-format", "Kitchen"], "invalid --time-format value: Kitchen"),
        (["observe", "--color", "sometimes"], "invalid --color value: sometimes"),
        (["observe", "-f", "-o", "table"], "table output format is not compatible with follow mode"),
        (["observe", "--timeout", "soon"], 'invalid argument "soon" for "--timeout" flag'),
        (["observe", "--nope"], "unrecognized arguments: --nope"),
        (["status", "-o", "yaml"], "invalid output format: yaml"),
        (["monitor", "--type", "bogus"], "Unknown type (bogus)"),
        (["list", "nodes", "-o", "xml"], "unknown output format: xml"),
    ]:
        code, out, err = webb(capsys, *argv, "--server", "127.0.0.1:1")
        assert code == 2 and out == "", argv
        assert err.startswith("Error: ") and msg in err and err.count("\n") == 1, (argv, err)


def test_input_file(tmp_path, capsys, srv):
    code, out, _ = webb(capsys, "observe", "--server", srv.address, "--all", "-o", "jsonpb")
    path = tmp_path / "flows.json"
    path.write_text(out + "not json\n")
    code, out, err = webb(capsys, "observe", "--input-file", str(path), "--to-port", "9080",
                          "--from-port", "50005", "--server", "127.0.0.1:1")
    assert code == 0 and len(out.splitlines()) == 1 and "productpage-v1-x:50005" in out
    assert "not a GetFlowsResponse" in err
    code, out, _ = webb(capsys, "observe", "--input-file", str(path), "--last", "4", "-s")
    assert len(out.splitlines()) == 4 and "50029" in out.splitlines()[-1]
    code, out, _ = webb(capsys, "observe", "--input-file", str(path), "--first", "2", "-s")
    assert len(out.splitlines()) == 2 and "50000" in out


def test_env_server_defaults(srv, capsys, monkeypatch):
    monkeypatch.setenv("HUBBLE_SERVER", srv.address)
    code, out, _ = webb(capsys, "status")
    assert code == 0 and f"Healthcheck (via {srv.address}): Ok" in out
    monkeypatch.setenv("WEBB_SERVER", "127.0.0.1:1")  # WEBB_ wins
    assert webb(capsys, "status")[0] == 1
    monkeypatch.setenv("WEBB_AGENT_SERVER", srv.address)
    assert webb(capsys, "identity", "list")[0] == 0


# -- status, list --------------------------------------------------------------------------

def test_status(srv, capsys):
    code, out, err = webb(capsys, "status", "--server", srv.address)
    assert code == 0 and err == ""
    assert out == (f"Healthcheck (via {srv.address}): Ok\nCurrent/Max Flows: 30/4,095 (0.73%)\n"
                   "Flows/s: 5.00\nConnected Nodes: 1/1\n")
    code, out, _ = webb(capsys, "status", "--server", srv.address, "-o", "json")
    assert json.loads(out)["version"] == "test"


def test_status_not_serving(capsys):
    s = Server()
    s.health.set("hubble.server.Observer", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        code, out, err = webb(capsys, "status", "--server", s.address)
        assert code == 1
        assert out == f"Healthcheck (via {s.address}): Unavailable: NOT_SERVING\n"
        assert err == "Error: not healthy\n"
    finally:
        s.stop()


def test_list(srv, capsys):
    code, out, _ = webb(capsys, "list", "nodes", "--server", srv.address)
    assert code == 0
    assert out == ("NAME     STATUS      AGE   FLOWS/S   CURRENT/MAX-FLOWS\n"
                   "node-1   Connected   10s   10.00     5/4095 (  0.12%)\n"
                   "node-2   Connected   N/A   N/A       N/A\n")
    code, out, _ = webb(capsys, "list", "nodes", "--server", srv.address, "-o", "json")
    assert [n["name"] for n in json.loads(out)] == ["node-1", "node-2"]
    assert json.loads(out)[1] == {"name": "node-2", "address": "10.0.0.2:4244", "state": "NODE_CONNECTED"}
    code, out, _ = webb(capsys, "list", "namespaces", "--server", srv.address)
    assert out == "NAMESPACE\nbookinfo\n"
    code, _, err = webb(capsys, "list")
    assert code == 2 and "webb list nodes" in err


# -- identity, endpoint --------------------------------------------------------------------

def test_identity_and_endpoint(srv, capsys):
    code, out, _ = webb(capsys, "identity", "list", "--server", srv.address)
    assert out == "ID      LABELS\n2       reserved:world\n15745   k8s:app=reviews\n"
    code, out, _ = webb(capsys, "identity", "list", "app=reviews", "--server", srv.address)
    assert out == "ID      LABELS\n15745   k8s:app=reviews\n"
    code, out, _ = webb(capsys, "identity", "list", "--endpoints", "--server", srv.address)
    assert out == "ID      LABELS            REFCOUNT\n15745   k8s:app=reviews   1\n"
    code, out, _ = webb(capsys, "identity", "get", "15745", "--server", srv.address, "-o", "json")
    assert json.loads(out) == {"id": 15745, "labels": ["k8s:app=reviews"]}
    code, out, err = webb(capsys, "identity", "get", "world", "--server", srv.address)
    assert code == 1 and err == "Error: identity 2 not found\n"
    code, out, err = webb(capsys, "identity", "get", "nonsense", "--server", srv.address)
    assert code == 2 and "invalid security identity" in err
    code, out, _ = webb(capsys, "endpoint", "list", "--server", srv.address)
    assert out.splitlines()[2].split() == ["148", "bookinfo/reviews-v3-y", "Disabled", "Disabled",
                                           "15745", "k8s:app=reviews", "10.42.0.231", "ready"]
    code, out, _ = webb(capsys, "endpoint", "get", "reviews", "--server", srv.address)
    assert "       ENDPOINT: 148\n" in out and "         STATUS: ready\n" in out
    code, out, err = webb(capsys, "endpoint", "get", "details", "--server", srv.address)
    assert code == 1 and err == "Error: endpoint details not found\n"


def test_admin_commands_against_a_relay_hint(capsys):
    s = Server(admin=False)
    try:
        code, _, err = webb(capsys, "endpoint", "list", "--server", s.address)
        assert code == 1 and "code = Unimplemented" in err and "--server <agent>:4244" in err
        assert err.count("\n") == 1
    finally:
        s.stop()


# -- TLS -----------------------------------------------------------------------------------

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name, cn in (("server", "relay.webb.test"), ("client", "webb-cli")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout",
                 f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(f"subjectAltName=DNS:{cn}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
                 cwd=d)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other-ca",
             "-keyout", "other.key", "-out", "other.pem", cwd=d)
    return d


@pytest.fixture(scope="module")
def tls_srv(pki):
    creds = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(), require_client_auth=True)
    s = Server(creds=creds)
    yield s
    s.stop()


def test_tls_verified_mutual(tls_srv, pki, capsys):
    client = ["--tls-client-cert-file", str(pki / "client.pem"),
              "--tls-client-key-file", str(pki / "client.key")]
    code, out, err = webb(capsys, "status", "--server", f"tls://{tls_srv.address}",
                          "--tls-ca-cert-files", str(pki / "ca.pem"),
                          "--tls-server-name", "relay.webb.test", *client)
    assert code == 0, err
    assert f"Healthcheck (via tls://{tls_srv.address}): Ok" in out
    # same with --tls instead of the tls:// prefix, through observe
    code, out, err = webb(capsys, "observe", "--last", "1", "--server", tls_srv.address, "--tls",
                          "--tls-ca-cert-files", str(pki / "ca.pem"),
                          "--tls-server-name", "relay.webb.test", *client)
    assert code == 0 and len(out.splitlines()) == 1, err


def test_tls_insecure_skips_verification(tls_srv, pki, capsys):
    code, out, err = webb(capsys, "observe", "--last", "2", "--server", tls_srv.address,
                          "--tls-allow-insecure", "--tls-client-cert-file", str(pki / "client.pem"),
                          "--tls-client-key-file", str(pki / "client.key"))
    assert code == 0 and len(out.splitlines()) == 2, err
    # as a process: nothing but the flows, nothing on stderr at exit
    p = subprocess.run([WEBB, "observe", "--last", "3", "--server", tls_srv.address,
                        "--tls-allow-insecure", "--tls-client-cert-file", str(pki / "client.pem"),
                        "--tls-client-key-file", str(pki / "client.key")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 3 and p.stderr == ""
    # without the client certificate the server refuses the handshake
    code, out, err = webb(capsys, "status", "--server", tls_srv.address, "--tls-allow-insecure",
                          "--timeout", "2s")
    assert code == 1 and err.count("\n") == 1, err


def test_tls_failures_are_one_line(tls_srv, pki, capsys):
    client = ["--tls-client-cert-file", str(pki / "client.pem"),
              "--tls-client-key-file", str(pki / "client.key")]
    for extra in (["--tls-ca-cert-files", str(pki / "other.pem"), "--tls-server-name", "relay.webb.test"],
                  ["--tls-ca-cert-files", str(pki / "ca.pem"), "--tls-server-name", "wrong.name"]):
        code, out, err = webb(capsys, "status", "--server", tls_srv.address, "--timeout", "2s",
                              *client, *extra)
        assert code == 1 and out == "" and err.count("\n") == 1, err
        assert err.startswith(f"Error: failed to connect to '{tls_srv.address}'")
    code, _, err = webb(capsys, "status", "--server", tls_srv.address,
                        "--tls-ca-cert-files", str(pki / "missing.pem"))
    assert code == 1 and "--tls-ca-cert-files: cannot read" in err
    code, _, err = webb(capsys, "status", "--server", tls_srv.address, "--tls-client-cert-file",
                        str(pki / "client.pem"))
    assert code == 2 and "go together" in err


def test_bad_pem_files_are_named_with_their_flag(pki, tmp_path, capsys):
    """webb.tls reads the CLI's PEM files as it does the servers': a file that cannot be
    read or is no PEM file is one line naming the flag, the path and why, exit 1, before
    any connection is tried (the address is a closed port)."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    server = ["--server", f"127.0.0.1:{closed_port()}", "--timeout", "1s"]
    client = {"--tls-client-cert-file": str(pki / "client.pem"),
              "--tls-client-key-file": str(pki / "client.key")}
    cases = [
        ({"--tls-ca-cert-files": f"{pki / 'ca.pem'},{missing}"}, "--tls-ca-cert-files",
         f"cannot read {missing}: No such file or directory"),
        ({"--tls-ca-cert-files": str(junk)}, "--tls-ca-cert-files", f"{junk} is not a PEM file"),
        ({**client, "--tls-client-key-file": str(junk)}, "--tls-client-key-file",
         f"{junk} is not a PEM file"),
        ({**client, "--tls-client-cert-file": str(tmp_path)}, "--tls-client-cert-file",
         f"cannot read {tmp_path}: Is a directory"),
        ({**client, "--tls-client-cert-file": str(missing), "--tls-allow-insecure": None},
         "--tls-client-cert-file", f"cannot read {missing}: No such file or directory"),
    ]
    for flags, flag, why in cases:
        argv = [x for k, v in flags.items() for x in ((k,) if v is None else (k, v))]
        code, out, err = webb(capsys, "status", *server, *argv)
        assert (code, out, err) == (1, "", f"Error: {flag}: {why}\n"), argv


# -- follow, Ctrl-C, help --------------------------------------------------------------------

@pytest.mark.parametrize("cmd", [["observe", "-f"], ["monitor"]])
def test_ctrl_c_during_follow_exits_quietly(srv, cmd):
    p = subprocess.Popen([WEBB, *cmd, "--server", srv.address], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        lines = [p.stdout.readline(), p.stdout.readline()]  # the server sends two, then waits
        assert all("productpage-v1-x" in x or "endpoint 148" in x for x in lines), lines
        # observe: the node status event the server sends after them is on stderr
        # before Ctrl-C (read, not slept for); monitor prints its "Listening" line first.
        first_err = p.stderr.readline()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=15)
        err = first_err + err
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    if cmd[0] == "observe":
        assert err == "N/A [relay]: 1 nodes are unavailable: node-9\n"  # no time in the event


def test_follow_request_and_monitor_types(srv, capsys):
    before = len(srv.observer.requests)
    p = subprocess.Popen([WEBB, "monitor", "--type", "drop", "--type", "l7", "-n", "--server", srv.address],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(srv.observer.requests) == before:
            time.sleep(0.05)
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=15)
    finally:
        if p.poll() is None:
            p.kill()
    req = srv.observer.requests[before]
    assert req.follow and req.number == 0
    assert list(req.whitelist[0].event_type) == [fpb.EventTypeFilter(type=1), fpb.EventTypeFilter(type=129)]
    assert out == ""  # the canned flows are traces


def all_commands():
    p = build_parser()
    sub = next(a for a in p._actions if a.dest == "command")
    out = []
    for name, parser in sub.choices.items():
        nested = [a for a in parser._actions if isinstance(a, type(sub))]
        if nested:
            # aliases (list nodes = node, policy get = list, ls) share their parser
            seen: set[int] = set()
            for n, sp in nested[0].choices.items():
                if id(sp) not in seen:
                    seen.add(id(sp))
                    out.append([name, n])
        out.append([name])
    return out


@pytest.mark.parametrize("cmd", all_commands(), ids=" ".join)
def test_help_of_every_command_is_example_led(capsys, cmd):
    code, out, err = webb(capsys, *cmd, "--help")
    assert code == 0 and err == ""
    assert "usage: webb " + " ".join(cmd) in out
    if cmd != ["demo", "clean"]:  # the lead's demo subcommands
        assert "example" in out
    if cmd[0] in ("observe", "status", "monitor") or len(cmd) == 2 and cmd[0] not in ("demo",):
        assert "--server ADDRESS" in out


def test_top_level_help_lists_commands(capsys):
    code, out, _ = webb(capsys, "--help")
    for verb in ("observe", "status", "list", "monitor", "identity", "endpoint", "demo"):
        assert f"    {verb} " in out
    assert webb(capsys)[0] == 2  # no command: help, exit 2

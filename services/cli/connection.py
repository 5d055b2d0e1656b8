"""Server flags (Hubble's: --server, --tls*, --timeout, --request-timeout) and the gRPC
channel they describe.

Addresses are host:port, unix:///path or tls://host:port (TLS on). The default comes
from the environment first (WEBB_SERVER, then HUBBLE_SERVER for the relay-facing
commands; WEBB_AGENT_SERVER for identity/endpoint), like hubble's HUBBLE_* variables.
"""
from __future__ import annotations

import argparse
import os
import threading
from dataclasses import dataclass, field
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from webb.durations import parse_duration
from webb.tls import TLSConfigError, read_pem
from .errors import CLIError, rpc_error
from .tls_proxy import InsecureTLSProxy, TLSProxyError

RELAY_SERVER = "localhost:4245"
AGENT_SERVER = "localhost:4244"
TLS_PREFIX = "tls://"
DIAL_TIMEOUT = 5.0
REQUEST_TIMEOUT = 12.0
CHANNEL_OPTIONS = [("grpc.http2.bdp_probe", 0)]


def go_duration_seconds(text: str) -> float:
    try:
        ns = parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'time: invalid duration "{text}"') from None
    if ns <= 0:
        raise argparse.ArgumentTypeError(f'must be a positive duration, got "{text}"')
    return ns / 1e9


def _env(names: list[str]) -> str | None:
    for n in names:
        v = os.environ.get(n)
        if v:
            return v
    return None


def _env_bool(names: list[str]) -> bool:
    v = _env(names)
    return v is not None and v.lower() in ("1", "true", "yes", "on")


def add_server_flags(p: argparse.ArgumentParser, agent: bool = False) -> None:
    """The server flag group; agent=True for commands that read an agent's admin API."""
    if agent:
        server_env, what, default = ["WEBB_AGENT_SERVER"], "agent", AGENT_SERVER
    else:
        server_env, what, default = ["WEBB_SERVER", "HUBBLE_SERVER"], "relay or agent", RELAY_SERVER
    env = lambda key: [f"WEBB_{key}", f"HUBBLE_{key}"]  # noqa: E731
    g = p.add_argument_group("server flags")
    g.add_argument("--server", default=_env(server_env) or default, metavar="ADDRESS",
                   help=f"address of the {what}: host:port, unix:///path or tls://host:port "
                        f"(default {default}; env {', '.join(server_env)})")
    g.add_argument("--timeout", type=go_duration_seconds, metavar="DURATION",
                   default=go_duration_seconds(_env(env("TIMEOUT")) or "5s"),
                   help="how long to wait for the connection (default 5s)")
    g.add_argument("--request-timeout", type=go_duration_seconds, metavar="DURATION",
                   default=go_duration_seconds(_env(env("REQUEST_TIMEOUT")) or "12s"),
                   help="timeout of single-answer requests (status, list, identity, endpoint; "
                        "default 12s)")
    g.add_argument("--tls", action="store_true", default=_env_bool(env("TLS")),
                   help="use TLS (also on when the address starts with tls:// or a client "
                        "certificate is given)")
    g.add_argument("--tls-allow-insecure", action="store_true",
                   default=_env_bool(env("TLS_ALLOW_INSECURE")),
                   help="do not verify the server's certificate chain and host name "
                        "(NOT recommended: open to machine-in-the-middle attacks)")
    g.add_argument("--tls-ca-cert-files", action="append", metavar="FILE",
                   default=None,
                   help="PEM CA certificates to trust instead of the built-in roots "
                        "(repeatable or comma-separated)")
    g.add_argument("--tls-client-cert-file", default=_env(env("TLS_CLIENT_CERT_FILE")) or "",
                   metavar="FILE", help="PEM client certificate for mutual TLS (implies TLS)")
    g.add_argument("--tls-client-key-file", default=_env(env("TLS_CLIENT_KEY_FILE")) or "",
                   metavar="FILE", help="PEM private key of the client certificate (implies TLS)")
    g.add_argument("--tls-server-name", default=_env(env("TLS_SERVER_NAME")) or "", metavar="NAME",
                   help="name to verify in the server's certificate "
                        "(e.g. instance.hubble-relay.cilium.io)")
    p.set_defaults(_ca_env=_env(env("TLS_CA_CERT_FILES")) or "")


@dataclass
class Connection:
    """An open channel and what to call it in messages."""

    channel: grpc.Channel
    target: str  # as the user gave it
    request_timeout: float
    _proxy: InsecureTLSProxy | None = field(default=None, repr=False)
    # how `channel` was made (address, credentials or None, options): for aio_channel()
    _dial: tuple[str, grpc.ChannelCredentials | None, list] = field(
        default=("", None, []), repr=False)

    def aio_channel(self) -> grpc.aio.Channel:
        """An asyncio channel to the same server, made the same way (for the shared
        asyncio flow reader, webb.flow_follow); call it inside the event loop."""
        address, creds, options = self._dial
        if creds is None:
            return grpc.aio.insecure_channel(address, options=options)
        return grpc.aio.secure_channel(address, creds, options=options)

    def close(self) -> None:
        self.channel.close()
        if self._proxy is not None:
            self._proxy.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise CLIError(f"invalid server address '{address}': expected host:port")
    return host.strip("[]") or "localhost", int(port)


def open_connection(a: argparse.Namespace) -> Connection:
    """A channel to --server, connected within --timeout (else a one-line error)."""
    target = a.server
    address = target[len(TLS_PREFIX):] if target.startswith(TLS_PREFIX) else target
    ca_env = getattr(a, "_ca_env", "")
    sources = a.tls_ca_cert_files or ([ca_env] if ca_env else [])
    ca_files = [x for item in sources for x in item.split(",") if x]
    use_tls = (a.tls or target.startswith(TLS_PREFIX) or a.tls_allow_insecure or bool(ca_files)
               or bool(a.tls_client_cert_file) or bool(a.tls_client_key_file)
               or bool(a.tls_server_name))
    if bool(a.tls_client_cert_file) != bool(a.tls_client_key_file):
        raise CLIError("--tls-client-cert-file and --tls-client-key-file go together", 2)
    if use_tls and address.startswith("unix:"):
        raise CLIError("TLS over a unix socket is not supported", 2)
    roots = key = cert = None
    if use_tls:  # webb.tls reads them, as it does the servers' (one message for a bad file)
        try:
            if not a.tls_allow_insecure:  # (which verifies nothing: no CA is read)
                roots = b"".join(read_pem(f, "--tls-ca-cert-files") for f in ca_files) or None
            if a.tls_client_key_file:
                key = read_pem(a.tls_client_key_file, "--tls-client-key-file")
                cert = read_pem(a.tls_client_cert_file, "--tls-client-cert-file")
        except TLSConfigError as e:
            raise CLIError(str(e)) from None
    proxy = None
    creds: grpc.ChannelCredentials | None = None
    options = list(CHANNEL_OPTIONS)
    if not use_tls:
        channel = grpc.insecure_channel(address, options=options)
    elif a.tls_allow_insecure:
        host, port = _split_host_port(address)
        try:
            proxy = InsecureTLSProxy(host, port, a.tls_server_name, a.timeout,
                                     a.tls_client_cert_file, a.tls_client_key_file).start()
        except TLSProxyError as e:
            raise CLIError(f"failed to connect to '{target}': TLS: {e}") from None
        except OSError as e:  # PEM files that are not a certificate and its key
            raise CLIError(f"cannot load client certificate: {e}") from None
        address = proxy.address
        channel = grpc.insecure_channel(address, options=options)
    else:
        creds = grpc.ssl_channel_credentials(root_certificates=roots, private_key=key,
                                             certificate_chain=cert)
        if a.tls_server_name:
            options.append(("grpc.ssl_target_name_override", a.tls_server_name))
        channel = grpc.secure_channel(address, creds, options=options)
    conn = Connection(channel, target, a.request_timeout, proxy, (address, creds, options))
    try:
        _wait_connected(conn, a.timeout)
    except BaseException:
        conn.close()
        raise
    return conn


def _wait_connected(conn: Connection, timeout: float) -> None:
    """Wait for READY; on a failure or the timeout, ask once for the transport's reason."""
    settled = threading.Event()
    seen: list[grpc.ChannelConnectivity] = []

    def watch(state: grpc.ChannelConnectivity) -> None:
        seen.append(state)
        if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                     grpc.ChannelConnectivity.SHUTDOWN):
            settled.set()

    conn.channel.subscribe(watch, try_to_connect=True)
    try:
        settled.wait(timeout)
    finally:
        conn.channel.unsubscribe(watch)
    if grpc.ChannelConnectivity.READY in seen:
        return
    try:
        health_pb2_grpc.HealthStub(conn.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=min(timeout, 2.0), wait_for_ready=False)
    except grpc.RpcError as e:
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise CLIError(f"failed to connect to '{conn.target}': context deadline exceeded "
                               f"after {timeout:g}s") from None
            raise rpc_error(e, conn.target) from None
    # Any other answer (e.g. Unimplemented) means a server answered.


def unary(conn: Connection, method, request):
    """A single-answer call with --request-timeout, errors as one line."""
    try:
        return method(request, timeout=conn.request_timeout)
    except grpc.RpcError as e:
        raise rpc_error(e, conn.target) from None

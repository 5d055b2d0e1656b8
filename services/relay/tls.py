"""TLS from certificate files: the relay's server side (optionally requiring
client certificates) and its client side towards the agents (optionally mTLS)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


class TLSConfigError(ValueError):
    pass


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TLSConfigError(f"{what}: cannot read {path}: {e.strerror}") from e
    if b"-----BEGIN" not in data:
        raise TLSConfigError(f"{what}: {path} is not a PEM file")
    return data


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials | None:
    """None (plaintext) unless cert and key are given; with client_ca, clients
    must present a certificate signed by it (mTLS)."""
    if not cert and not key:
        if client_ca:
            raise TLSConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cert and key):
        raise TLSConfigError("--tls-cert and --tls-key go together")
    pair = (_read(key, "--tls-key"), _read(cert, "--tls-cert"))
    if client_ca:
        return grpc.ssl_server_credentials([pair], root_certificates=_read(client_ca, "--tls-client-ca"),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials([pair])


@dataclass
class AgentTLS:
    """How the relay dials agents (and the peer service)."""

    credentials: grpc.ChannelCredentials | None = None
    server_name: str = ""  # overrides the name checked in the agents' certificates

    @property
    def enabled(self) -> bool:
        return self.credentials is not None

    def channel_options(self, peer_server_name: str = "") -> list[tuple[str, str]]:
        name = self.server_name or peer_server_name
        if self.enabled and name:
            return [("grpc.ssl_target_name_override", name)]
        return []


def agent_tls(ca: str = "", cert: str = "", key: str = "", server_name: str = "") -> AgentTLS:
    if not (ca or cert or key):
        if server_name:
            raise TLSConfigError("--agent-tls-server-name needs --agent-tls-ca")
        return AgentTLS()
    if not ca:
        raise TLSConfigError("TLS to agents needs --agent-tls-ca")
    if bool(cert) != bool(key):
        raise TLSConfigError("--agent-tls-cert and --agent-tls-key go together")
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "--agent-tls-ca"),
        private_key=_read(key, "--agent-tls-key") if key else None,
        certificate_chain=_read(cert, "--agent-tls-cert") if cert else None)
    return AgentTLS(creds, server_name)

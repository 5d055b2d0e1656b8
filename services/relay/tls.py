"""TLS from certificate files: the relay's server side (optionally requiring
client certificates) and its client side towards the agents (optionally mTLS)."""
from __future__ import annotations

from dataclasses import dataclass

import grpc

# The server side is shared with the agent (webb/tls.py); re-exported for main.py.
from webb.tls import TLSConfigError, server_credentials  # noqa: F401
from webb.tls import read_pem as _read


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

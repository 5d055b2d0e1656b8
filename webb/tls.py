"""TLS from PEM files: credentials for webb's gRPC servers (agent, relay), and the one
reader of PEM files for every TLS flag (these, the relay's --agent-tls-*, the CLI's
--tls-ca-cert-files / --tls-client-*-file), so a bad file reads the same everywhere:
the flag, the path and why.

A server is plaintext unless given a certificate and key; with a client CA as well,
clients must present a certificate signed by it (mTLS). Flags are named like
Hubble's: --tls-cert, --tls-key, --tls-client-ca.
"""
from __future__ import annotations

from pathlib import Path

import grpc


class TLSConfigError(ValueError):
    pass


def read_pem(path: str, what: str) -> bytes:
    """The file's bytes; `what` (the flag) leads the error of an unreadable or non-PEM file."""
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
    pair = (read_pem(key, "--tls-key"), read_pem(cert, "--tls-cert"))
    if client_ca:
        return grpc.ssl_server_credentials([pair], root_certificates=read_pem(client_ca, "--tls-client-ca"),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials([pair])

"""Errors a user reads: one line on stderr, a non-zero exit."""
from __future__ import annotations

import grpc


class CLIError(Exception):
    """Printed as "Error: <message>"; exit status 1 (2 for bad flags)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def go_code_name(code: grpc.StatusCode) -> str:
    """INVALID_ARGUMENT -> InvalidArgument, as Go's grpc prints status codes."""
    if code == grpc.StatusCode.CANCELLED:
        return "Canceled"
    return "".join(part.capitalize() for part in code.name.split("_"))


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def rpc_error(e: grpc.RpcError, target: str = "", streaming: bool = False) -> CLIError:
    """A gRPC failure in Hubble's words: the connection or the server's own message.
    streaming=True: the stream had started, so an unavailable server was lost, not missed."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = one_line(e.details() if hasattr(e, "details") else str(e)) or code.name
    if code == grpc.StatusCode.UNAVAILABLE and target:
        prefix = "failed to connect to all addresses; last error: "
        if details.startswith(prefix):
            details = details[len(prefix):]
        if streaming:
            return CLIError(f"lost the connection to '{target}': {details}")
        return CLIError(f"failed to connect to '{target}': {details}")
    if code == grpc.StatusCode.UNKNOWN:
        return CLIError(details)  # Hubble shows the server's message as is
    return CLIError(f"rpc error: code = {go_code_name(code)} desc = {details}")

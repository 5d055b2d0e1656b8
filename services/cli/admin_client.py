"""Calls to an agent's admin API (webb.admin.Admin) with errors a user understands."""
from __future__ import annotations

import grpc

from webb.api.admin import admin_pb2_grpc

from .connection import Connection
from .errors import CLIError, rpc_error

HINT = "identity and endpoint commands read an agent's admin API: --server <agent>:4244"


def call(conn: Connection, method_name: str, request):
    stub = admin_pb2_grpc.AdminStub(conn.channel)
    try:
        return getattr(stub, method_name)(request, timeout=conn.request_timeout)
    except grpc.RpcError as e:
        err = rpc_error(e, conn.target)
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise CLIError(f"{err} ({HINT})") from None
        raise err from None

"""Serving streams whose messages are already encoded.

webb's servers keep flows as wire bytes (the agent encodes each flow once, the
relay never decodes what it forwards); a handler that yields those bytes needs a
serializer that passes bytes through. This registers a generated servicer like
its `add_XServicer_to_server` helper does, with such a serializer on the named
streaming methods (a handler may still yield a message where it must)."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import grpc


def passthrough(msg: Any) -> bytes:
    return msg if msg.__class__ is bytes else msg.SerializeToString()


def add_with_byte_responses(add_servicer: Callable[[Any, Any], None], servicer: Any,
                            server: grpc.aio.Server, service: str,
                            methods: Iterable[str]) -> None:
    """add_servicer: the generated add_XServicer_to_server; service: its full name."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}

    class Capture:
        """Stands in for the server to collect the generated handler table."""

        def add_generic_rpc_handlers(self, hs: Any) -> None:
            pass

        def add_registered_method_handlers(self, name: str, hs: Any) -> None:
            handlers.update(hs)

    add_servicer(servicer, Capture())
    for m in methods:
        h = handlers[m]
        handlers[m] = grpc.unary_stream_rpc_method_handler(
            h.unary_stream, request_deserializer=h.request_deserializer,
            response_serializer=passthrough)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)

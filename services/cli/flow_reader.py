"""One GetFlows request of `webb observe` / `webb monitor`, read through webb's shared flow
reader (webb.flow_follow.FlowStream): webb's batched stream (many flows per gRPC message)
from a webb relay or agent, Hubble's GetFlows from a server without it (a Hubble Relay, a
Cilium agent, a webb agent with --disable-batch-service).

The request goes out as the command line built it, once: the server applies number,
first, follow, since, until, filters and field mask exactly as it does for GetFlows (the
batched stream shares that selection), so the output is the same either way; and, as
`hubble observe`, the command ends (with the error) when the stream fails instead of
reconnecting.
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Callable

from webb.api.observer import observer_pb2 as opb
from webb.flow_follow import FlowStream

from .connection import Connection


def read_flows(conn: Connection, req: opb.GetFlowsRequest,
               handle: Callable[[opb.GetFlowsResponse], None], *, flush: bool,
               debug: bool = False) -> None:
    """Calls ``handle`` with each response in stream order until the server ends the
    stream. gRPC failures raise grpc.RpcError (AioRpcError); Ctrl-C KeyboardInterrupt,
    never in the middle of ``handle`` (asyncio.run cancels the reading task instead)."""
    asyncio.run(_read(conn, req, handle, flush, debug))


async def _read(conn: Connection, req: opb.GetFlowsRequest,
                handle: Callable[[opb.GetFlowsResponse], None], flush: bool,
                debug: bool) -> None:
    def fallback() -> None:
        if debug:
            sys.stderr.write(f"debug: {conn.target} has no batched stream (webb.stream.FlowStream"
                             f" unimplemented): reading observer.Observer/GetFlows\n")
            sys.stderr.flush()

    channel = conn.aio_channel()
    try:
        stream = FlowStream(channel, on_fallback=fallback)
        if debug:
            sys.stderr.write(f"debug: reading flows from {conn.target} with "
                             f"webb.stream.FlowStream/GetFlowBatches\n")
            sys.stderr.flush()
        messages = entries = 0
        async with contextlib.aclosing(stream.read(req)) as answer:
            async for batch in answer:
                messages += 1
                entries += len(batch)
                for res in batch.responses():
                    handle(res)
                if flush:
                    sys.stdout.flush()
        if debug:
            method = "GetFlowBatches" if stream.mode == "batches" else "GetFlows"
            sys.stderr.write(f"debug: {entries} responses in {messages} {method} messages\n")
            sys.stderr.flush()
    finally:
        await channel.close()

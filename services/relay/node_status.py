"""NodeStatusEvent responses: which nodes serve a GetFlows request, and which failed.

Failures with the same message are coalesced into one NODE_ERROR that lists all
their nodes, as Hubble Relay does: the first error of a kind waits up to the
aggregation window for others with the same message; a different message, or
the window's end, sends it. A later status about one of its nodes (the node
rejoining or gone) sends it first, so a client never reads a node's error after
the news that it is back.
"""
from __future__ import annotations

import time
from typing import Iterable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from webb.api.observer import observer_pb2 as opb
from webb.api.relay import relay_pb2 as rpb


def now_ts() -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


def status_event(state: int, nodes: Iterable[str], relay_name: str,
                 message: str = "") -> opb.GetFlowsResponse:
    return opb.GetFlowsResponse(
        node_status=rpb.NodeStatusEvent(state_change=state, node_names=list(nodes),
                                        message=message),
        node_name=relay_name, time=now_ts())


def _code_name(code: grpc.StatusCode) -> str:
    # Go's spelling (codes.Unavailable), which Hubble users see in these messages.
    return "".join(p.capitalize() for p in code.name.split("_"))


def error_message(err: BaseException) -> str:
    """A one-line message for a node's failure."""
    if isinstance(err, grpc.aio.AioRpcError):
        code = err.code()
        details = err.details() or ""
        if code == grpc.StatusCode.UNKNOWN:
            return details
        return f"rpc error: code = {_code_name(code)} desc = {details}"
    return str(err) or type(err).__name__


class ErrorCoalescer:
    """Holds NODE_ERROR events for up to `window_ns`, merging equal messages."""

    def __init__(self, window_ns: int, relay_name: str) -> None:
        self.window_ns = window_ns
        self.relay_name = relay_name
        self._message: str | None = None
        self._nodes: list[str] = []
        self._deadline = 0

    def add(self, node: str, message: str, now_ns: int) -> list[opb.GetFlowsResponse]:
        """Records a failure; returns a pending event that must go out now."""
        if self._message == message:
            if node not in self._nodes:
                self._nodes.append(node)
            return []
        out = self.flush()
        self._message, self._nodes, self._deadline = message, [node], now_ns + self.window_ns
        return out

    def flush_for(self, nodes: Iterable[str]) -> list[opb.GetFlowsResponse]:
        """The pending event now if it names one of `nodes`: a node's error must reach
        the client before what the relay says of that node next (NODE_CONNECTED when
        it rejoins, NODE_GONE), however soon that comes after the failure."""
        if self._message is not None and not set(self._nodes).isdisjoint(nodes):
            return self.flush()
        return []

    def due(self, now_ns: int) -> list[opb.GetFlowsResponse]:
        if self._message is not None and now_ns >= self._deadline:
            return self.flush()
        return []

    def deadline(self) -> int | None:
        return self._deadline if self._message is not None else None

    def flush(self) -> list[opb.GetFlowsResponse]:
        if self._message is None:
            return []
        ev = status_event(rpb.NODE_ERROR, self._nodes, self.relay_name, self._message)
        self._message, self._nodes = None, []
        return [ev]

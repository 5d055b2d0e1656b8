"""The UI's connection to hubble-relay (or one agent): the same observer.Observer API.

One grpc.aio channel for everything. A poller asks ServerStatus every couple of
seconds, which is what the connection indicator shows (connected, connecting,
unreachable with the error, connected/unavailable nodes); gRPC reconnects the
channel by itself with a short back-off.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc
from webb.timeouts import wait_for

log = logging.getLogger("webb.ui.relay")

CHANNEL_OPTIONS = [
    # BDP probing stays on: without it one stream carried ~30 % fewer flows/s here
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 3000),
    # no keepalive pings: Go servers (hubble-relay) answer pings more often than every
    # 5 min with GOAWAY; the status poll notices a dead relay instead (see lost())
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


def rpc_error_text(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return f"{type(e).__name__}: {e}"


def ts(ns: int) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(ns)
    return t


class RelayClient:
    def __init__(self, address: str, poll_interval: float = 2.0, rpc_timeout: float = 3.0,
                 credentials: grpc.ChannelCredentials | None = None,
                 server_name: str = "") -> None:
        self.address = address
        self.poll_interval = poll_interval
        self.rpc_timeout = rpc_timeout
        options = list(CHANNEL_OPTIONS)
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if credentials is not None:
            self.channel = grpc.aio.secure_channel(address, credentials, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(address, options=options)
        self.stub = observer_pb2_grpc.ObserverStub(self.channel)
        self.state = "connecting"  # connecting | connected | unreachable
        self.error = ""
        self.since = time.time()
        self.server: dict[str, Any] = {}
        self.nodes: list[dict[str, Any]] = []
        self.version = 0  # bumped whenever what status() says changes
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()

    # -- status -------------------------------------------------------------------
    def _set(self, state: str, error: str = "") -> None:
        if state != self.state or error != self.error:
            if state != self.state:
                if self.state == "connected":
                    self._lost.set()  # wake the streams: theirs may hang on a dead peer
                    self._lost = asyncio.Event()
                self.since = time.time()
                log.info("relay %s: %s%s", self.address, state, f" ({error})" if error else "")
            self.state, self.error = state, error
            self.version += 1

    async def lost(self) -> None:
        """Returns when the relay, reachable so far, stops answering."""
        await self._lost.wait()

    def status(self) -> dict[str, Any]:
        return {"address": self.address, "state": self.state, "error": self.error,
                "since": self.since, "server": self.server, "nodes": self.nodes}

    def note_failure(self, e: BaseException) -> None:
        """A stream failed: say so now rather than at the next poll, and poll soon."""
        if isinstance(e, grpc.aio.AioRpcError) and e.code() in (
                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            self._set("unreachable", rpc_error_text(e))
        self._wake.set()

    async def poll_once(self) -> None:
        try:
            st = await self.stub.ServerStatus(opb.ServerStatusRequest(), timeout=self.rpc_timeout)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as e:
            self._set("unreachable", rpc_error_text(e))
            return
        server = {
            "version": st.version, "num_flows": st.num_flows, "max_flows": st.max_flows,
            "seen_flows": st.seen_flows, "flows_rate": round(st.flows_rate, 2),
            "uptime_s": round(st.uptime_ns / 1e9, 1),
            "connected_nodes": st.num_connected_nodes.value if st.HasField("num_connected_nodes") else None,
            "unavailable_nodes": st.num_unavailable_nodes.value if st.HasField("num_unavailable_nodes") else None,
            "unavailable": list(st.unavailable_nodes),
        }
        nodes = self.nodes
        try:
            resp = await self.stub.GetNodes(opb.GetNodesRequest(), timeout=self.rpc_timeout)
            nodes = [{"name": n.name, "state": _node_state(n.state), "address": n.address,
                      "version": n.version, "num_flows": n.num_flows, "max_flows": n.max_flows,
                      "seen_flows": n.seen_flows, "uptime_s": round(n.uptime_ns / 1e9, 1)}
                     for n in resp.nodes]
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                log.debug("GetNodes: %s", rpc_error_text(e))
        if (server.get("connected_nodes"), server.get("unavailable"), [(n["name"], n["state"]) for n in nodes]) != \
                (self.server.get("connected_nodes"), self.server.get("unavailable"),
                 [(n["name"], n["state"]) for n in self.nodes]):
            self.version += 1
        self.server, self.nodes = server, nodes
        self._set("connected")

    async def run(self) -> None:
        while True:
            await self.poll_once()
            self._wake.clear()
            delay = self.poll_interval if self.state == "connected" else min(1.0, self.poll_interval)
            try:
                await wait_for(self._wake.wait(), delay)
                await asyncio.sleep(0.2)
            except asyncio.TimeoutError:
                pass

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="relay-status")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self.channel.close(grace=None)

    # -- queries ------------------------------------------------------------------
    async def namespaces(self) -> list[str]:
        try:
            resp = await self.stub.GetNamespaces(opb.GetNamespacesRequest(), timeout=self.rpc_timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                self.note_failure(e)
            return []
        return sorted({n.namespace for n in resp.namespaces if n.namespace})

    async def find_flow(self, uuid: str) -> fpb.Flow | None:
        """A flow by its uuid from the relay's history (the agents' rings)."""
        req = opb.GetFlowsRequest(whitelist=[fpb.FlowFilter(uuid=[uuid])])
        try:
            async for resp in self.stub.GetFlows(req, timeout=self.rpc_timeout):
                if resp.HasField("flow") and resp.flow.uuid == uuid:
                    return resp.flow
        except grpc.aio.AioRpcError as e:
            self.note_failure(e)
        return None

    def get_flows(self, req: opb.GetFlowsRequest) -> Any:
        return self.stub.GetFlows(req)


def _node_state(state: int) -> str:
    from webb.api.relay import relay_pb2

    try:
        return relay_pb2.NodeState.Name(state).removeprefix("NODE_").lower()
    except ValueError:
        return str(state)

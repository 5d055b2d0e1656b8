"""The pool of peers (agents) and one gRPC connection to each.

Peers come from discovery (a static list or peer.Peer/Notify). Each gets a
channel that gRPC keeps connected, reconnecting with exponential backoff
(--reconnect-backoff-min/-max); a watcher follows the channel's connectivity
so that `connected` is true exactly while the connection is up. A static peer
is named after the node its agent reports (GetNodes); until then, its address.
Everything that uses peers (GetFlows streams, status calls) reads `list()` and
is told of changes through `watch()`.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc

from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc
from webb.api.stream import stream_pb2_grpc

from .tls import AgentTLS

log = logging.getLogger(__name__)

_NEVER_IDLE_MS = 2**31 - 1
GET_FLOWS = "/observer.Observer/GetFlows"


@dataclass
class Peer:
    key: str  # identity in the pool: the peer's name, or "static:<address>"
    name: str  # node name shown to clients
    address: str
    tls_server_name: str = ""
    origin: str = ""  # who added it: "static" or the peer service's address
    generation: int = 0  # bumped whenever the connection is replaced
    channel: grpc.aio.Channel | None = field(default=None, repr=False)
    connected: bool = False
    version: str = ""
    # webb.stream.FlowStream is tried until the node answers UNIMPLEMENTED (a Cilium
    # agent, a Hubble Relay); a new connection (a new Peer) tries again.
    flow_batches: bool = True
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def observer(self) -> observer_pb2_grpc.ObserverStub:
        assert self.channel is not None
        return observer_pb2_grpc.ObserverStub(self.channel)

    def get_flows(self, req: opb.GetFlowsRequest) -> grpc.aio.UnaryStreamCall:
        """Hubble's GetFlows, the responses left serialized (forwarded as they are)."""
        assert self.channel is not None
        return self.channel.unary_stream(
            GET_FLOWS, request_serializer=opb.GetFlowsRequest.SerializeToString,
            response_deserializer=None)(req)

    def get_flow_batches(self, req: opb.GetFlowsRequest) -> grpc.aio.UnaryStreamCall:
        assert self.channel is not None
        return stream_pb2_grpc.FlowStreamStub(self.channel).GetFlowBatches(req)

    def lacks_flow_batches(self) -> None:
        self.flow_batches = False


@dataclass
class PoolOptions:
    tls: AgentTLS = field(default_factory=AgentTLS)
    dial_timeout: float = 5.0
    backoff_min: float = 1.0
    backoff_max: float = 10.0


class PeerPool:
    def __init__(self, opts: PoolOptions | None = None) -> None:
        self.opts = opts or PoolOptions()
        self._peers: dict[str, Peer] = {}
        self._watchers: set[asyncio.Event] = set()
        self._generation = 0
        self.version = 0  # bumped on every change that a reader may care about

    # -- reading ------------------------------------------------------------------
    def list(self) -> list[Peer]:
        return sorted(self._peers.values(), key=lambda p: (p.name, p.key))

    def get(self, key: str) -> Peer | None:
        return self._peers.get(key)

    def watch(self, event: asyncio.Event) -> None:
        self._watchers.add(event)

    def unwatch(self, event: asyncio.Event) -> None:
        self._watchers.discard(event)

    def changed(self) -> None:
        """Tells the watchers that peers (or discovery) changed."""
        self.version += 1
        for ev in self._watchers:
            ev.set()

    # -- changing -----------------------------------------------------------------
    def upsert(self, key: str, name: str, address: str, tls_server_name: str = "",
               origin: str = "") -> Peer:
        old = self._peers.get(key)
        if old is not None and old.address == address and old.tls_server_name == tls_server_name:
            if old.name != name and not key.startswith("static:"):
                old.name = name
                self.changed()
            return old
        if old is not None:
            log.info("peer %s changed address %s -> %s", key, old.address, address)
            self._close(old)
        self._generation += 1
        p = Peer(key=key, name=name, address=address, tls_server_name=tls_server_name,
                 origin=origin, generation=self._generation)
        p.channel = self._dial(p)
        p._task = asyncio.create_task(self._follow(p), name=f"peer {key}")
        self._peers[key] = p
        log.info("peer %s added (%s)", name, address)
        self.changed()
        return p

    def remove(self, key: str) -> None:
        p = self._peers.pop(key, None)
        if p is None:
            return
        log.info("peer %s removed", p.name)
        self._close(p)
        self.changed()

    def _close(self, p: Peer) -> None:
        p.connected = False
        if p._task is not None:
            p._task.cancel()
        if p.channel is not None:
            ch, p.channel = p.channel, None
            asyncio.ensure_future(ch.close())

    async def close(self) -> None:
        peers = list(self._peers.values())
        self._peers.clear()
        for p in peers:
            if p._task is not None:
                p._task.cancel()
        await asyncio.gather(*(p._task for p in peers if p._task), return_exceptions=True)
        await asyncio.gather(*(p.channel.close() for p in peers if p.channel),
                             return_exceptions=True)

    # -- connections --------------------------------------------------------------
    def channel_options(self, tls_server_name: str = "") -> list[tuple[str, object]]:
        o = self.opts
        return [
            ("grpc.initial_reconnect_backoff_ms", int(o.backoff_min * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(max(o.backoff_min, o.dial_timeout) * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(o.backoff_max * 1000)),
            ("grpc.client_idle_timeout_ms", _NEVER_IDLE_MS),
            *o.tls.channel_options(tls_server_name),
        ]

    def dial(self, address: str, tls_server_name: str = "") -> grpc.aio.Channel:
        opts = self.channel_options(tls_server_name)
        if self.opts.tls.credentials is not None:
            return grpc.aio.secure_channel(address, self.opts.tls.credentials, options=opts)
        return grpc.aio.insecure_channel(address, options=opts)

    def _dial(self, p: Peer) -> grpc.aio.Channel:
        return self.dial(p.address, p.tls_server_name)

    async def _follow(self, p: Peer) -> None:
        """Tracks the channel's connectivity; asks gRPC to reconnect when idle."""
        ch = p.channel
        assert ch is not None
        try:
            state = ch.get_state(try_to_connect=True)
            while True:
                up = state == grpc.ChannelConnectivity.READY
                if up and not p.connected:
                    await self._identify(p)
                    if p.channel is not ch:
                        return
                    p.connected = True
                    log.info("peer %s connected (%s)", p.name, p.address)
                    self.changed()
                elif not up and p.connected:
                    p.connected = False
                    log.info("peer %s unavailable (%s)", p.name, p.address)
                    self.changed()
                await ch.wait_for_state_change(state)
                state = ch.get_state(try_to_connect=True)
        except asyncio.CancelledError:
            raise
        except Exception:  # a closed channel ends the watch
            log.debug("peer %s: connectivity watch ended", p.key, exc_info=True)

    async def _identify(self, p: Peer) -> None:
        """Learns the node's name (static peers) and version from the agent."""
        try:
            resp = await p.observer.GetNodes(opb.GetNodesRequest(), timeout=self.opts.dial_timeout)
        except grpc.aio.AioRpcError as e:
            log.debug("peer %s: GetNodes failed: %s", p.key, e.details())
            return
        if len(resp.nodes) == 1:
            node = resp.nodes[0]
            p.version = node.version
            if p.key.startswith("static:") and node.name:
                p.name = node.name

"""Finding the agents: a static list (--peers) and peer.Peer/Notify (--peer-service).

A peer service (an agent's peer.Peer; in Kubernetes one that lists every node)
first announces every peer as PEER_ADDED, then streams changes. Addresses may
come without a port; then --peer-port (Hubble's 4244) applies. The stream is
re-opened with exponential backoff when it fails; after a reconnect the peers it
no longer announces are removed.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging

import grpc

from webb.api.peer import peer_pb2 as ppb
from webb.backoff import delay as backoff
from webb.api.peer import peer_pb2_grpc

from .pool import PeerPool

log = logging.getLogger(__name__)

DEFAULT_PEER_PORT = 4244
RESYNC_GRACE = 2.0  # seconds after a reconnect before unannounced peers are removed


def normalize_address(address: str, default_port: int = DEFAULT_PEER_PORT) -> str:
    """"host:port", "[v6]:port" and "unix://..." stay; a bare host or IPv6
    address gets the default port."""
    a = address.strip()
    if not a:
        raise ValueError("empty peer address")
    if a.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
        return a
    if a.startswith("["):
        if "]:" in a:
            return a
        return f"{a.rstrip(']')}]:{default_port}" if a.endswith("]") else a
    if a.count(":") > 1:  # a bare IPv6 address
        ipaddress.IPv6Address(a)
        return f"[{a}]:{default_port}"
    if ":" in a:
        host, port = a.rsplit(":", 1)
        if not host or not port.isdigit():
            raise ValueError(f"bad peer address {address!r}")
        return a
    return f"{a}:{default_port}"


def add_static(pool: PeerPool, addresses: list[str], default_port: int) -> None:
    for a in addresses:
        addr = normalize_address(a, default_port)
        pool.upsert(f"static:{addr}", addr, addr, origin="static")


class PeerServiceWatcher:
    """Follows one peer service's Notify stream into the pool."""

    def __init__(self, pool: PeerPool, address: str, default_port: int = DEFAULT_PEER_PORT) -> None:
        self.pool = pool
        self.address = normalize_address(address, default_port)
        self.default_port = default_port
        self.connected = False
        self._round = 0
        self._seen: dict[str, int] = {}  # peer key -> round it was last announced in

    async def run(self) -> None:
        attempt = 0
        opts = self.pool.opts
        while True:
            channel = self.pool.dial(self.address)
            sweep: asyncio.Task[None] | None = None
            try:
                call = peer_pb2_grpc.PeerStub(channel).Notify(ppb.NotifyRequest())
                await call.wait_for_connection()
                self.connected = True
                self._round += 1
                attempt = 0
                log.info("peer service %s connected", self.address)
                self.pool.changed()
                if self._round > 1:
                    sweep = asyncio.create_task(self._sweep(self._round))
                async for cn in call:
                    self.handle(cn)
                log.warning("peer service %s ended its stream", self.address)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                log.warning("peer service %s: %s", self.address, e.details() or e.code().name)
            except Exception:
                log.exception("peer service %s failed", self.address)
            finally:
                if sweep is not None:
                    sweep.cancel()
                if self.connected:
                    self.connected = False
                    self.pool.changed()
                await channel.close()
            delay = backoff(attempt, opts.backoff_min, opts.backoff_max)
            attempt += 1
            await asyncio.sleep(delay)

    def handle(self, cn: ppb.ChangeNotification) -> None:
        if not cn.name:
            log.warning("peer service %s: notification without a name ignored", self.address)
            return
        if cn.type in (ppb.PEER_ADDED, ppb.PEER_UPDATED):
            try:
                addr = normalize_address(cn.address, self.default_port)
            except ValueError as e:
                log.warning("peer %s: %s", cn.name, e)
                return
            tls_name = cn.tls.server_name if cn.HasField("tls") else ""
            self.pool.upsert(cn.name, cn.name, addr, tls_name, origin=self.address)
            self._seen[cn.name] = self._round
        elif cn.type == ppb.PEER_DELETED:
            self.pool.remove(cn.name)
            self._seen.pop(cn.name, None)

    async def _sweep(self, round_: int) -> None:
        await asyncio.sleep(RESYNC_GRACE)
        for p in self.pool.list():
            if p.origin == self.address and self._seen.get(p.key, 0) < round_:
                log.info("peer %s no longer announced; removing", p.name)
                self.pool.remove(p.key)
                self._seen.pop(p.key, None)

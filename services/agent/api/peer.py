"""peer.Peer/Notify: announces the agents of the cluster to a relay.

Without Kubernetes an agent announces itself and the nodes its endpoints file
names with an `agent_address`; changes to that list are sent as they happen.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

import grpc

from webb.api.peer import peer_pb2 as ppb
from webb.api.peer import peer_pb2_grpc


TLS_DOMAIN = "webb-grpc.local"


def tls_server_name(node: str, cluster: str) -> str:
    """The name a relay verifies an agent's certificate against, like Cilium's
    <node>.<cluster>.hubble-grpc.cilium.io (a node name's dots would be labels)."""
    return f"{node.replace('.', '-')}.{cluster}.{TLS_DOMAIN}"


class PeerDirectory:
    """The set of (name, address) peers; notifies streams of changes.

    With `tls_cluster` set (the agents serve TLS), each notification names the TLS
    server name of its agent, as Hubble's peer service does, so a relay can verify
    every agent against one wildcard certificate (*.<cluster>.webb-grpc.local)."""

    def __init__(self, tls_cluster: str = "") -> None:
        self.peers: dict[str, str] = {}
        self.tls_cluster = tls_cluster
        self._queues: set[asyncio.Queue[ppb.ChangeNotification]] = set()

    def _note(self, name: str, addr: str, kind: int) -> ppb.ChangeNotification:
        cn = ppb.ChangeNotification(name=name, address=addr, type=kind)  # type: ignore[arg-type]
        if self.tls_cluster:
            cn.tls.server_name = tls_server_name(name, self.tls_cluster)
        return cn

    def set(self, peers: dict[str, str]) -> None:
        old = self.peers
        self.peers = dict(peers)
        changes = []
        for name in old.keys() - peers.keys():
            changes.append(self._note(name, old[name], ppb.PEER_DELETED))
        for name, addr in peers.items():
            if name not in old:
                changes.append(self._note(name, addr, ppb.PEER_ADDED))
            elif old[name] != addr:
                changes.append(self._note(name, addr, ppb.PEER_UPDATED))
        for q in self._queues:
            for c in changes:
                q.put_nowait(c)

    def subscribe(self) -> asyncio.Queue[ppb.ChangeNotification]:
        q: asyncio.Queue[ppb.ChangeNotification] = asyncio.Queue()
        for name, addr in self.peers.items():
            q.put_nowait(self._note(name, addr, ppb.PEER_ADDED))
        self._queues.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[ppb.ChangeNotification]) -> None:
        self._queues.discard(q)


class PeerService(peer_pb2_grpc.PeerServicer):
    def __init__(self, directory: PeerDirectory) -> None:
        self.directory = directory

    async def Notify(self, request: ppb.NotifyRequest,
                     context: grpc.aio.ServicerContext) -> AsyncIterator[ppb.ChangeNotification]:
        q = self.directory.subscribe()
        try:
            while True:
                yield await q.get()
        finally:
            self.directory.unsubscribe(q)

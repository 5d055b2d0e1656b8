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


class PeerDirectory:
    """The set of (name, address) peers; notifies streams of changes."""

    def __init__(self) -> None:
        self.peers: dict[str, str] = {}
        self._queues: set[asyncio.Queue[ppb.ChangeNotification]] = set()

    def set(self, peers: dict[str, str]) -> None:
        old = self.peers
        self.peers = dict(peers)
        changes = []
        for name in old.keys() - peers.keys():
            changes.append(ppb.ChangeNotification(name=name, address=old[name],
                                                  type=ppb.PEER_DELETED))
        for name, addr in peers.items():
            if name not in old:
                changes.append(ppb.ChangeNotification(name=name, address=addr,
                                                      type=ppb.PEER_ADDED))
            elif old[name] != addr:
                changes.append(ppb.ChangeNotification(name=name, address=addr,
                                                      type=ppb.PEER_UPDATED))
        for q in self._queues:
            for c in changes:
                q.put_nowait(c)

    def subscribe(self) -> asyncio.Queue[ppb.ChangeNotification]:
        q: asyncio.Queue[ppb.ChangeNotification] = asyncio.Queue()
        for name, addr in self.peers.items():
            q.put_nowait(ppb.ChangeNotification(name=name, address=addr, type=ppb.PEER_ADDED))
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

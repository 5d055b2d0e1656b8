"""What the ring holds: decoded datapath events with their endpoints resolved.

A FlowRecord keeps the raw event and references to the (immutable) endpoint
snapshots valid when it was seen; its flow.Flow wire bytes are encoded only when
a reader asks for them, and cached.
"""
from __future__ import annotations

from .datapath.event import FlowEvent
from .endpoint import Endpoint
from .identity import RESERVED, RESERVED_HOST, RESERVED_REMOTE_NODE, RESERVED_WORLD


def reserved_endpoint(identity: int) -> Endpoint:
    ep = Endpoint(name="", namespace="", labels=(), ips=(), identity=identity,
                  identity_labels=RESERVED[identity])
    return ep.with_wire()


HOST = reserved_endpoint(RESERVED_HOST)
WORLD = reserved_endpoint(RESERVED_WORLD)
REMOTE_NODE = reserved_endpoint(RESERVED_REMOTE_NODE)


class FlowRecord:
    __slots__ = ("ev", "time_ns", "src", "dst", "seq", "wire")

    def __init__(self, ev: FlowEvent, time_ns: int, src: Endpoint, dst: Endpoint) -> None:
        self.ev = ev
        self.time_ns = time_ns
        self.src = src
        self.dst = dst
        self.seq = 0
        self.wire: bytes | None = None  # encoded flow.Flow once read


class LostRecord:
    """Events lost before they reached the ring (perf buffer overrun)."""

    __slots__ = ("source", "count", "cpu", "time_ns", "seq")

    def __init__(self, source: int, count: int, cpu: int, time_ns: int) -> None:
        self.source = source
        self.count = count
        self.cpu = cpu
        self.time_ns = time_ns
        self.seq = 0

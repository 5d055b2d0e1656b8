"""What the ring holds: raw datapath events with their endpoints resolved.

A FlowRecord keeps the event's raw perf record bytes (104 bytes, one object, not
tracked by the garbage collector) and references to the (immutable) endpoint
snapshots valid when it was seen. The event is decoded (`ev`) only when a reader
needs it; its flow body (every field of the flow.Flow but uuid, source and
destination, which each read adds: wire_cache.py) is encoded once and kept in `wire`,
and then the raw bytes are dropped. A record read back from the history store has
no endpoints (src None) and keeps the whole flow in `wire`.
"""
from __future__ import annotations

from ..datapath.event import FlowEvent, decode, pack
from ..stores.endpoints import Endpoint
from ..stores.identities import RESERVED, RESERVED_HOST, RESERVED_REMOTE_NODE, RESERVED_WORLD


def reserved_endpoint(identity: int) -> Endpoint:
    ep = Endpoint(name="", namespace="", labels=(), ips=(), identity=identity,
                  identity_labels=RESERVED[identity])
    return ep.with_wire()


HOST = reserved_endpoint(RESERVED_HOST)
WORLD = reserved_endpoint(RESERVED_WORLD)
REMOTE_NODE = reserved_endpoint(RESERVED_REMOTE_NODE)


class FlowRecord:
    __slots__ = ("raw", "time_ns", "src", "dst", "seq", "wire")

    def __init__(self, raw: bytes | FlowEvent, time_ns: int, src: Endpoint,
                 dst: Endpoint) -> None:
        # bytes from the perf buffer; a FlowEvent (tests, benchmarks) is packed.
        if raw.__class__ is not bytes:
            raw = pack(raw)  # type: ignore[arg-type]
        self.raw: bytes | None = raw  # type: ignore[assignment]
        self.time_ns = time_ns
        self.src = src
        self.dst = dst
        self.seq = 0
        self.wire: bytes | None = None  # the encoded flow body once read (see above)

    @property
    def ev(self) -> FlowEvent:
        """The decoded event (decoded on each access: nothing keeps it)."""
        raw = self.raw
        if raw is None:
            raise AttributeError("the raw event was dropped once the flow was encoded")
        return decode(raw)


class L7Record(FlowRecord):
    """An L7 message (pipeline/l7/tracker.py); it has no raw event."""

    __slots__ = ("msg",)

    def __init__(self, msg: object, time_ns: int, src: Endpoint, dst: Endpoint) -> None:
        self.raw = None
        self.time_ns = time_ns
        self.src = src
        self.dst = dst
        self.seq = 0
        self.wire = None
        self.msg = msg  # an L7Message; dropped once encoded


class LostRecord:
    """Events lost before they reached the ring (perf buffer overrun)."""

    __slots__ = ("source", "count", "cpu", "time_ns", "seq")

    def __init__(self, source: int, count: int, cpu: int, time_ns: int) -> None:
        self.source = source
        self.count = count
        self.cpu = cpu
        self.time_ns = time_ns
        self.seq = 0

"""Follows a flow stream (relay or agent) for webb's consumers: UI views, the exporter, the CLI.

One client for all of them:

- **Batches first, GetFlows as fallback.** Each connection asks
  ``webb.stream.FlowStream/GetFlowBatches``; a server without it (a Hubble Relay, a
  Cilium agent: UNIMPLEMENTED) is read with ``observer.Observer/GetFlows`` instead, and
  what arrives one message at a time is handed on in batches all the same.
- **Batches to the consumer.** ``follow()`` yields ``Batch``es: the encoded
  ``GetFlowsResponse`` entries (flows, node status, lost events) in stream order, with
  each entry's time and node beside it; what queued up while the consumer was busy
  comes as one batch. Nothing here decodes a flow; the consumer
  decodes what it needs.
- **Reconnects** with ``webb.backoff`` and **resumes without gap or duplicate**: the
  next request asks ``since`` = newest delivered time minus ``overlap`` (the relay
  may hand out a lagging node's flows after newer ones), and entries inside that
  overlap that were already delivered are skipped. "Already delivered" is decided
  on what identifies an entry exactly (a flow's uuid, found in its encoding without
  decoding it; else the whole encoding), remembered for ``overlap`` of stream time,
  never on the timestamp: two flows of one nanosecond are both delivered once.
  Nothing older than the first request's start (``since_ns``, or the oldest flow of
  the history) is delivered after a reconnect.
- **Bounded memory.** Between the stream and the consumer sit at most
  ``max_pending`` flows. When that is full the reader waits (back-pressure: gRPC's
  flow control holds the server, whose own shedding is reported as lost events);
  if the consumer has not made room after ``shed_after`` seconds the reader drops
  the flows of what arrives (never node status or lost events), counts them and
  hands the consumer a LostEvent (source OBSERVER_EVENTS_QUEUE, node = ``name``)
  in their place. Nothing is dropped silently.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import operator
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.stream import stream_pb2 as spb
from webb.backoff import Backoff
from webb.timeouts import wait_for

log = logging.getLogger(__name__)

GET_FLOWS = "/observer.Observer/GetFlows"
GET_FLOW_BATCHES = "/webb.stream.FlowStream/GetFlowBatches"

# First byte of an encoded GetFlowsResponse: field 1..3 of the oneof, length-delimited.
# upb (webb's agents and relay) writes fields in number order, so the oneof (1-3)
# comes before node_name (1000) and time (1001). protobuf-go (a Cilium agent, a Hubble
# Relay) writes oneofs last: FlowStream re-encodes such answers once, on arrival, so
# every reader of Batch.raw may go by the first byte.
TAG_FLOW = 0x0A
TAG_NODE_STATUS = 0x12
TAG_LOST = 0x1A
_ONEOF_FIRST = (TAG_FLOW, TAG_NODE_STATUS, TAG_LOST)

# Entries the fallback path collects into one batch while the consumer is busy.
FALLBACK_BATCH = 1000


def ts_ns(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def ns_ts(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


_UUID_TAG = b"\x92\x02\x24"  # flow.Flow field 34 (uuid), 36 bytes long
_first_byte = operator.itemgetter(0)


def entry_identity(raw: bytes) -> bytes | int:
    """What tells two encoded entries apart exactly: a flow's uuid (Hubble's identity of
    a flow: a server may encode the same flow differently on two streams, e.g. a relay
    re-encoding what it parsed), else the hash of the whole encoding."""
    # Fields are written in number order: the uuid (34) comes after the endpoints and
    # L7 record, near the end; looking from the end scans less (every entry, per reader).
    i = raw.rfind(_UUID_TAG)
    while i >= 0:
        u = raw[i + 3:i + 39]
        # a UUID's dashes (at 8, 13, 18, 23): a chance byte match inside another field
        # cannot pass this
        if u[8:24:5] == b"----":
            return u
        i = raw.rfind(_UUID_TAG, 0, i)  # a chance match in a later field: look further back
    return hash(raw)


def entry_kind(raw: bytes) -> str:
    """'flow', 'node_status', 'lost_events' or '' for one encoded GetFlowsResponse."""
    if raw:
        b = raw[0]
        if b == TAG_FLOW:
            return "flow"
        if b == TAG_NODE_STATUS:
            return "node_status"
        if b == TAG_LOST:
            return "lost_events"
    return opb.GetFlowsResponse.FromString(raw).WhichOneof("response_types") or ""


class Batch:
    """Entries of the stream in order: ``raw[i]`` (an encoded GetFlowsResponse) happened
    at ``time_ns[i]`` on ``nodes[i]``. ``mark`` is "" for stream data, "history_done"
    for the end of a ``history`` request's answer (no entries)."""

    __slots__ = ("raw", "time_ns", "nodes", "decoded", "mark")

    def __init__(self, raw: list[bytes], time_ns: list[int], nodes: list[str],
                 decoded: list[opb.GetFlowsResponse] | None = None, mark: str = "") -> None:
        self.raw = raw
        self.time_ns = time_ns
        self.nodes = nodes
        self.decoded = decoded  # already parsed (the fallback path parses anyway)
        self.mark = mark

    def __len__(self) -> int:
        return len(self.raw)

    def responses(self) -> list[opb.GetFlowsResponse]:
        """The entries decoded (cached)."""
        if self.decoded is None:
            parse = opb.GetFlowsResponse.FromString
            self.decoded = [parse(r) for r in self.raw]
        return self.decoded


class FlowStream:
    """One request on ``channel``, answered exactly as the server answers it (GetFlows'
    semantics: number, first, follow, since, until, filters, field mask as given): read
    with ``webb.stream.FlowStream/GetFlowBatches``, or with ``observer.Observer/GetFlows``
    when the server lacks the batched stream (UNIMPLEMENTED before any answer: a Hubble
    Relay, a Cilium agent). Errors end the iteration. FlowFollower reads each of its
    requests through this; the CLI uses it alone (one request and no reconnect, as
    ``hubble observe``)."""

    def __init__(self, channel: grpc.aio.Channel,
                 on_fallback: Callable[[], None] | None = None) -> None:
        self.on_fallback = on_fallback
        self.mode = ""  # "batches" or "getflows": what the current request is read with
        self.call: grpc.aio.Call | None = None  # the call in progress (to cancel it)
        self._batches_stub = channel.unary_stream(
            GET_FLOW_BATCHES, request_serializer=opb.GetFlowsRequest.SerializeToString,
            response_deserializer=spb.FlowBatch.FromString)
        # raw bytes: parsed once below, not once by gRPC and again for the batch
        self._flows_stub = channel.unary_stream(
            GET_FLOWS, request_serializer=opb.GetFlowsRequest.SerializeToString,
            response_deserializer=None)

    async def read(self, req: opb.GetFlowsRequest) -> AsyncIterator[Batch]:
        """The answer as Batches. From GetFlows each entry is its own (decoded) Batch.
        Read it inside ``contextlib.aclosing``: leaving early then cancels the call at once."""
        call = None
        try:
            self.mode = "batches"
            call = self.call = self._batches_stub(req)
            received = False
            try:
                async for fb in call:
                    received = True
                    yield batch_of(fb)
                return
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNIMPLEMENTED or received:
                    raise
            # a Hubble server: GetFlows, with the same request
            self.mode = "getflows"
            if self.on_fallback is not None:
                self.on_fallback()
            call = self.call = self._flows_stub(req)
            parse = opb.GetFlowsResponse.FromString
            async for raw in call:
                resp = parse(raw)
                if raw and raw[0] not in _ONEOF_FIRST and resp.WhichOneof("response_types"):
                    raw = resp.SerializeToString()  # oneof last (protobuf-go): number order
                t = ts_ns(resp.time) if resp.HasField("time") else (
                    ts_ns(resp.flow.time) if resp.HasField("flow") else 0)
                yield Batch([raw], [t], [resp.node_name], [resp])
        finally:
            if call is not None:
                call.cancel()  # nothing if it has ended
                if self.call is call:
                    self.call = None


def batch_of(fb: spb.FlowBatch) -> Batch:
    """A received FlowBatch as a Batch (node indexes resolved; short columns padded)."""
    names = list(fb.nodes)
    raw = list(fb.responses)
    times = list(fb.time_ns)
    try:
        nodes = list(map(names.__getitem__, fb.node_index))
    except IndexError:
        nodes = [names[i] if i < len(names) else "" for i in fb.node_index]
    if len(nodes) < len(raw):
        nodes += [""] * (len(raw) - len(nodes))
    if len(times) < len(raw):
        times += [0] * (len(raw) - len(times))
    return Batch(raw, times, nodes)


@dataclass
class FollowStats:
    state: str = "connecting"  # connecting | history | live | retrying | error
    error: str = ""
    mode: str = ""  # "batches" (GetFlowBatches) or "getflows" (fallback)
    connected: bool = False
    connects: int = 0
    reconnects: int = 0
    batches: int = 0      # received from the server
    entries: int = 0      # delivered to the consumer (flows, node status, lost events)
    duplicates: int = 0   # flows skipped: already delivered before a reconnect
    too_old: int = 0      # flows skipped: older than the stream's floor
    shed: int = 0         # flows dropped because the consumer was too slow
    pending: int = 0      # flows waiting for the consumer now
    last_time_ns: int = 0  # newest entry time delivered
    since_ns: int = 0      # `since` of the current request
    connected_at: float = 0.0


class _Delivered:
    """Identities of the entries delivered in the last ``window_ns`` of stream time,
    per batch; after a reconnect, entries up to the old newest time are checked against them."""

    def __init__(self, window_ns: int, max_entries: int = 300_000) -> None:
        self.window_ns = window_ns
        self.max_entries = max_entries
        self.entries = 0
        self.high_ns = 0
        self._recent: collections.deque[tuple[int, set[bytes | int]]] = collections.deque()
        self.check_until = -1
        self._replay: set[bytes | int] = set()

    def record(self, hi: int, hashes: set[bytes | int]) -> None:
        recent = self._recent
        recent.append((hi, hashes))
        self.entries += len(hashes)
        if hi > self.high_ns:
            self.high_ns = hi
        horizon = self.high_ns - self.window_ns
        # bounded also when stream time stands still or more than max_entries fall in the
        # window (then the oldest are forgotten: a reconnect could repeat those)
        while recent and (recent[0][0] < horizon or self.entries > self.max_entries):
            self.entries -= len(recent.popleft()[1])

    def start_replay(self) -> None:
        """A new stream starts: what it repeats of ours must be recognised."""
        self.check_until = self.high_ns
        replay: set[bytes | int] = set()
        for _, hs in self._recent:
            replay |= hs
        self._replay = replay

    def seen(self, h: bytes | int) -> bool:
        return h in self._replay


class FlowFollower:
    """Follows ``request`` (filters, field mask...; its number/since/follow are set here)
    on ``channel`` for as long as the ``follow()`` iterator is read."""

    def __init__(self, channel: grpc.aio.Channel, request: opb.GetFlowsRequest | None = None, *,
                 since_ns: int | None = None, history: int = 0, overlap_s: float = 2.0,
                 max_pending: int = 100_000, shed_after_s: float = 1.0,
                 backoff: Backoff | None = None, name: str = "webb", target: str = "",
                 connect_warn_s: float = 3.0,
                 on_state: Callable[[FollowStats], None] | None = None) -> None:
        """``since_ns``: start following there (default: now). ``history``: first read the
        newest ``history`` flows (no follow), mark their end, then follow from them."""
        self.channel = channel
        self.base = opb.GetFlowsRequest()
        if request is not None:
            self.base.CopyFrom(request)
        for f in ("number", "first", "follow", "since", "until"):
            self.base.ClearField(f)
        self.history = history
        self.floor_ns = time.time_ns() if since_ns is None else since_ns
        self.overlap_ns = int(overlap_s * 1e9)
        self.max_pending = max_pending
        self.shed_after_s = shed_after_s
        self.backoff = backoff or Backoff(0.2, 5.0)
        self.name = name
        self.target = target or "the server"
        self.connect_warn_s = connect_warn_s
        self.on_state = on_state
        self.stats = FollowStats()
        self._delivered = _Delivered(self.overlap_ns)
        self._queue: collections.deque[Batch] = collections.deque()
        self._has_items = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._unreported_shed = 0
        self._shed_first = 0
        self._restarting = False
        self._oldest_history_ns = 0
        self._reader = FlowStream(channel, on_fallback=self._fallback)

    # -- consumer side ----------------------------------------------------------------
    async def follow(self) -> AsyncIterator[Batch]:
        """Batches for as long as it is iterated; reconnects by itself."""
        reader = asyncio.create_task(self._read(), name=f"follow {self.name}")
        try:
            while True:
                if not self._queue:
                    if self._unreported_shed:
                        self._queue.append(self._shed_notice())
                        continue
                    if reader.done():
                        reader.result()  # only a bug ends it: let it be seen
                        return
                    self._has_items.clear()
                    waiter = asyncio.ensure_future(self._has_items.wait())
                    await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    continue
                batch = self._take()
                self.stats.pending -= len(batch.raw)
                if self.stats.pending < self.max_pending:
                    self._has_room.set()
                self.stats.entries += len(batch.raw)
                yield batch
                # let the reader (and the rest of the service) run between batches: a busy
                # consumer then meets a full queue and sheds instead of stalling everything
                await asyncio.sleep(0)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    def _take(self) -> Batch:
        """The next batch, with the stream batches queued behind it joined on: a consumer
        that fell behind takes what waits in one step, however small the server's batches
        were (its time goes into flows, not into batches). A mark stays a batch of its own."""
        q = self._queue
        first = q.popleft()
        if first.mark or not q or q[0].mark:
            return first
        parts = [first]
        while q and not q[0].mark:
            parts.append(q.popleft())
        raw: list[bytes] = []
        times: list[int] = []
        nodes: list[str] = []
        decoded: list[opb.GetFlowsResponse] | None = []
        for b in parts:
            raw += b.raw
            times += b.time_ns
            nodes += b.nodes
            if decoded is not None:
                if b.decoded is None:
                    decoded = None
                else:
                    decoded += b.decoded
        return Batch(raw, times, nodes, decoded)

    def restart(self) -> None:
        """Drop the current stream and reconnect now (e.g. the server stopped answering)."""
        if self._reader.call is not None:
            self._restarting = True
            self._reader.call.cancel()
        self.backoff.wake()

    # -- reader side ---------------------------------------------------------------------
    def _set_state(self, state: str, error: str = "") -> None:
        s = self.stats
        if (s.state, s.error) != (state, error):
            s.state, s.error = state, error
            if self.on_state is not None:
                self.on_state(s)

    def _request(self, history: bool) -> opb.GetFlowsRequest:
        req = opb.GetFlowsRequest()
        req.CopyFrom(self.base)
        d = self._delivered
        d.start_replay()  # whatever this stream repeats of ours is recognised
        if history:
            req.number = self.history
            return req
        since = max(self.floor_ns, d.high_ns - self.overlap_ns) if d.high_ns else self.floor_ns
        self.floor_ns = since
        self.stats.since_ns = since
        req.follow = True
        req.since.CopyFrom(ns_ts(since))
        return req

    async def _read(self) -> None:
        history_left = self.history > 0
        if history_left:
            # the history decides where following starts (its oldest flow); nothing
            # of it is too old
            start, self.floor_ns = self.floor_ns, 0
        while True:
            try:
                await self._wait_ready()
                await self._stream(history_left)
                if history_left:
                    history_left = False
                    self.floor_ns = self._oldest_history_ns or start - self.overlap_ns
                    self._put_mark("history_done")
                    continue
                self._set_state("retrying", "the server closed the stream")
            except asyncio.CancelledError:
                task = asyncio.current_task()
                # restart() cancelled the call; a cancellation of this task itself goes on
                if not self._restarting or (task is not None and task.cancelling()):
                    raise
                self._set_state("retrying", "the server stopped answering")
            except grpc.aio.AioRpcError as e:
                text = f"{e.code().name}: {e.details()}"
                if self._restarting:
                    text = "the server stopped answering"
                permanent = e.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                         grpc.StatusCode.UNIMPLEMENTED)
                if self.stats.connected or text != self.stats.error:
                    log.warning("%s: flows from %s: %s; retrying", self.name, self.target, text)
                self._set_state("error" if permanent else "retrying", text)
                if permanent:
                    self.backoff.attempt = max(self.backoff.attempt, 8)
            finally:
                self._restarting = False
                self.stats.connected = False
            await self.backoff.sleep()

    async def _wait_ready(self) -> None:
        """Waits until the channel connects (gRPC keeps trying); says so meanwhile."""
        warned = False
        while True:
            try:
                await wait_for(self.channel.channel_ready(), self.connect_warn_s)
                return
            except asyncio.TimeoutError:
                self._set_state("retrying" if self.stats.connects else "connecting",
                                f"cannot connect to {self.target}")
                if not warned:
                    log.warning("%s: cannot connect to %s yet; still trying", self.name, self.target)
                    warned = True

    async def _stream(self, history: bool) -> None:
        req = self._request(history)
        self._connected(history, "batches")
        async with contextlib.aclosing(self._reader.read(req)) as batches:
            async for batch in batches:
                self.stats.batches += 1
                if batch.decoded is None:
                    await self._put_batch(batch, history)
                else:
                    await self._put_one(batch, history)

    def _fallback(self) -> None:
        if self.stats.mode == "batches":
            log.info("%s: %s has no batched stream; reading GetFlows", self.name, self.target)
        self.stats.mode = "getflows"

    def _connected(self, history: bool, mode: str) -> None:
        s = self.stats
        s.connected = True
        s.mode = mode
        s.connects += 1
        if s.connects > 1:
            s.reconnects += 1
        s.connected_at = time.time()
        self.backoff.reset()
        self._set_state("history" if history else "live")
        log.info("%s: reading flows from %s", self.name, self.target)

    # -- admission: floor, duplicates, room ---------------------------------------------
    def _admit(self, raw: list[bytes], times: list[int], nodes: list[str],
               decoded: list[opb.GetFlowsResponse] | None) -> Batch | None:
        d = self._delivered
        if not raw:
            return None
        try:
            firsts = bytes(map(_first_byte, raw))
        except IndexError:  # an empty entry
            firsts = bytes(r[0] if r else 0 for r in raw)
        status = [i for i, r in enumerate(raw) if r[:1] == b"\x12"] if TAG_NODE_STATUS in firsts else None
        if status:
            # node status is stamped when sent, not when flows happened: it says nothing
            # about how far the flows have come (and is never too old or a duplicate)
            skip = set(status)
            rest = [t for i, t in enumerate(times) if i not in skip]
            if rest:
                lo, hi = min(rest), max(rest)
            else:
                lo, hi = max(self.floor_ns, d.check_until + 1), 0
        else:
            lo, hi = min(times), max(times)
        hashes = set(map(entry_identity, raw))
        if lo >= self.floor_ns and lo > d.check_until:
            # the common case: all new (no per-entry Python work). The replay set stays
            # until the next reconnect: a node's flows may still come late (and a node
            # status, stamped now, may come first).
            d.record(hi, hashes)
            batch = Batch(raw, times, nodes, decoded)
        else:
            floor, until = self.floor_ns, d.check_until
            keep: list[int] = []
            for i, r in enumerate(raw):
                t = times[i]
                if r[:1] == b"\x12" or not t:  # node status: always, whenever
                    keep.append(i)
                elif t < floor:
                    if r[:1] == b"\n":
                        self.stats.too_old += 1
                elif t <= until and d.seen(entry_identity(r)):
                    if r[:1] == b"\n":
                        self.stats.duplicates += 1
                else:
                    keep.append(i)
            d.record(hi, hashes)
            if not keep:
                return None
            if len(keep) < len(raw):
                raw = [raw[i] for i in keep]
                times = [times[i] for i in keep]
                nodes = [nodes[i] for i in keep]
                if decoded is not None:
                    decoded = [decoded[i] for i in keep]
            batch = Batch(raw, times, nodes, decoded)
        if hi > self.stats.last_time_ns:
            self.stats.last_time_ns = hi
        return batch

    async def _put_batch(self, received: Batch, history: bool) -> None:
        batch = self._admit(received.raw, received.time_ns, received.nodes, None)
        if batch is not None:
            if history:
                self._note_history(batch)
            await self._enqueue(batch)

    async def _put_one(self, received: Batch, history: bool) -> None:
        """One entry read from GetFlows: joins the batch the consumer has not taken yet."""
        batch = self._admit(received.raw, received.time_ns, received.nodes, received.decoded)
        if batch is None:
            return
        if history:
            self._note_history(batch)
        q = self._queue
        last = q[-1] if q else None
        if last is not None and not last.mark and last.decoded is not None \
                and len(last.raw) < FALLBACK_BATCH and self.stats.pending < self.max_pending:
            # the consumer is busy: add to the batch it has not taken yet
            last.raw.append(batch.raw[0])
            last.time_ns.append(batch.time_ns[0])
            last.nodes.append(batch.nodes[0])
            last.decoded.append(batch.decoded[0])  # type: ignore[index]
            self.stats.pending += 1
            return
        await self._enqueue(batch)

    def _note_history(self, batch: Batch) -> None:
        for r, t in zip(batch.raw, batch.time_ns):
            if t and r[:1] == b"\n" and (not self._oldest_history_ns or t < self._oldest_history_ns):
                self._oldest_history_ns = t

    async def _enqueue(self, batch: Batch) -> None:
        if self.stats.pending >= self.max_pending:
            if self._unreported_shed:
                self._shed(batch)  # still stuck: keep shedding (it is told when it catches up)
            else:
                self._has_room.clear()
                try:
                    # back-pressure: the server waits for us meanwhile
                    await wait_for(self._has_room.wait(), self.shed_after_s)
                except asyncio.TimeoutError:
                    self._shed(batch)
            if not batch.raw:
                return
        if self._unreported_shed:
            self._queue.append(self._shed_notice())
        self.stats.pending += len(batch.raw)
        self._queue.append(batch)
        self._has_items.set()

    def _shed(self, batch: Batch) -> None:
        """Drops the batch's flows (keeps node status and lost events) and counts them."""
        keep = [i for i, r in enumerate(batch.raw) if r[:1] != b"\n"]
        n = len(batch.raw) - len(keep)
        if n:
            if not self._unreported_shed:
                self._shed_first = time.time_ns()
                log.info("%s: consumer too slow: dropping flows", self.name)
            self._unreported_shed += n
            self.stats.shed += n
        batch.raw = [batch.raw[i] for i in keep]
        batch.time_ns = [batch.time_ns[i] for i in keep]
        batch.nodes = [batch.nodes[i] for i in keep]
        if batch.decoded is not None:
            batch.decoded = [batch.decoded[i] for i in keep]

    def _shed_notice(self) -> Batch:
        now = time.time_ns()
        lost = fpb.LostEvent(source=fpb.OBSERVER_EVENTS_QUEUE, num_events_lost=self._unreported_shed,
                             first=ns_ts(self._shed_first), last=ns_ts(now))
        resp = opb.GetFlowsResponse(lost_events=lost, node_name=self.name, time=ns_ts(now))
        self._unreported_shed = 0
        self.stats.pending += 1
        return Batch([resp.SerializeToString()], [now], [self.name], [resp])

    def _put_mark(self, mark: str) -> None:
        self._queue.append(Batch([], [], [], [], mark=mark))
        self._has_items.set()

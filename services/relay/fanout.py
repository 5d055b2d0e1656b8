"""GetFlows across the cluster: one request fanned out to every connected agent,
the answers merged in time order.

The stream starts with NodeStatusEvents: NODE_CONNECTED for the nodes asked,
NODE_UNAVAILABLE for the known ones that are not reachable. A node whose
stream fails produces NODE_ERROR (equal messages coalesced) and the request
goes on with the others. With follow, nodes that appear, come back or go away
join or leave the open stream (NODE_CONNECTED / NODE_GONE); a node that joins
late or rejoins is asked for its flows since the request started, or since the
last flow it sent, so nothing it recorded in the meantime is lost. A node that
rejoins was first reported lost, whatever the timing: its stream's error (or,
when the pool replaced its connection before the old stream failed, "connection
replaced"; when a follow stream ended without error, "the node ended the
stream") goes out as NODE_ERROR before its NODE_CONNECTED, even when it comes
back within the error aggregation window (an agent restarted in place: a
DaemonSet's new pod starts while the old one is still terminating).
An agent's INVALID_ARGUMENT ends the request with INVALID_ARGUMENT.

Each agent is asked for webb's batched stream (upstream.py falls back to
GetFlows per agent); the session yields runs of entries (entries.Columns:
serialized responses with their times and nodes), which observer.py sends either
one per message (GetFlows) or in batches (GetFlowBatches). No flow is decoded.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from webb.api.observer import observer_pb2 as opb
from webb.api.relay import relay_pb2 as rpb
from webb.backoff import delay as backoff

from .entries import Columns
from .merge_queue import MergeQueue
from .node_status import ErrorCoalescer, error_message, status_event
from .number import Selection, ts_ns
from .pool import Peer, PeerPool
from .upstream import Upstream

log = logging.getLogger(__name__)

S = 1_000_000_000


@dataclass
class FlowsOptions:
    sort_buffer_len: int = 100  # Hubble's SortBufferMaxLen
    sort_window: float = 1.0  # Hubble's SortBufferDrainTimeout
    error_window: float = 10.0  # Hubble's ErrorAggregationWindow
    queue_size: int = 4096  # entries buffered per agent per request (plus one batch)
    lag_timeout: float = 1.0  # a live stream's queue may stay full this long before dropping
    rejoin_min: float = 1.0
    rejoin_max: float = 10.0
    relay_name: str = "webb-relay"


class UpstreamInvalidArgument(Exception):
    """An agent rejected the request as invalid."""


class ConnectionReplaced(Exception):
    """The pool replaced the node's connection (a new address) under an open stream."""


class StreamEnded(Exception):
    """A follow stream without `until` that the node ended without an error."""


@dataclass
class _Retired:
    last_time_ns: int | None
    attempts: int
    next_attempt: int  # monotonic ns


class FlowsSession:
    def __init__(self, pool: PeerPool, req: opb.GetFlowsRequest, opts: FlowsOptions) -> None:
        self.pool = pool
        self.req = req
        self.opts = opts
        self.follow = req.follow
        self.t0 = time.time_ns()
        self.since = ts_ns(req.since) if req.HasField("since") else None
        self.until = ts_ns(req.until) if req.HasField("until") else None
        now = time.monotonic_ns()
        self.merge = MergeQueue(opts.sort_buffer_len, int(opts.sort_window * S),
                                follow=req.follow)
        self.selection = Selection(req.number, req.first, req.follow, self.t0,
                                   int(opts.sort_window * S), now)
        self.errors = ErrorCoalescer(int(opts.error_window * S), opts.relay_name)
        self._wake = asyncio.Event()
        self._upstreams: list[Upstream] = []  # every stream not yet merged to the end
        self._active: dict[str, Upstream] = {}  # peer key -> its current stream
        self._retired: dict[str, _Retired] = {}  # peer key -> why/when to ask again
        self._pool_version = -1
        self._next_sync: int | None = None  # when a retired node may be asked again
        # monotonic s when the write to the client in progress began (the frontend
        # sets it around each write), None between writes
        self.write_started: float | None = None
        self.stats = {"dropped": 0}

    # -- upstreams ----------------------------------------------------------------
    def _start(self, p: Peer, join_since: int | None) -> Upstream:
        up = Upstream(p.key, p.name, p.generation, self.opts.queue_size, self.follow,
                      self.opts.lag_timeout, self._wake.set, self._client_stalled)
        req = self.req
        if join_since is not None:
            req = opb.GetFlowsRequest()
            req.CopyFrom(self.req)
            req.number = 0
            req.first = False
            since = max(join_since, self.since or 0)
            req.since.FromNanoseconds(since)
        flows, batches = p.get_flows, p.get_flow_batches
        up.start((lambda: batches(req)) if p.flow_batches else None, lambda: flows(req),
                 p.lacks_flow_batches)
        self._upstreams.append(up)
        self._active[p.key] = up
        return up

    def _sync_peers(self, now: int) -> list[opb.GetFlowsResponse]:
        """Follow: starts streams for nodes that (re)appeared, stops removed ones.

        A node's stream that is stopped (its node gone, or its connection replaced)
        stays in `_upstreams` until its last entries are merged; what the relay says
        of it (its error, NODE_GONE) goes out then, and the node is not asked again
        before that, so its statuses reach the client in the order they happened:
        the old stream's error, then NODE_CONNECTED for the new one."""
        self._pool_version = self.pool.version
        peers = {p.key: p for p in self.pool.list()}
        joined: list[str] = []
        for key, up in list(self._active.items()):
            p = peers.get(key)
            if p is None or p.generation != up.generation:
                del self._active[key]
                if p is None:
                    up.gone = True
                    up.cancel()
                    self._retired.pop(key, None)
                    continue
                # a new connection to the same node: continue where it stopped
                reached_until = up.finished and up.error is None and self.until is not None
                self._retired[key] = _Retired(up.last_time_ns, 0,
                                              2**63 if reached_until else now)
                if up.error is None and not reached_until:
                    # the old agent may be gone without its stream having said so
                    # yet: the client learns that the stream was cut either way
                    up.error = (StreamEnded("the node ended the stream") if up.finished
                                else ConnectionReplaced(
                                    f"connection to the node replaced (now {p.address})"))
                up.cancel()
        stopping = {up.key for up in self._upstreams if self._active.get(up.key) is not up}
        for key, p in peers.items():
            if key in self._active or key in stopping or not p.connected:
                continue
            r = self._retired.get(key)
            if r is not None and now < r.next_attempt:
                continue
            since = self.t0
            if r is not None and r.last_time_ns is not None:
                since = max(since, r.last_time_ns + 1)
            self._start(p, since)
            joined.append(p.name)
        waits = [r.next_attempt for k, r in self._retired.items()
                 if k not in self._active and r.next_attempt > now]
        self._next_sync = min(waits) if waits else None
        if not joined:
            return []
        return self.errors.flush_for(joined) + [
            status_event(rpb.NODE_CONNECTED, joined, self.opts.relay_name)]

    def _collect(self, now: int) -> list[opb.GetFlowsResponse]:
        """Handles streams that ended and were merged to their end."""
        out: list[opb.GetFlowsResponse] = []
        gone: list[str] = []
        for up in [u for u in self._upstreams if u.finished and not len(u)]:
            self._upstreams.remove(up)
            self.stats["dropped"] += up.dropped_total
            if self._active.get(up.key) is up:
                del self._active[up.key]
                self._ended(up, now)
                if up.error is None and self.follow and self.until is None:
                    up.error = StreamEnded("the node ended the stream")
            else:  # stopped by _sync_peers: its node may be asked again now
                self._next_sync = now
            out.extend(self._errors_of(up, now))
            if up.gone and up.name not in gone:
                gone.append(up.name)
        if gone:
            out.extend(self.errors.flush_for(gone))
            out.append(status_event(rpb.NODE_GONE, gone, self.opts.relay_name))
        return out

    def _ended(self, up: Upstream, now: int) -> None:
        prev = self._retired.get(up.key)
        attempts = 0 if up.received else (prev.attempts + 1 if prev else 1)
        last = up.last_time_ns
        if last is None and prev is not None:
            last = prev.last_time_ns
        if up.error is None and self.until is not None:
            nxt = 2**63  # it reached `until`: nothing more to ask for
        else:
            nxt = now + int(backoff(attempts, self.opts.rejoin_min, self.opts.rejoin_max) * S)
        self._retired[up.key] = _Retired(last, attempts, nxt)
        if self._next_sync is None or nxt < self._next_sync:
            self._next_sync = nxt

    def _errors_of(self, up: Upstream, now: int) -> list[opb.GetFlowsResponse]:
        err = up.error
        if err is None:
            return []
        if isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise UpstreamInvalidArgument(err.details() or "invalid argument")
        log.warning("node %s: GetFlows failed: %s", up.name, error_message(err))
        return self.errors.add(up.name, error_message(err), now)

    def _client_stalled(self) -> bool:
        """Whether the current write to the client has been blocked for the lag timeout."""
        w = self.write_started
        return w is not None and time.monotonic() - w >= self.opts.lag_timeout

    # -- the stream ---------------------------------------------------------------
    def _deadline(self, now: int) -> float | None:
        ds = [d for d in (self.merge.next_deadline(self._upstreams), self.errors.deadline(),
                          self.selection.settle_deadline()) if d is not None]
        if self.follow:
            if self._next_sync is not None and self._next_sync < 2**62:
                ds.append(self._next_sync)
            if self.until is not None:
                ds.append(now + max(0, self.until + int(self.opts.sort_window * S) - time.time_ns()))
        if not ds:
            return None
        return max(0.0, (min(ds) - now) / S) + 0.001

    def _idle(self) -> bool:
        return all(not len(up) for up in self._upstreams)

    def _finished(self) -> bool:
        if self.selection.done:
            return True
        if not self.follow:
            return not self._upstreams
        if self.until is not None:
            past = time.time_ns() > self.until + int(self.opts.sort_window * S)
            return past or (time.time_ns() > self.until and not self._upstreams)
        return False

    async def run(self) -> AsyncIterator[Columns]:
        """Runs of entries for the client, oldest first."""
        peers = self.pool.list()
        self._pool_version = self.pool.version
        connected = [p for p in peers if p.connected]
        unavailable = [p.name for p in peers if not p.connected]
        if self.follow:
            self.pool.watch(self._wake)
        try:
            for p in connected:
                self._start(p, None)
            # the client learns first which nodes it will hear from (as Hubble)
            first: list[opb.GetFlowsResponse] = []
            if connected:
                first.append(status_event(rpb.NODE_CONNECTED, [p.name for p in connected],
                                          self.opts.relay_name))
            if unavailable:
                first.append(status_event(rpb.NODE_UNAVAILABLE, unavailable,
                                          self.opts.relay_name))
            if first:
                yield self._messages(first)
            async for run in self._loop():
                yield run
        finally:
            self.pool.unwatch(self._wake)
            dropped = self.stats["dropped"] + sum(up.dropped_total for up in self._upstreams)
            if dropped:
                log.info("GetFlows ended; %d responses were dropped for this slow client", dropped)
            for up in self._upstreams:
                up.cancel()
            tasks = [up.task for up in self._upstreams if up.task is not None]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    def _messages(self, msgs: list[opb.GetFlowsResponse]) -> Columns:
        """The relay's own responses (node status) as entries."""
        name = self.opts.relay_name
        c = Columns()
        for m in msgs:
            c.append(ts_ns(m.time), m.SerializeToString(), name)
        return c

    async def _loop(self) -> AsyncIterator[Columns]:
        merge, selection = self.merge, self.selection
        while True:
            self._wake.clear()
            now = time.monotonic_ns()
            status: list[opb.GetFlowsResponse] = []
            if self.follow and (self._pool_version != self.pool.version
                                or (self._next_sync is not None and now >= self._next_sync)):
                status.extend(self._sync_peers(now))
            released = merge.release(self._upstreams, now)
            out = Columns()
            if status:
                out.extend(self._messages(status))
            if len(released):
                out.extend(selection.offer(released, now))
            ended = self._collect(now)  # after the release: a drained stream's errors follow its flows
            ended.extend(self.errors.due(now))
            if ended:
                out.extend(self._messages(ended))
            if self.follow:
                out.extend(selection.tick(now, self._idle()))
            finished = self._finished()
            if finished:
                if not selection.done:
                    out.extend(selection.offer(merge.drain(self._upstreams), now))
                    out.extend(selection.finish())
                out.extend(self._messages(self.errors.flush()))
            if len(out):
                yield out
            if finished:
                return
            if len(out) or len(released) or ended:  # a release may have made room for more
                continue
            timeout = self._deadline(now)
            if timeout is None:
                await self._wake.wait()
            else:  # a timer handle is much cheaper than wait_for's task
                timer = asyncio.get_running_loop().call_later(timeout, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()

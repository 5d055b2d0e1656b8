"""`number` across the cluster: the N oldest (`first`) or newest flows of all nodes.

Every agent is asked for its own N; the merged stream (oldest first) then holds
the cluster's answer:

- `first`: the first N flows of the merged stream; then the request is done.
- last N without follow: the last N flows of the merged stream, kept in a
  window of N and sent when every agent has finished.
- last N with follow: the agents' histories are the flows up to the request's
  start time t0; the newest N of those go out once history is complete (a flow
  newer than t0 came out of the merge, every agent finished, or nothing came for
  a settle time), then everything newer streams as it comes.

Only flows count; lost events and node status pass through as they come.
"""
from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from webb.api.observer import observer_pb2 as opb

from .entries import FLOW_BYTE, Columns


def ts_ns(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def response_time_ns(resp: opb.GetFlowsResponse, default: int) -> int:
    """The time a response sorts by: its own time, else its flow's, else `default`
    (e.g. the arrival time, for a flow whose field mask left the time out)."""
    t = resp.time
    if t.seconds or t.nanos:
        return t.seconds * 1_000_000_000 + t.nanos
    if resp.HasField("flow"):
        t = resp.flow.time
        if t.seconds or t.nanos:
            return t.seconds * 1_000_000_000 + t.nanos
    return default


class Selection:
    """Applies `number`/`first` to the merged stream (oldest first), on columns."""

    def __init__(self, number: int, first: bool, follow: bool, t0_ns: int,
                 settle_ns: int, now_ns: int) -> None:
        self.number = number
        self.first = first
        self.follow = follow
        self.t0_ns = t0_ns
        self.settle_ns = settle_ns
        self.done = False  # `first` satisfied: stop the request
        self._sent = 0
        # last N: the newest N flows so far (trimmed to N when it holds 2N)
        self._last: Columns | None = None
        self._cap = 0
        if number and not first:
            self._last = Columns()
            # `--all` asks for 2^64-1; what agents return is bounded by their rings.
            self._cap = min(number, 1 << 31)
        self._history_open = self._last is not None and follow
        self._last_history = now_ns  # monotonic time of the last history flow (or start)

    def offer(self, c: Columns, now_ns: int) -> Columns:
        if self.done or not len(c):
            return Columns()
        if self.first and self.number:
            need = self.number - self._sent
            raws = c.raws
            for i, r in enumerate(raws):
                if r[0] == FLOW_BYTE:
                    need -= 1
                    if not need:
                        self.done = True
                        return Columns(c.times[:i + 1], raws[:i + 1], c.nodes[:i + 1])
            self._sent = self.number - need
            return c
        if self._last is None:
            return c
        if not self.follow:
            return self._hold(c, len(c))
        if self._history_open:
            t0 = self.t0_ns
            times, raws = c.times, c.raws
            for j in range(len(raws)):
                if raws[j][0] == FLOW_BYTE and times[j] > t0:
                    break
            else:
                self._last_history = now_ns
                return self._hold(c, len(raws))
            out = self._hold(c, j)
            out.extend(self._flush())
            out.extend(Columns(times[j:], raws[j:], c.nodes[j:]))
            return out
        return c

    def _hold(self, c: Columns, end: int) -> Columns:
        """Keeps the flows among c's first `end` entries; returns the others."""
        last = self._last
        assert last is not None
        out = Columns()
        times, raws, nodes = c.times, c.raws, c.nodes
        for i in range(end):
            r = raws[i]
            if r[0] == FLOW_BYTE:
                last.append(times[i], r, nodes[i])
            else:
                out.append(times[i], r, nodes[i])
        if len(last) >= 2 * self._cap:
            self._trim()
        return out

    def _trim(self) -> None:
        last = self._last
        assert last is not None
        k = len(last) - self._cap
        if k > 0:
            del last.times[:k], last.raws[:k], last.nodes[:k]

    def _flush(self) -> Columns:
        self._history_open = False
        self._trim()
        out, self._last = self._last, Columns()
        assert out is not None
        return out

    def settle_deadline(self) -> int | None:
        if not self._history_open:
            return None
        return self._last_history + self.settle_ns

    def tick(self, now_ns: int, idle: bool) -> Columns:
        """Follow + last N: ends the history phase once nothing is pending
        (`idle`) and no history flow came for the settle time."""
        if self._history_open and idle and now_ns >= self._last_history + self.settle_ns:
            return self._flush()
        return Columns()

    def finish(self) -> Columns:
        """End of the stream: what is still held goes out."""
        if self._last is None or self.done:
            return Columns()
        self._history_open = False
        return self._flush()

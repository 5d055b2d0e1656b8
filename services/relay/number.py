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

from collections import deque

from google.protobuf.timestamp_pb2 import Timestamp

from webb.api.observer import observer_pb2 as opb


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
    """Applies `number`/`first` to the merged stream (oldest first)."""

    def __init__(self, number: int, first: bool, follow: bool, t0_ns: int,
                 settle_ns: int, now_ns: int) -> None:
        self.number = number
        self.first = first
        self.follow = follow
        self.t0_ns = t0_ns
        self.settle_ns = settle_ns
        self.done = False  # `first` satisfied: stop the request
        self._sent = 0
        self._last: deque[opb.GetFlowsResponse] | None = None
        if number and not first:
            # `--all` asks for 2^64-1; what agents return is bounded by their rings.
            self._last = deque(maxlen=min(number, 1 << 31))
        self._history_open = self._last is not None and follow
        self._last_history = now_ns  # monotonic time of the last history flow (or start)

    def offer(self, resp: opb.GetFlowsResponse, now_ns: int) -> list[opb.GetFlowsResponse]:
        if self.done:
            return []
        if not resp.HasField("flow"):
            return [resp]
        if self.first and self.number:
            self._sent += 1
            if self._sent >= self.number:
                self.done = True
            return [resp]
        if self._last is None:
            return [resp]
        if not self.follow:
            self._last.append(resp)
            return []
        if self._history_open:
            if response_time_ns(resp, 0) <= self.t0_ns:
                self._last.append(resp)
                self._last_history = now_ns
                return []
            return self._flush() + [resp]
        return [resp]

    def _flush(self) -> list[opb.GetFlowsResponse]:
        self._history_open = False
        assert self._last is not None
        out = list(self._last)
        self._last.clear()
        return out

    def settle_deadline(self) -> int | None:
        if not self._history_open:
            return None
        return self._last_history + self.settle_ns

    def tick(self, now_ns: int, idle: bool) -> list[opb.GetFlowsResponse]:
        """Follow + last N: ends the history phase once nothing is pending
        (`idle`) and no history flow came for the settle time."""
        if self._history_open and idle and now_ns >= self._last_history + self.settle_ns:
            return self._flush()
        return []

    def finish(self) -> list[opb.GetFlowsResponse]:
        """End of the stream: what is still held goes out."""
        if self._last is None or self.done:
            return []
        self._history_open = False
        return self._flush()

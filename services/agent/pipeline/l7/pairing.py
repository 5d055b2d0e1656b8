"""Request/response pairing for latency_ns, with bounded state.

HTTP/1.x answers requests in order on a connection (keep-alive and
pipelining alike), so per connection a FIFO of pending requests suffices.
DNS is paired by (client addr, client port, server addr, query id).

Every table is bounded per key and in total; the oldest state is evicted
first and counted, because losing a pairing only costs a latency figure while
unbounded state would cost the agent's memory. Timestamps are the kernel's
(ns); latency is never negative.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Generic, Hashable, NamedTuple, TypeVar

__all__ = ["Paired", "HTTPPairer", "DNSPairer"]

T = TypeVar("T")

# Connection key in the *request* direction: (client ip, client port, server ip,
# server port). Callers swap source/destination for responses.
ConnKey = Hashable


class Paired(NamedTuple, Generic[T]):  # one per answer: a frozen dataclass costs 1 us
    request: T
    latency_ns: int


class HTTPPairer(Generic[T]):
    def __init__(self, max_pending_per_conn: int = 64, max_conns: int = 65536,
                 idle_timeout_ns: int = 60 * 10**9) -> None:
        self.max_pending = max_pending_per_conn
        self.max_conns = max_conns
        self.idle_timeout_ns = idle_timeout_ns
        self._conns: OrderedDict[ConnKey, deque[tuple[int, T]]] = OrderedDict()
        self._seen: dict[ConnKey, int] = {}
        self.evicted = 0          # requests dropped unpaired (bounds, idle, close)
        self.unmatched = 0        # responses with no pending request

    def request(self, conn: ConnKey, req: T, ts_ns: int) -> None:
        q = self._conns.get(conn)
        if q is None:
            if len(self._conns) >= self.max_conns:
                self._evict_conn(next(iter(self._conns)))
            q = self._conns[conn] = deque()
        else:
            self._conns.move_to_end(conn)        # LRU order: recently active last
        if len(q) >= self.max_pending:
            q.popleft()
            self.evicted += 1
        q.append((ts_ns, req))
        self._seen[conn] = ts_ns

    def response(self, conn: ConnKey, ts_ns: int, *, informational: bool = False) -> Paired[T] | None:
        """The request this response answers, oldest first; None if none is pending.

        A 1xx response (``informational``) precedes the final one for the same
        request, so it reports the pairing without consuming it.
        """
        q = self._conns.get(conn)
        if not q:
            self.unmatched += 1
            return None
        t0, req = q[0] if informational else q.popleft()
        if not q:
            self._drop(conn)
        else:
            self._seen[conn] = ts_ns
        return Paired(req, max(0, ts_ns - t0))

    def has_pending(self, conn: ConnKey) -> bool:
        return bool(self._conns.get(conn))

    def close(self, conn: ConnKey) -> None:
        """Connection ended (FIN/RST): its pending requests will get no answer."""
        if conn in self._conns:
            self._evict_conn(conn)

    def expire(self, now_ns: int) -> None:
        """Drop connections idle longer than the timeout (call periodically)."""
        for conn in [c for c, t in self._seen.items() if now_ns - t > self.idle_timeout_ns]:
            self._evict_conn(conn)

    def pending(self) -> int:
        return sum(len(q) for q in self._conns.values())

    def _evict_conn(self, conn: ConnKey) -> None:
        self.evicted += len(self._conns.get(conn, ()))
        self._drop(conn)

    def _drop(self, conn: ConnKey) -> None:
        self._conns.pop(conn, None)
        self._seen.pop(conn, None)


class DNSPairer(Generic[T]):
    def __init__(self, max_pending: int = 65536, timeout_ns: int = 30 * 10**9) -> None:
        self.max_pending = max_pending
        self.timeout_ns = timeout_ns
        self._pending: OrderedDict[Hashable, tuple[int, T]] = OrderedDict()
        self.evicted = 0
        self.unmatched = 0

    @staticmethod
    def key(client_ip: str, client_port: int, server_ip: str, query_id: int) -> tuple:
        return (client_ip, client_port, server_ip, query_id)

    def query(self, key: Hashable, q: T, ts_ns: int) -> None:
        if key in self._pending:
            self._pending.pop(key)               # retransmission: time from the latest
        elif len(self._pending) >= self.max_pending:
            self._pending.popitem(last=False)
            self.evicted += 1
        self._pending[key] = (ts_ns, q)

    def has_pending(self, key: Hashable) -> bool:
        return key in self._pending

    def response(self, key: Hashable, ts_ns: int) -> Paired[T] | None:
        got = self._pending.pop(key, None)
        if got is None:
            self.unmatched += 1
            return None
        return Paired(got[1], max(0, ts_ns - got[0]))

    def expire(self, now_ns: int) -> None:
        # Insertion order is time order, so stop at the first fresh entry.
        while self._pending:
            key, (t, _) = next(iter(self._pending.items()))
            if now_ns - t <= self.timeout_ns:
                break
            self._pending.popitem(last=False)
            self.evicted += 1

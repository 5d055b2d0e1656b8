"""From captured payloads to L7 messages: per-connection HTTP streams, DNS
queries and answers, paired for latency.

The kernel sends, per selected direction, its first payload and then only
segments that start like an HTTP head (every DNS message). Here a TCP direction
remembers the sequence number where its next message can start, so a
retransmission or a body segment that happens to start like a head is not read
as a new message. What is not HTTP/DNS, or a head cut off by the capture prefix,
is counted and yields no L7 message: the connection stays visible at L3/L4.
"""
from __future__ import annotations

import logging
import socket
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Union

from ...datapath.event import (L7_DNS, L7_HTTP, L7_KIND_MASK, L7_RESPONSE_SIDE, L7Event,
                               decode_l7_batch)
from .dns import DNSMessage, parse_dns
from .fqdn import FQDNCache
from .http import HTTPRequest, HTTPResponse, parse_http
from .pairing import DNSPairer, HTTPPairer

log = logging.getLogger(__name__)

MAX_STREAMS = 65536
# A TCP direction's next-message mark is dropped once the direction was quiet this
# long: the demo's clients open a connection per request, and marks of connections
# that ended would otherwise pile up to MAX_STREAMS (~27 MiB). A keep-alive connection
# quiet for longer only loses the retransmission check of its next segment.
STREAM_IDLE_NS = 30 * 10**9
EXPIRE_EVERY_NS = 1_000_000_000


@dataclass(slots=True)
class L7Message:
    ev: L7Event                      # the packet: addresses, ports, point, interface
    time_ns: int                     # wall clock
    response: bool
    latency_ns: int = 0
    http: Union[HTTPRequest, HTTPResponse, None] = None
    request: HTTPRequest | None = None  # the request an HTTP response answers
    dns: DNSMessage | None = None
    # Set by the L7 proxy (l7proxy/flows.py); captured messages keep the defaults.
    verdict: int = 0                 # 0: FORWARDED; else flow.Verdict
    policy_set: int = 0              # the deciding policies (policy/compile.py PolicySets)
    policy_field: int = 0            # which repeated flow.Policy field names them
    observation_source: str = ""     # DNS: "proxy" from the L7 proxy


class _Truncated:
    """Stands in the pairing queue for a request whose head the capture cut."""


_TRUNCATED = _Truncated()


def _ip_port(family: int, addr: bytes, port: int) -> str:
    if family == 4:
        return f"{socket.inet_ntop(socket.AF_INET, addr[:4])}:{port}"
    return f"[{socket.inet_ntop(socket.AF_INET6, addr)}]:{port}"


# A request's default host (its destination, for a head without Host): the same few
# servers over and over, each spelled out once.
_HOSTS: dict[tuple[int, bytes, int], str] = {}
_HOSTS_MAX = 4096


def _default_host(family: int, addr: bytes, port: int) -> str:
    k = (family, addr, port)
    got = _HOSTS.get(k)
    if got is None:
        if len(_HOSTS) >= _HOSTS_MAX:
            _HOSTS.clear()
        got = _HOSTS[k] = _ip_port(family, addr, port)
    return got


_by_ts = lambda e: e[0].ts  # noqa: E731 - the sort key of (event, payload) items


def _failed(ev: L7Event, exc: BaseException) -> None:
    log.error("L7 payload of %s failed to parse", ev, exc_info=exc)


class L7Tracker:
    def __init__(self, fqdn: FQDNCache | None = None, *, native: bool | None = None) -> None:
        self.fqdn = fqdn if fqdn is not None else FQDNCache()
        self.http: HTTPPairer[HTTPRequest | _Truncated] = HTTPPairer()
        self.dns: DNSPairer[DNSMessage] = DNSPairer()
        # TCP direction -> (sequence number before which no message starts, kernel
        # time last seen); least recently seen first.
        self._next_seq: OrderedDict[tuple[bytes, int, bytes, int], tuple[int, int]] = \
            OrderedDict()
        self.counters: Counter[str] = Counter()
        self._last_expire = 0
        self._deferred: list[tuple[L7Event, bytes]] = []
        # The batch loop with HTTP records in C (_httpscan.c's track) where it was built
        # and native is not False; else the Python methods below, which it mirrors.
        self._track = _track if native is not False else None
        if native and _track is None:
            raise RuntimeError("_httpscan.c not built: run scripts/build_ext.py")

    def loop(self) -> str:
        """Which loop process() runs: "c" (HTTP records in C) or "python"."""
        return "c" if self._track is not None else "python"

    def process(self, raws: list[bytes], offset_ns: int) -> list[L7Message]:
        """Decodes a batch of l7_events records (offset_ns: kernel -> wall clock)."""
        events, bad = decode_l7_batch(raws)
        if bad:  # short records: counted, they never stop the batch
            self.counters["bad_record"] += bad
        # Per-CPU buffers: a response may arrive before its request, even in an
        # earlier drain (its CPU's buffer was read before the request's was written);
        # answers with nothing to pair with wait for one more batch (once).
        retried = {id(e) for e in self._deferred}
        events.extend(self._deferred)
        self._deferred = []
        events.sort(key=_by_ts)
        out: list[L7Message] = []
        if self._track is not None:  # the same loop, HTTP records in C
            self._track(events, retried, offset_ns, MAX_STREAMS, self._next_seq, self.http,
                        self._deferred, self.counters, self._item, _failed, out)
        else:
            item = self._item
            for it in events:
                item(it, id(it) not in retried, offset_ns, out)
        if events:
            now = events[-1][0].ts
            if now - self._last_expire > EXPIRE_EVERY_NS:
                self._last_expire = now
                self.http.expire(now)
                self.dns.expire(now)
                self._expire_streams(now)
        return out

    def _item(self, item: tuple[L7Event, bytes], may_defer: bool, offset_ns: int,
              out: list[L7Message]) -> None:
        """One record of a sorted batch (may_defer: it was not deferred already)."""
        ev, payload = item
        kind = ev.l7 & L7_KIND_MASK
        try:
            if kind == L7_HTTP:
                if may_defer and ev.l7 & L7_RESPONSE_SIDE and self._early_answer(ev, payload):
                    self._deferred.append(item)
                    return
                self._http(ev, payload, ev.ts + offset_ns, out)
            elif kind == L7_DNS:
                if may_defer and self._early_dns_answer(ev, payload):
                    self._deferred.append(item)
                    return
                self._dns(ev, payload, ev.ts + offset_ns, out)
        except Exception as e:  # noqa: BLE001 - one record never stops the batch
            _failed(ev, e)
            self.counters["error"] += 1

    def _early_answer(self, ev: L7Event, payload: bytes) -> bool:
        """An HTTP answer on a connection with no request waiting (yet)."""
        if not ev.response_side or not payload.startswith(b"HTTP/"):
            return False
        if ev.proto == 6 and self._before_next(ev):
            return False  # a retransmission or body: skipped now, not retried
        return not self.http.has_pending((ev.daddr, ev.dport, ev.saddr, ev.sport))

    def _early_dns_answer(self, ev: L7Event, payload: bytes) -> bool:
        data = payload[2:] if ev.proto == 6 else payload
        if len(data) < 12 or not data[2] & 0x80:  # QR bit: an answer
            return False
        qid = (data[0] << 8) | data[1]
        return not self.dns.has_pending((ev.daddr, ev.dport, ev.saddr, qid))

    def _before_next(self, ev: L7Event) -> bool:
        """Whether the segment starts before the direction's next possible message."""
        got = self._next_seq.get((ev.saddr, ev.sport, ev.daddr, ev.dport))
        return got is not None and (ev.seq - got[0]) & 0xFFFFFFFF >= 0x80000000

    def _advance(self, ev: L7Event, consumed: int) -> None:
        k = (ev.saddr, ev.sport, ev.daddr, ev.dport)
        marks = self._next_seq
        if k in marks:
            marks.move_to_end(k)
        elif len(marks) >= MAX_STREAMS:
            marks.popitem(last=False)
            self.counters["tcp_stream_marks_evicted"] += 1
        marks[k] = ((ev.seq + max(consumed, ev.payload_len)) & 0xFFFFFFFF, ev.ts)

    def _expire_streams(self, now: int) -> None:
        """Drops the marks of directions quiet for STREAM_IDLE_NS (oldest first)."""
        marks = self._next_seq
        n = 0
        while marks:  # bounded by the table's size; stops at the first fresh mark
            k, (_, seen) = next(iter(marks.items()))
            if now - seen <= STREAM_IDLE_NS:
                break
            del marks[k]
            n += 1
        if n:
            self.counters["tcp_stream_marks_expired"] += n

    def streams(self) -> int:
        """TCP directions with a next-message mark (a gauge for the counters)."""
        return len(self._next_seq)

    def _http(self, ev: L7Event, payload: bytes, time_ns: int, out: list[L7Message]) -> None:
        tcp = ev.proto == 6
        if tcp:  # the sequence check, inline: this runs for every captured head
            marks = self._next_seq
            k = (ev.saddr, ev.sport, ev.daddr, ev.dport)
            got = marks.get(k)
            if got is not None:
                marks.move_to_end(k)
                if (ev.seq - got[0]) & 0xFFFFFFFF >= 0x80000000:
                    self.counters["http_skipped_segments"] += 1
                    return
        answers = ev.l7 & L7_RESPONSE_SIDE != 0
        if answers:  # pairing key: the request direction
            conn = (ev.daddr, ev.dport, ev.saddr, ev.sport)
            host = None  # an answer's URL is its request's: no default host to build
        else:
            conn = (ev.saddr, ev.sport, ev.daddr, ev.dport)
            host = _default_host(ev.family, ev.daddr, ev.dport)
        res = parse_http(payload, default_host=host)
        if not res.messages:
            reason = res.unparsable.reason if res.unparsable else "empty"
            self.counters[f"http_unparsable_{reason}"] += 1
            if tcp:
                self._advance(ev, 0)
            return
        consumed = 0
        for msg in res.messages:
            is_request = isinstance(msg, HTTPRequest)
            if is_request == answers:
                # A request where answers go (or the reverse): not the protocol we
                # were told; better no flow than a wrong one.
                self.counters["http_unparsable_direction"] += 1
                break
            consumed += msg.length
            if not msg.headers_complete:
                self.counters["http_truncated"] += 1
                if is_request:
                    self.http.request(conn, _TRUNCATED, ev.ts)
                else:
                    self.http.response(conn, ev.ts)
                break
            if is_request:
                self.counters["http_requests"] += 1
                self.http.request(conn, msg, ev.ts)
                out.append(L7Message(ev, time_ns, False, http=msg))
                continue
            informational = 100 <= msg.code < 200  # type: ignore[union-attr]
            paired = self.http.response(conn, ev.ts, informational=informational)
            if paired is None:
                self.counters["http_unmatched_responses"] += 1
                continue
            if paired.request is _TRUNCATED:
                self.counters["http_truncated_pairs"] += 1
                continue
            self.counters["http_responses"] += 1
            out.append(L7Message(ev, time_ns, True, paired.latency_ns, http=msg,
                                 request=paired.request))  # type: ignore[arg-type]
        else:
            if res.unparsable is not None and res.unparsable.reason == "truncated":
                # A pipelined message whose start line the segment (or the prefix) cut:
                # it still holds its place in the queue, or its answer would pair with
                # the next request.
                self.counters["http_truncated"] += 1
                if answers:
                    self.http.response(conn, ev.ts)
                else:
                    self.http.request(conn, _TRUNCATED, ev.ts)
            elif res.unparsable is not None:
                self.counters[f"http_unparsable_{res.unparsable.reason}"] += 1
        if tcp:
            self._advance(ev, consumed)

    def _dns(self, ev: L7Event, payload: bytes, time_ns: int, out: list[L7Message]) -> None:
        msg = parse_dns(payload, tcp=ev.proto == 6)
        if msg is None:
            self.counters["dns_unparsable"] += 1
            return
        if not msg.is_response:
            self.counters["dns_queries"] += 1
            self.dns.query((ev.saddr, ev.sport, ev.daddr, msg.id), msg, ev.ts)
            out.append(L7Message(ev, time_ns, False, dns=msg))
            return
        self.counters["dns_responses"] += 1
        paired = self.dns.response((ev.daddr, ev.dport, ev.saddr, msg.id), ev.ts)
        out.append(L7Message(ev, time_ns, True, paired.latency_ns if paired else 0, dns=msg))
        if msg.rcode == 0 and msg.ips:
            self.fqdn.learn([msg.query, *msg.cnames], list(msg.ips), msg.ttl, time_ns)


# L7Tracker's batch loop with HTTP records in C: _httpscan.c's track, built by
# scripts/build_ext.py (and the agent image) beside http.py's head scanner. It changes the
# same state as the methods above in the same way (tests/unit/test_l7_track.py runs both
# on the same record streams); without it they run.
def _configure_track():  # type: ignore[no-untyped-def]
    from . import http

    scan = http._httpscan
    if scan is None or not hasattr(scan, "track"):
        return None
    missing, fields = http.slot_fields(L7Message)
    scan.configure_tracker(L7Message, fields, missing, http.parse_http,
                           _default_host, _HOSTS, deque, OrderedDict, _TRUNCATED)
    return scan.track


_track = _configure_track()


def loop() -> str:
    """Which loop trackers run by default: "c" or "python" (logged at start)."""
    return "c" if _track is not None else "python"

"""L7Tracker's batch loop in C (_httpscan.c's track) against its Python twin (the
tracker's own methods): the same generated record streams through two trackers, one
per loop, must give equal L7 messages, counters and state after every batch.

The streams hold what the loop has rules for: keep-alive and pipelined heads, bodies
the kernel kept to itself and body segments that start like a head, retransmissions,
answers drained a batch before their requests, heads and start lines cut by the
capture prefix, not-HTTP payloads, messages the wrong way, 1xx answers, HTTP over UDP,
IPv6, DNS between them, records that are too short or of other kinds, and bounds small
enough that marks and pending requests are evicted and expire."""
from __future__ import annotations

import gc
import random
import struct
import sys

import pytest

from test_l7_pipeline import DNS_SERVER, OFFSET, SEC, dns_answer, dns_query, get, ok, record
from webb_agent.datapath.event import L7_DNS, L7_HTTP
from webb_agent.pipeline.l7 import tracker as tracker_mod
from webb_agent.pipeline.l7.tracker import L7Tracker

SERVERS = [("10.1.0.11", 8080), ("fd00::11", 8080)]

POSTS = [b"POST /p HTTP/1.1\r\nHost: s\r\nContent-Length: 4\r\n\r\nbody",
         b"PUT /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
         b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n"]
ANSWERS = [ok(), ok(b"", 204, "No Content"), ok(b"x" * 40, 404, "Not Found"),
           b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
           b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
           b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nto the close",
           b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 101 Switching Protocols\r\n\r\n"]
NOT_HTTP = [bytes.fromhex("160301") + b"\x00\x40" + b"\x01" * 64,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", bytes(range(40)), b"hello, not http\r\n",
            b"GET / HTTP/2.0\r\n\r\n", b"", b"GET /lf-only HTTP/1.1\nHost: s\n\n",
            b"GET /fold HTTP/1.1\r\nX: a\r\n b\r\n\r\n", b"GET /half HTTP/1.1\r\nHo",
            b"HTTP/1.1 2", b"GE"]


class Stream:
    """Records of a few TCP connections (and DNS beside them) in kernel-time order."""

    def __init__(self, rnd: random.Random, conns: int) -> None:
        self.rnd = rnd
        self.ts = 1_000_000
        self.conns = []
        for i in range(conns):
            srv = rnd.choice(SERVERS)
            cli = ("fd00::10" if ":" in srv[0] else "10.1.0.10", 40000 + i)
            self.conns.append({"cli": cli, "srv": srv, "seq": [rnd.getrandbits(32), rnd.getrandbits(32)],
                               "sent": [[], []], "prefix": rnd.choice((1024, 1024, 200, 60))})

    def _rec(self, c: dict, side: int, payload: bytes, *, seq: int | None = None,
             proto: int = 6, answers: bool | None = None) -> bytes:
        src, dst = (c["cli"], c["srv"]) if side == 0 else (c["srv"], c["cli"])
        s = c["seq"][side] if seq is None else seq
        if seq is None:
            c["seq"][side] = (s + len(payload)) & 0xFFFFFFFF
        raw = record(payload, ts=self.ts, src=src, dst=dst, seq=s, proto=proto,
                     answers=bool(side) if answers is None else answers, prefix=c["prefix"])
        c["sent"][side].append((s, payload))
        return raw

    def step(self) -> list[bytes]:
        rnd = self.rnd
        self.ts += rnd.choice((1_000, 20_000, 20_000, 3 * SEC, 40 * SEC)
                              if rnd.random() < 0.02 else (1_000, 20_000))
        c = rnd.choice(self.conns)
        what = rnd.random()
        if what < 0.30:    # requests, pipelined at times
            heads = [rnd.choice([get(f"/r/{rnd.randrange(9)}"), b"GET /nohost HTTP/1.1\r\nAccept: */*\r\n\r\n"] + POSTS) for _ in range(rnd.choice((1, 1, 1, 2, 3)))]
            data = b"".join(heads)
            if rnd.random() < 0.1:  # the last start line cut at the segment's end
                data = data[:len(data) - len(heads[-1]) + rnd.randrange(1, 12)]
            return [self._rec(c, 0, data)]
        if what < 0.62:    # answers, several in a segment at times
            data = b"".join(rnd.choice(ANSWERS) for _ in range(rnd.choice((1, 1, 2))))
            return [self._rec(c, 1, data)]
        if what < 0.70:    # a retransmission of an earlier segment
            side = rnd.randrange(2)
            if not c["sent"][side]:
                return []
            seq, payload = rnd.choice(c["sent"][side][-4:])
            return [self._rec(c, side, payload, seq=seq)]
        if what < 0.76:    # body bytes the kernel kept, at times one that starts like a head
            side = rnd.randrange(2)
            n = rnd.randrange(1, 3000)
            out = []
            if rnd.random() < 0.5:
                seq = (c["seq"][side] + rnd.randrange(n)) & 0xFFFFFFFF
                out.append(self._rec(c, side, rnd.choice(ANSWERS + [get("/in-body")]), seq=seq))
            c["seq"][side] = (c["seq"][side] + n) & 0xFFFFFFFF
            return out
        if what < 0.82:    # not HTTP on an HTTP port
            return [self._rec(c, rnd.randrange(2), rnd.choice(NOT_HTTP))]
        if what < 0.85:    # the wrong way: a request where answers go, or the reverse
            return [self._rec(c, 0, ok()) if rnd.random() < 0.5 else self._rec(c, 1, get("/w"))]
        if what < 0.87:    # HTTP over UDP (no sequence numbers)
            side = rnd.randrange(2)
            return [self._rec(c, side, rnd.choice(ANSWERS) if side else get("/udp"), proto=17)]
        if what < 0.95:    # DNS between them
            qid = rnd.randrange(1 << 16)
            cli = ("10.1.0.10", 50000 + rnd.randrange(4))
            q = record(dns_query(qid, "svc.ns.test"), ts=self.ts, src=cli, dst=DNS_SERVER,
                       kind=L7_DNS, proto=17)
            a = record(dns_answer(qid, "svc.ns.test", ["10.96.0.7"]), ts=self.ts + 500,
                       src=DNS_SERVER, dst=cli, kind=L7_DNS, proto=17, answers=True)
            return [q, a] if rnd.random() < 0.8 else [a]
        # records the loop must take as they come: short, other kinds, fields that lie
        raw = self._rec(c, rnd.randrange(2), rnd.choice(ANSWERS + [get("/odd")]))
        pick = rnd.random()
        if pick < 0.3:
            raw = raw[:rnd.randrange(72)]
        elif pick < 0.6:
            raw = raw[:61] + bytes([rnd.choice((0, 3, 7, L7_HTTP | 0x20, 0xF1))]) + raw[62:]
        else:
            b = bytearray(raw)
            b[rnd.randrange(40, 72)] = rnd.randrange(256)
            raw = bytes(b)
        return [raw]


def batches(rnd: random.Random, stream: Stream, n: int) -> list[list[bytes]]:
    """n records in batches as ingest drains them: cut anywhere, shuffled within a batch
    (per-CPU order), and some answers moved to the batch before their request's."""
    recs: list[bytes] = []
    while len(recs) < n:
        recs += stream.step()
    out, i = [], 0
    while i < len(recs):
        k = rnd.choice((1, 2, 5, 16, 64))
        b = recs[i:i + k]
        rnd.shuffle(b)
        out.append(b)
        i += k
    for j in range(len(out) - 1, 0, -1):  # the answer's CPU drained first
        if out[j] and rnd.random() < 0.2:
            out[j - 1].append(out[j].pop(rnd.randrange(len(out[j]))))
    return out


def state(t: L7Tracker) -> tuple:
    h = t.http
    return (list(t._next_seq.items()),
            [(k, list(q)) for k, q in h._conns.items()], list(h._seen.items()),
            h.evicted, h.unmatched, t._deferred, list(t.dns._pending.items()),
            t.dns.unmatched, t.dns.evicted, t._last_expire)


def pair() -> tuple[L7Tracker, L7Tracker]:
    c, py = L7Tracker(native=True), L7Tracker(native=False)
    assert c.loop() == "c", "_httpscan.c not built: run make setup"
    assert py.loop() == "python"
    return c, py


@pytest.mark.parametrize("seed,conns,bounds", [
    (1, 3, None), (2, 8, None), (3, 2, None),
    (4, 12, (6, 4, 3)),   # marks, connections, pending per connection: evictions
    (5, 12, (1, 1, 1)),
])
def test_c_loop_gives_what_the_python_loop_gives(monkeypatch, seed, conns, bounds):
    rnd = random.Random(seed)
    if bounds is not None:
        monkeypatch.setattr(tracker_mod, "MAX_STREAMS", bounds[0])
    c, py = pair()
    if bounds is not None:
        for t in (c, py):
            t.http.max_conns, t.http.max_pending = bounds[1], bounds[2]
    stream = Stream(rnd, conns)
    emitted = deferred = 0
    for batch in batches(rnd, stream, 3000):
        got, want = c.process(list(batch), OFFSET), py.process(list(batch), OFFSET)
        assert got == want
        assert c.counters == py.counters
        assert state(c) == state(py)
        emitted += len(got)
        deferred += len(c._deferred)
    # the streams reach the rules they are for
    k = c.counters
    for name in ("http_requests", "http_responses", "http_skipped_segments", "http_truncated",
                 "http_unmatched_responses", "http_unparsable_direction", "http_unparsable_tls",
                 "http_unparsable_malformed", "http_unparsable_empty", "dns_queries",
                 "bad_record"):
        assert k[name] > 0, (name, dict(k))
    assert emitted > 300 and deferred > 0 and c.counters["error"] == 0
    if bounds is not None:
        assert k["tcp_stream_marks_evicted"] > 0 and c.http.evicted > 0


def test_pairing_errors_are_counted_alike_and_the_batch_goes_on():
    """A pairer that cannot take a connection (no room at all) makes every request fail
    in both loops: counted as "error", logged, the other records still handled."""
    c, py = pair()
    for t in (c, py):
        t.http.max_conns = 0
    rnd = random.Random(9)
    for batch in batches(rnd, Stream(rnd, 3), 400):
        assert c.process(list(batch), OFFSET) == py.process(list(batch), OFFSET)
        assert c.counters == py.counters and state(c) == state(py)
    assert c.counters["error"] > 0 and c.counters["dns_queries"] > 0


def test_records_from_the_python_decoder_take_the_same_path():
    """Items that are not what decode_l7 gives (a record field of another type) go to
    the Python loop's own code, whichever loop runs."""
    from webb_agent.datapath.event import decode_l7

    c, py = pair()
    first, second = get("/x"), get("/y")
    ev, payload = decode_l7(record(first, ts=5, seq=1))
    ev2, payload2 = decode_l7(record(second, ts=6, seq=1 + len(first)))
    odd = [(ev._replace(sport=float(ev.sport)), payload), (ev2, bytearray(payload2))]
    for t in (c, py):
        out: list = []
        if t._track is not None:
            t._track(list(odd), set(), OFFSET, tracker_mod.MAX_STREAMS, t._next_seq, t.http,
                     t._deferred, t.counters, t._item, tracker_mod._failed, out)
        else:
            for it in odd:
                t._item(it, True, OFFSET, out)
        assert [m.http.url for m in out] == ["http://server:8080/x", "http://server:8080/y"]
    assert c.counters == py.counters and state(c) == state(py)


def test_bench_shaped_stream_is_all_c():
    """A keep-alive stream as the bench and the live agent see it: every record answered
    by the C loop (nothing handed to Python), and equal to the Python loop's answer."""
    c, py = pair()
    calls = []
    c_item = c._item
    c._item = lambda *a: (calls.append(a), c_item(*a))[1]  # type: ignore[method-assign]
    rnd = random.Random(3)
    stream = Stream(rnd, 4)
    for conn in stream.conns:
        conn["prefix"] = 1024
    recs = []
    for i in range(200):
        conn = stream.conns[i % 4]
        stream.ts += 1000
        recs.append(stream._rec(conn, 0, get(f"/k/{i}")))
        stream.ts += 1000
        recs.append(stream._rec(conn, 1, ok(struct.pack("!I", i))))
    for i in range(0, len(recs), 32):
        got = c.process(recs[i:i + 32], OFFSET)
        assert got == py.process(recs[i:i + 32], OFFSET)
        # nothing the C loop builds is left to the cycle collector (see _httpscan.c)
        assert not any(gc.is_tracked(o) for m in got for o in (m, m.ev, m.http, m.http.headers))
    assert not calls and c.counters == py.counters
    assert c.counters["http_requests"] == c.counters["http_responses"] == 200


def test_an_item_python_cannot_read_raises_out_of_both_loops_alike():
    """What tracker.py's loop lets raise (an item it cannot even take apart) raises out of
    the C loop too, after the same records before it were handled and counted."""
    from webb_agent.datapath.event import decode_l7

    c, py = pair()
    ev, payload = decode_l7(record(get("/before"), ts=5, seq=1))
    bad = (ev._replace(l7="http", ts=6), payload)
    for t in (c, py):
        out: list = []
        with pytest.raises(TypeError):
            if t._track is not None:
                t._track([(ev, payload), bad], set(), OFFSET, tracker_mod.MAX_STREAMS,
                         t._next_seq, t.http, t._deferred, t.counters, t._item,
                         tracker_mod._failed, out)
            else:
                for it in [(ev, payload), bad]:
                    t._item(it, True, OFFSET, out)
        assert [m.http.url for m in out] == ["http://server:8080/before"]
    assert c.counters == py.counters and c.counters["http_requests"] == 1
    assert state(c) == state(py)


def test_the_c_loop_keeps_no_references_behind():
    """Batch after batch of the same traffic, the interpreter's live allocations stay
    flat: the C loop drops every reference it takes (its fixed tables aside)."""
    rnd = random.Random(11)
    recs = [r for b in batches(rnd, Stream(rnd, 6), 2000) for r in b]
    c, _ = pair()

    def run() -> int:
        t = L7Tracker(native=True)
        for i in range(0, len(recs), 64):
            t.process(recs[i:i + 64], OFFSET)
        del t
        gc.collect()
        return sys.getallocatedblocks()

    run()
    first = run()
    assert max(run() for _ in range(3)) - first < 200

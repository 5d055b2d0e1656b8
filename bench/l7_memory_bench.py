#!/usr/bin/env python3
"""L7 state memory over a long run: the agent's L7 tracker (HTTP pairing, TCP
next-message marks, DNS pairing, names from DNS answers) fed the demo's kind of
traffic for many simulated minutes, its traced memory printed per minute. Prints
figures and ratios; asserts nothing.

Run from the repository:  .venv/bin/python bench/l7_memory_bench.py   (~1-2 min)

What it feeds (records packed as the kernel writes them, the real parsers): at
--rate HTTP exchanges a second, each on a new connection (a new client port: the
demo's clients open one per request), request and answer with a Content-Length
body; a DNS query and answer every 4th exchange (a new query id, names from a small
set: the answers teach the FQDN cache the same few addresses again and again); 1 %
of the requests never answered (pairing state that must expire). Kernel time moves
on with the traffic, so the tracker's expiry runs as in the agent.

Modes, alternated ABBA in one run (the machine is shared: compare within a run):
  bounded  the tracker as the agent runs it (TCP marks expire after 30 s quiet)
  no-age   the same with the marks' age limit off (STREAM_IDLE_NS = infinity): how
           the agent behaved before, marks piling up to MAX_STREAMS (65,536)
Per mode: traced MiB of the tracker each simulated minute, and the slope of the
last half (MiB per minute) — flat once the state reached its steady size.
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import socket
import struct
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "services"))

from webb_agent.datapath.event import (L7_DNS, L7_HTTP, L7_RESPONSE_SIDE,  # noqa: E402
                                       POINT_FROM_ENDPOINT, POINT_TO_ENDPOINT, L7Event,
                                       pack_l7)
from webb_agent.stores.endpoints import packed_ip  # noqa: E402
from webb_agent.pipeline.l7 import tracker as tracker_mod  # noqa: E402
from webb_agent.pipeline.l7.tracker import L7Tracker  # noqa: E402

SEC = 10**9
SERVER = ("10.244.2.11", 9080)
DNS = ("10.244.1.10", 53)
NAMES = ["reviews.bookinfo.svc.cluster.local", "ratings.bookinfo.svc.cluster.local",
         "details.bookinfo.svc.cluster.local", "productpage.bookinfo.svc.cluster.local"]


def headers(src: tuple[str, int], dst: tuple[str, int], proto: int, seq: int, n: int) -> bytes:
    l4 = (struct.pack("!HHIIBBHHH", src[1], dst[1], seq, 0, 5 << 4, 0x18, 65535, 0, 0)
          if proto == 6 else struct.pack("!HHHH", src[1], dst[1], 8 + n, 0))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4) + n, 0, 0, 64, proto, 0,
                     socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip + l4


def record(payload: bytes, ts: int, src: tuple[str, int], dst: tuple[str, int], seq: int,
           kind: int, answers: bool, proto: int = 6) -> bytes:
    hdr = headers(src, dst, proto, seq, len(payload))
    ev = L7Event(ts=ts, saddr=packed_ip(src[0]), daddr=packed_ip(dst[0]), sport=src[1],
                 dport=dst[1], ifindex=5, seq=seq if proto == 6 else 0,
                 payload_len=len(payload), payload_off=len(hdr),
                 cap_len=len(hdr) + len(payload), family=4, proto=proto,
                 point=POINT_FROM_ENDPOINT if answers else POINT_TO_ENDPOINT,
                 l7=kind | (L7_RESPONSE_SIDE if answers else 0), is_reply=int(answers),
                 tcp_flags=0x18 if proto == 6 else 0)
    return pack_l7(ev, hdr + payload)


def dns_name(n: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in n.split(".")) + b"\0"


def dns_msgs(ident: int, name: str, ip: str) -> tuple[bytes, bytes]:
    q = struct.pack("!6H", ident, 0x0100, 1, 0, 0, 0) + dns_name(name) + struct.pack("!HH", 1, 1)
    a = (struct.pack("!6H", ident, 0x8180, 1, 1, 0, 0) + dns_name(name) + struct.pack("!HH", 1, 1)
         + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton(ip))
    return q, a


BODY = b'{"id": "0", "podname": "reviews-v2-abc", "reviews": [{"reviewer": "r1"}]}'
RESP = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


RNG = random.Random(1)


def second(i0: int, rate: int, t0: int) -> list[bytes]:
    """One second of traffic: `rate` exchanges from i0 on, at kernel time t0."""
    raws = []
    step = SEC // rate
    for k in range(rate):
        i = i0 + k
        ts = t0 + k * step
        client = (f"10.244.{1 + i % 2}.{10 + i % 5}", 32768 + i % 28000)
        req = f"GET /reviews/{i % 7} HTTP/1.1\r\nHost: reviews:9080\r\nUser-Agent: demo\r\n\r\n"
        # initial sequence numbers are random per connection, as the kernel's are
        isn_c, isn_s = RNG.getrandbits(32), RNG.getrandbits(32)
        raws.append(record(req.encode(), ts, client, SERVER, isn_c, L7_HTTP, False))
        if i % 100:  # 1 % never answered
            raws.append(record(RESP, ts + step // 2, SERVER, client, isn_s, L7_HTTP, True))
        if i % 4 == 0:
            q, a = dns_msgs(i & 0xFFFF, NAMES[i % 4], f"10.96.0.{10 + i % 4}")
            c = (client[0], 40000 + i % 20000)
            raws.append(record(q, ts, c, DNS, 0, L7_DNS, False, proto=17))
            raws.append(record(a, ts + step // 3, DNS, c, 0, L7_DNS, True, proto=17))
    return raws


def run(mode: str, minutes: int, rate: int) -> tuple[list[float], float]:
    saved = tracker_mod.STREAM_IDLE_NS
    if mode == "no-age":
        tracker_mod.STREAM_IDLE_NS = 1 << 62
    try:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        t = L7Tracker()
        RNG.seed(1)  # every mode sees the same traffic
        per_min = []
        t0, i, cpu0 = 10**12, 0, time.process_time()
        offset = 1_700_000_000 * SEC
        for _ in range(minutes):
            for s in range(60):
                t.process(second(i, rate, t0), offset)  # ingest drains ~100x a second:
                i += rate                               # one batch a second is the same state
                t0 += SEC
            gc.collect()
            per_min.append((tracemalloc.get_traced_memory()[0] - base) / 2**20)
        cpu = time.process_time() - cpu0
        tracemalloc.stop()
        marks = t.streams()
        print(f"  {mode:8s} marks={marks:6d} expired={t.counters['tcp_stream_marks_expired']:8d} "
              f"evicted={t.counters['tcp_stream_marks_evicted']:7d} "
              f"http_pending={t.http.pending()} fqdn={len(t.fqdn)} "
              f"requests={t.counters['http_requests']} "
              f"skipped={t.counters['http_skipped_segments']} cpu={cpu:.1f}s")
        print("           MiB per simulated minute: " + " ".join(f"{x:.1f}" for x in per_min))
        half = per_min[len(per_min) // 2:]
        slope = (half[-1] - half[0]) / max(1, len(half) - 1)
        return per_min, slope
    finally:
        tracker_mod.STREAM_IDLE_NS = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=int, default=16, help="simulated minutes per run")
    ap.add_argument("--rate", type=int, default=150,
                    help="HTTP exchanges per second (each a new connection; default 150, "
                         "the demo at --rate 40 makes ~100-150 new TCP directions a second)")
    a = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
          f"(shared: figures are noisy)")
    print(f"{a.minutes} simulated minutes at {a.rate} exchanges/s, each on a new connection")
    res: dict[str, list[tuple[list[float], float]]] = {"bounded": [], "no-age": []}
    for mode in ("bounded", "no-age", "no-age", "bounded"):  # ABBA
        res[mode].append(run(mode, a.minutes, a.rate))
    for mode, runs in res.items():
        last = sum(r[0][-1] for r in runs) / len(runs)
        slope = sum(r[1] for r in runs) / len(runs)
        print(f"{mode:8s}: {last:6.1f} MiB of L7 state at the end, {slope:+.2f} MiB/min "
              f"over the last half")
    b = sum(r[0][-1] for r in res["bounded"]) / 2
    n = sum(r[0][-1] for r in res["no-age"]) / 2
    print(f"ratio bounded/no-age (state at the end): {b / n:.3f}")


if __name__ == "__main__":
    main()

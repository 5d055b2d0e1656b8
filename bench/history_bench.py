#!/usr/bin/env python3
"""Flow history: what persisting costs ingest, how fast the store writes, what a
stored flow costs on disk, and how long a 1-hour since/until query with a filter
takes over 10 million stored flows. In process (the real Ingest, writer, store and
reader; no kernel), on this machine's disk.

    .venv/bin/python bench/history_bench.py            # 10M flows (~3 min)
    .venv/bin/python bench/history_bench.py 2000000    # a smaller store
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import statistics
import sys
import tempfile
import time

from webb.api.flow import flow_pb2 as fpb
from webb.filters import build_filter
from webb_agent.datapath.event import (EVENT_DROP, EVENT_SIZE, EVENT_TRACE, FlowEvent,
                                       pack)
from webb_agent.stores.endpoints import EndpointRegistry, packed_ip, parse_endpoint
from webb_agent.pipeline.selection import Lost, ReadRequest
from webb_agent.stores.history import History
from webb_agent.stores.history.batch import pack_batch
from webb_agent.stores.history.encoding import wire_encoder
from webb_agent.stores.history.store import HistoryStore
from webb_agent.stores.history.writer import FRAME_FLOWS
from webb_agent.stores.history.hooks import PersistConfig, Persistence
from webb_agent.stores.identities import IdentityAllocator
from webb_agent.pipeline.ingest import Ingest
from webb_agent.memory import tune_gc
from webb_agent.api.observer import NodeState, flow_matcher
from webb_agent.pipeline.wire_cache import FlowWireCache
from webb_agent.pipeline.record import FlowRecord
from webb_agent.stores.ring import Ring

RATE = 175_000  # the agent's measured ingest ceiling, events/s
TICK = 0.01  # the agent drains perf buffers every 10 ms
HOUR = 3600 * 10**9
PODS = [("productpage-v1", "default", "10.0.0.1"), ("details-v1", "default", "10.0.0.2"),
        ("reviews-v1", "default", "10.0.0.3"), ("reviews-v2", "default", "10.0.0.4"),
        ("ratings-v1", "default", "10.0.0.5"), ("client", "demo", "10.0.0.6")]


def raw_event(i: int) -> bytes:
    """A mix like the demo's: connections between the pods, new ports, some drops."""
    a, b = i % len(PODS), (i * 7 + 1) % len(PODS)
    proto = 6 if i % 4 else 17
    return pack(FlowEvent(
        ts=i * 1000, packets=1 + i % 7, bytes=60 + i % 1400, saddr=packed_ip(PODS[a][2]),
        daddr=packed_ip(PODS[b][2]), smac=b"\2\0\0\0\0\1", dmac=b"\2\0\0\0\0\2",
        sport=32768 + (i * 13) % 28000, dport=(9080, 53, 80, 443)[i % 4], ifindex=7 + a,
        pkt_len=60, event_type=EVENT_DROP if i % 50 == 0 else EVENT_TRACE, reason=i % 3,
        family=4, proto=proto, tcp_flags=(0x02, 0x12, 0x10, 0x11, 0x18)[i % 5] if proto == 6 else 0,
        point=i & 1, is_reply=(i >> 1) & 1, icmp_type=0, icmp_code=0,
        drop_reason=133 if i % 50 == 0 else 0))


async def registry() -> EndpointRegistry:
    reg = EndpointRegistry("n", IdentityAllocator())
    for name, ns, ip in PODS:
        await reg.upsert(parse_endpoint({"name": name, "namespace": ns, "ips": [ip],
                                         "interface": "lxc" + name[:8],
                                         "labels": {"app": name.split("-")[0]}}))
    return reg


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))


async def ingest_at_rate(history_dir: str | None, seconds: float, raws: list[bytes]) -> dict:
    """Real Ingest fed RATE events/s from bcc-like callbacks, every 10 ms, with or
    without history; the loop thread's CPU per 1,000 events and what got persisted."""
    reg = await registry()
    persist = Persistence(PersistConfig(history_dir=history_dir or "",
                                        history_max_bytes=10**10, history_max_age_ns=10**6 * HOUR))
    ring: Ring = Ring(65535, persist.start_seq)
    node = NodeState("n", "v", "", ring, lambda: 0)
    wire_cache = FlowWireCache("n", {}, "v")
    ing = Ingest(ring, reg, {packed_ip("10.0.0.254")})
    ing.on_batch = persist.bind(wire_cache, "n", node.note_batch)
    tasks = [asyncio.create_task(t) for _, t in persist.tasks()]
    tune_gc()  # as the agent does once started
    bufs = [ctypes.create_string_buffer(r, EVENT_SIZE) for r in raws]
    addrs = [ctypes.addressof(b) for b in bufs]
    per_tick = int(RATE * TICK)
    ticks = int(seconds / TICK)
    cpu, delivered, late = 0.0, 0, 0
    t_start = time.perf_counter()
    next_tick = t_start
    k = 0
    for _ in range(ticks):
        c0 = time.thread_time()
        on_event = ing.on_event
        for _ in range(per_tick):
            on_event(0, addrs[k % len(addrs)], EVENT_SIZE)
            k += 1
        ing.process()
        cpu += time.thread_time() - c0
        delivered += per_tick
        next_tick += TICK
        delay = next_tick - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late += 1
            await asyncio.sleep(0)
    wall = time.perf_counter() - t_start
    t_close = time.perf_counter()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await persist.close(ring.next_seq)
    drain = time.perf_counter() - t_close
    out = {"events": delivered, "wall": wall, "rate": delivered / wall,
           "cpu_ms_per_1k": cpu / delivered * 1e6, "late_ticks": late, "close_s": drain}
    if persist.history is not None:
        st = persist.history.store.stats
        out.update(written=st.written_flows, dropped=st.dropped_flows,
                   bytes=persist.history.store.total_bytes(),
                   persisted_rate=st.written_flows / (wall + drain))
    return out


def fill(path: str, n: int, span_ns: int, raws: list[bytes]) -> tuple[float, int]:
    """n flows evenly over the last span_ns, through the writer's batch path (pack,
    compress, append with fsync); returns (seconds, flows written)."""
    reg = asyncio.run(registry())
    eps = {ip: reg.by_packed[packed_ip(ip)] for _, _, ip in PODS}
    store = HistoryStore(path, 10**11, 10**6 * HOUR)
    store.open()
    wire_of = wire_encoder(FlowWireCache("n", {}, "v"))
    t0 = time.time_ns() - span_ns
    step = span_ns / n
    ips = [(PODS[i % len(PODS)][2], PODS[(i * 7 + 1) % len(PODS)][2]) for i in range(len(raws))]
    start = time.perf_counter()
    for b in range(0, n, FRAME_FLOWS):
        recs = []
        for i in range(b, min(n, b + FRAME_FLOWS)):
            k = i % len(raws)
            s, d = ips[k]
            r = FlowRecord(raws[k], t0 + int(i * step), eps[s], eps[d])
            r.seq = i
            recs.append(r)
        payload = pack_batch(recs, [r.raw for r in recs], wire_of)
        store.append(payload, len(recs), recs[0].seq, recs[-1].seq, recs[0].time_ns,
                     recs[-1].time_ns)
    store.close(n)
    return time.perf_counter() - start, store.stats.written_flows


async def query(path: str, since: int, until: int, pred_filter: list[fpb.FlowFilter]) -> dict:
    h = History(path, 10**11, 10**6 * HOUR)
    ring: Ring = Ring(4095, h.next_seq)
    wire_cache = FlowWireCache("n", {}, "v")
    h.bind(wire_cache)
    pred = build_filter(pred_filter, [])
    assert h.reader is not None
    tune_gc()

    match = flow_matcher(wire_cache, pred_filter, pred)  # what the observer does
    t0 = time.perf_counter()
    n = 0
    size = 0
    async for item in h.reader(ring, ReadRequest(since_ns=since, until_ns=until), match):
        if not isinstance(item, Lost):
            size += len(wire_cache.response(item))  # the bytes GetFlows would send
            n += 1
    dt = time.perf_counter() - t0
    scanned = sum(f.count for f in h.store.frames
                  if f.max_time >= since and f.min_time <= until)
    await h.close(ring.next_seq)
    return {"latency_s": dt, "matched": n, "scanned": scanned, "bytes": size}


def main() -> None:
    n_store = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    raws = [raw_event(i) for i in range(8192)]
    base = tempfile.mkdtemp(prefix="webb-history-bench-")
    print(f"machine: {os.cpu_count()} vCPU, load average {os.getloadavg()[0]:.1f} at start; "
          f"store in {base}")
    try:
        # 1. ingest at the agent's rate, with and without history
        rows = []
        for label, d in (("off", None), ("on", os.path.join(base, "ingest"))):
            r = asyncio.run(ingest_at_rate(d, 10.0, raws))
            rows.append((label, r))
            extra = ""
            if d:
                extra = (f"; persisted {r['written']:,} flows ({r['persisted_rate']:,.0f}/s), "
                         f"dropped {r['dropped']}, {r['bytes'] / max(r['written'], 1):.1f} B/flow, "
                         f"close {r['close_s']:.2f}s")
            print(f"ingest at {RATE:,}/s, history {label}: delivered {r['rate']:,.0f} events/s, "
                  f"loop CPU {r['cpu_ms_per_1k']:.2f} ms/1k events, late ticks {r['late_ticks']}"
                  f"{extra}", flush=True)
        # 2. the writer alone: flows/s packed, compressed and fsynced
        path = os.path.join(base, "store")
        t, written = fill(path, 1_000_000, 3600 * 10**9, raws)
        print(f"writer alone: {written / t:,.0f} flows/s (pack + zlib + write + fsync, "
              f"one thread)", flush=True)
        shutil.rmtree(path)
        # 3. a day of flows: disk cost and a 1-hour query with a filter
        span = 24 * HOUR
        t, written = fill(path, n_store, span, raws)
        size = du(path)
        print(f"store of {written:,} flows over 24h: {size / 1e6:.0f} MB on disk, "
              f"{size / written * 1e6 / 1e6:.1f} MB per million flows, written in {t:.0f}s",
              flush=True)
        t0 = time.time_ns() - span
        lat = []
        for k in range(3):
            since = t0 + (11 + k) * HOUR
            r = asyncio.run(query(path, since, since + HOUR,
                                  [fpb.FlowFilter(source_pod=["default/reviews"],
                                                  destination_port=["9080"])]))
            lat.append(r["latency_s"])
            print(f"  1h since/until + filter (source_pod default/reviews, port 9080): "
                  f"{r['latency_s']:.2f}s, {r['matched']:,} matches of {r['scanned']:,} "
                  f"flows read", flush=True)
        r = asyncio.run(query(path, t0 + 20 * HOUR, t0 + 20 * HOUR + 60 * 10**9,
                              [fpb.FlowFilter(verdict=[fpb.DROPPED])]))
        print(f"  1 min window, verdict DROPPED: {r['latency_s']:.3f}s, {r['matched']} matches")
        print(f"1-hour query over {written:,} flows: median {statistics.median(lat):.2f}s "
              f"(load average {os.getloadavg()[0]:.1f})")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Agent ingest in process, without the kernel or bcc: Ingest.on_event + process +
NodeState.note_batch per 1,000 events into a full 65,535-flow ring, the ring's RSS per
record, flows_rate, and encoding the whole ring.

    .venv/bin/python bench/ingest_micro.py          # CPython's GC defaults
    .venv/bin/python bench/ingest_micro.py tune     # the agent's GC settings (memory.tune_gc)
"""
import asyncio
import ctypes
import gc
import statistics
import sys
import time

from webb_agent.datapath.event import EVENT_SIZE, EVENT_TRACE, FlowEvent, pack
from webb_agent.stores.endpoints import EndpointRegistry, packed_ip, parse_endpoint
from webb_agent.stores.identities import IdentityAllocator
from webb_agent.pipeline.ingest import Ingest
from webb_agent.api.observer import NodeState
from webb_agent.pipeline.wire_cache import FlowWireCache
from webb_agent.stores.ring import Ring
import webb_agent.pipeline.ingest as ingmod
print("module:", ingmod.__file__)


def rss():
    for l in open("/proc/self/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1]) / 1024

tune = "tune" in sys.argv
reg = EndpointRegistry("n", IdentityAllocator())
async def add():
    for n, ip in (("c", "10.0.0.1"), ("s", "10.0.0.2")):
        await reg.upsert(parse_endpoint({"name": n, "namespace": "ns", "ips": [ip], "interface": "l" + n}))
asyncio.run(add())
ring = Ring(65535)
node = NodeState("n", "v", "", ring, lambda: 0)
ing = Ingest(ring, reg, {packed_ip("10.0.0.254")}, on_batch=node.note_batch)
def raw(i):
    return pack(FlowEvent(ts=i * 1000, packets=1, bytes=60, saddr=packed_ip("10.0.0.1"), daddr=packed_ip("10.0.0.2"),
                          smac=b"\2\0\0\0\0\1", dmac=b"\2\0\0\0\0\2", sport=1024 + i % 60000, dport=5000 + i % 256,
                          ifindex=7, pkt_len=60, event_type=EVENT_TRACE, reason=0, family=4, proto=17, tcp_flags=0,
                          point=i & 1, is_reply=0, icmp_type=0, icmp_code=0))
raws = [raw(i) for i in range(8192)]
bufs = [ctypes.create_string_buffer(r, EVENT_SIZE) for r in raws]
addrs = [ctypes.addressof(b) for b in bufs]
if tune:
    from webb_agent.memory import tune_gc
    tune_gc()
r0 = rss()
# fill the ring once (through the callback, as bcc would, in 2,000-event drains)
def drain(n):
    on_event = ing.on_event
    for a in addrs[:n]:
        on_event(0, a, EVENT_SIZE)
    ing.process()
for _ in range(33):
    drain(2000)
r1 = rss()
print(f"ring full: RSS +{r1 - r0:.1f} MiB ({(r1 - r0) * 2**20 / 65535:.0f} B/record)")
# steady state: ring overwriting, timed
samples = []
for rep in range(7):
    t0 = time.process_time()
    for _ in range(50):
        drain(2000)
    samples.append((time.process_time() - t0) / 100 * 1e3)  # 100k events: ms per 1,000
print("ingest CPU per 1,000 events (callback+process+note_batch), ms: median %.2f  (min %.2f)" % (statistics.median(samples), min(samples)))
t0 = time.process_time()
for _ in range(100):
    node.flows_rate()
print(f"flows_rate: {(time.process_time() - t0) / 100 * 1e6:.0f} us/call")
p = FlowWireCache("n", {7: "l"}, "v")
t0 = time.process_time()
for s in range(ring.oldest_seq, ring.next_seq):
    e = ring.get(s)
    if hasattr(e, "wire"):
        p.response(e)
t1 = time.process_time()
gc.collect()
print(f"encode whole ring: {(t1 - t0) / 65535 * 1e6:.1f} us/flow; RSS after: +{rss() - r0:.1f} MiB")

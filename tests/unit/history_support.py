"""Shared by the history and export unit tests: varied datapath records as ingest
makes them (raw perf bytes + endpoint snapshots), fed to a ring like ingest does."""
from __future__ import annotations

import socket
from typing import Any

from webb_agent.datapath.event import (EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE,
                                       POINT_FROM_ENDPOINT, POINT_TO_ENDPOINT, REASON_FLAGS,
                                       REASON_NEW, FlowEvent, pack)
from webb_agent.stores.endpoints import Endpoint, packed_ip
from webb_agent.pipeline.wire_cache import FlowWireCache
from webb_agent.pipeline.record import WORLD, FlowRecord
from webb_agent.stores.ring import Ring

BASE_NS = 1_700_000_000_000_000_000


def endpoint(name: str, ns: str, app: str, ip: str, identity: int) -> Endpoint:
    return Endpoint(name=name, namespace=ns, labels=(f"app={app}",), ips=(ip,),
                    identity=identity, identity_labels=(f"k8s:app={app}",
                                                        f"k8s:io.kubernetes.pod.namespace={ns}"),
                    ).with_wire()


EPS = [endpoint("client-1", "demo", "client", "10.1.0.10", 1001),
       endpoint("server-1", "demo", "server", "10.1.0.11", 1002),
       endpoint("db-0", "shop", "db", "10.1.0.12", 1003),
       WORLD]


def event(i: int) -> FlowEvent:
    """The i-th of a varied mix: TCP/UDP/ICMP, both points, replies, drops, verdicts."""
    kind = i % 11
    proto = (socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_ICMP)[i % 3]
    et = EVENT_DROP if kind == 7 else EVENT_POLICY_VERDICT if kind == 9 else EVENT_TRACE
    return FlowEvent(ts=i, packets=1 + i % 5, bytes=60 + i, saddr=packed_ip(EPS[i % 4].ips[0] if EPS[i % 4].ips else "192.0.2.9"),
                     daddr=packed_ip(EPS[(i + 1) % 4].ips[0] if EPS[(i + 1) % 4].ips else "192.0.2.9"),
                     smac=b"\x02\x00\x00\x00\x00\x01", dmac=b"\x02\x00\x00\x00\x00\x02",
                     sport=30000 + i % 20000, dport=(80, 53, 0, 443, 8080)[i % 5], ifindex=7,
                     pkt_len=60, event_type=et, reason=REASON_NEW if i % 2 else REASON_FLAGS,
                     family=4, proto=proto, tcp_flags=(0x02, 0x12, 0x10, 0x11, 0x04)[i % 5],
                     point=POINT_TO_ENDPOINT if i % 2 else POINT_FROM_ENDPOINT,
                     is_reply=i % 3 == 1, icmp_type=8 if proto == 1 else 0, icmp_code=0,
                     drop_reason=133 if et == EVENT_DROP else 0)


def records(start: int, n: int, t0: int = BASE_NS, step_ns: int = 1_000_000) -> list[FlowRecord]:
    return [FlowRecord(pack(event(i)), t0 + i * step_ns, EPS[i % 4], EPS[(i + 1) % 4])
            for i in range(start, start + n)]


def ingest(ring: Ring, recs: list[FlowRecord], on_batch: Any = None) -> None:
    """What Ingest.process does with a batch: seqs, ring, then the batch hook."""
    seq = ring.next_seq
    for r in recs:
        r.seq = seq
        seq += 1
    ring.write_many(recs)
    if on_batch is not None:
        on_batch(recs)


def wire_cache() -> FlowWireCache:
    return FlowWireCache("node-h", {7: "lxc-h"}, "test")

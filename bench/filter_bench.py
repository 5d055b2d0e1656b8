#!/usr/bin/env python3
"""Hubble FlowFilter evaluation in process: CPU per flow for a typical allow + deny
filter pair (pod, port, verdict; a label deny) on one decoded L3/L4 flow. A figure, not a
pass/fail: it was a timed assertion in tests/unit/test_filters.py before (50 µs bound).

    .venv/bin/python bench/filter_bench.py
"""
import os
import statistics
import sys
import timeit

from webb.api.flow import flow_pb2 as pb
from webb.filters import build_filter

N = 20_000


def typical_flow() -> pb.Flow:
    return pb.Flow(
        uuid="u-1", verdict=pb.FORWARDED,
        IP=pb.IP(source="10.0.0.1", destination="10.0.1.2", ipVersion=pb.IPv4),
        l4=pb.Layer4(TCP=pb.TCP(source_port=43210, destination_port=80,
                                flags=pb.TCPFlags(SYN=True, ACK=True))),
        source=pb.Endpoint(identity=1001, namespace="default", pod_name="xwing-7d9f",
                           labels=["k8s:app=xwing", "k8s:class=ship"]),
        destination=pb.Endpoint(identity=2002, namespace="empire", pod_name="deathstar-5c4",
                                labels=["k8s:app=deathstar"]),
        node_name="kind-worker", traffic_direction=pb.EGRESS,
        event_type=pb.CiliumEventType(type=4, sub_type=3))


def main() -> int:
    allow = [pb.FlowFilter(source_pod=["default/xwing"], destination_port=["80"],
                           verdict=[pb.FORWARDED])]
    deny = [pb.FlowFilter(source_label=["app=tiefighter"])]
    f = build_filter(allow, deny)
    flow = typical_flow()
    if not f(flow):  # the bench would time the wrong branch
        print("filter rejected the flow: broken bench", file=sys.stderr)
        return 1
    runs = timeit.repeat(lambda: f(flow), number=N, repeat=5)
    per = sorted(r / N * 1e6 for r in runs)
    print(f"typical filter: {statistics.median(per):.2f} µs per flow "
          f"(min {per[0]:.2f}, max {per[-1]:.2f}; load {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

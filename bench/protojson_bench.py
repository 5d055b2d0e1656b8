"""Hubble JSON (webb.protojson) per flow: the exporter's line, against
google.protobuf.json_format (the reference, pure Python) on the same flows.

Flows: bench/ui_bench.py's hand-built pool (~60 services, HTTP and DNS, drops), each an
observer.ExportEvent as the exporter writes it. Rounds alternate A B B A so that the
machine's background load hits both sides alike; µs per flow and the ratio are printed.

    .venv/bin/python bench/protojson_bench.py [--flows 2000] [--rounds 4]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from google.protobuf import json_format  # noqa: E402

from ui_bench import build_pool  # noqa: E402
from webb import protojson  # noqa: E402
from webb.api.observer import observer_pb2 as opb  # noqa: E402


def events(n: int) -> list[opb.ExportEvent]:
    out = []
    for raw in build_pool(n):
        res = opb.GetFlowsResponse.FromString(raw)
        out.append(opb.ExportEvent(flow=res.flow, node_name=res.flow.node_name, time=res.flow.time))
    return out


def webb_line(ev: opb.ExportEvent) -> bytes:
    return protojson.line(ev)


def reference_line(ev: opb.ExportEvent) -> bytes:
    d = json_format.MessageToDict(ev, preserving_proto_field_name=True)
    return json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def timed(fn, evs) -> float:
    t = time.process_time()
    for ev in evs:
        fn(ev)
    return (time.process_time() - t) / len(evs) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args()
    evs = events(a.flows)
    for ev in evs[:50]:  # same JSON values as the reference
        assert json.loads(webb_line(ev)) == json.loads(reference_line(ev))
    webb_line(evs[0])  # build the per-type encoders outside the timing
    sides = {"webb.protojson": webb_line, "json_format": reference_line}
    got: dict[str, list[float]] = {k: [] for k in sides}
    order = ["webb.protojson", "json_format", "json_format", "webb.protojson"]
    for _ in range(a.rounds):
        for name in order:
            got[name].append(timed(sides[name], evs))
    print(f"load average {os.getloadavg()[0]:.2f} (2 vCPU shared); {len(evs)} flows, "
          f"{a.rounds} ABBA rounds, CPU µs per flow (median)")
    med = {k: sorted(v)[len(v) // 2] for k, v in got.items()}
    for k, v in med.items():
        print(f"  {k:16s} {v:7.1f} µs/flow   ({1e6 / v:,.0f} flows/s per core)")
    print(f"  ratio json_format / webb.protojson: {med['json_format'] / med['webb.protojson']:.1f}x")


if __name__ == "__main__":
    main()

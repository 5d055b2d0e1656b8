"""Hubble's exporter format: the JSON lines parse as observer.ExportEvent (protojson,
proto names) with the flows the ring serves; rotation, backups, gzip; allow/deny
lists and field masks in Hubble's flag formats."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from google.protobuf import json_format

from history_support import ingest, wire_cache, records
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb_agent.export import (ExportOptionError, RotatingFile, open_exporter, parse_fieldmask,
                               parse_filters)
from webb_agent.stores.ring import Ring


def read_lines(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f]


async def export(tmp_path: Path, n: int = 400, **kw) -> tuple[list[dict], list[fpb.Flow]]:
    p = wire_cache()
    path = tmp_path / "flows.log"
    args = dict(max_size_mb=10, max_backups=5, compress=False, allow=[], deny=[],
                fieldmask=None)
    args.update(kw)
    exp = open_exporter(str(path), wire_cache=p, node_name="node-h", **args)  # type: ignore[arg-type]
    ring: Ring = Ring(4095)
    recs = records(0, n)
    for k in range(0, n, 100):
        ingest(ring, recs[k:k + 100], exp.on_batch)
    await exp.close()
    return read_lines(path), [p.flow(r) for r in recs]


async def test_lines_are_hubble_export_events(tmp_path):
    lines, flows = await export(tmp_path)
    assert len(lines) == len(flows)
    raw = (tmp_path / "flows.log").read_text().splitlines()
    for text, line, flow in zip(raw, lines, flows):
        assert text.startswith('{"flow":{"time":"') and text.endswith(
            f'"node_name":"node-h","time":"{line["time"]}"}}')  # Hubble's field order
        assert set(line) == {"flow", "node_name", "time"}
        assert line["node_name"] == "node-h" and line["time"] == line["flow"]["time"]
        ev = json_format.ParseDict(line, opb.ExportEvent())
        assert ev.flow == flow  # every field round-trips
        if flow.source.pod_name:  # proto names, as Hubble writes them
            assert line["flow"]["source"]["pod_name"] == flow.source.pod_name
    drop = next(x for x in lines if x["flow"]["verdict"] == "DROPPED")
    assert drop["flow"]["l4"] and drop["flow"]["Type"] == "L3_L4"


async def test_allowlist_denylist_and_fieldmask(tmp_path):
    allow = parse_filters('{"source_pod":["demo/"]} {"verdict":["DROPPED"]}', "--export-allowlist")
    deny = parse_filters('[{"protocol":["icmp"]}]', "--export-denylist")
    mask = parse_fieldmask("time, source.pod_name verdict l4")
    lines, flows = await export(tmp_path, allow=allow, deny=deny, fieldmask=mask)
    want = [f for f in flows
            if (f.source.namespace == "demo" or f.verdict == fpb.DROPPED) and not f.l4.HasField("ICMPv4")]
    assert 0 < len(lines) == len(want) < len(flows)
    for line, f in zip(lines, want):
        assert set(line["flow"]) <= {"time", "source", "verdict", "l4"}
        assert line["flow"]["time"] == line["time"]
        if f.source.pod_name:
            assert line["flow"]["source"] == {"pod_name": f.source.pod_name}
        assert line["node_name"] == "node-h"


def test_option_errors_are_clear():
    with pytest.raises(ExportOptionError, match="no field named"):
        parse_filters('{"nope": 1}', "--export-allowlist")
    with pytest.raises(ExportOptionError, match="not JSON"):
        parse_filters('{"source_pod": [', "--export-allowlist")
    with pytest.raises(ExportOptionError, match="source_ip"):
        parse_filters('{"source_ip": ["not-an-ip"]}', "--export-denylist")
    with pytest.raises(ExportOptionError, match="nope"):
        parse_fieldmask("time nope")
    assert parse_filters("", "x") == [] and parse_fieldmask(" ") is None


async def test_rotation_backups_and_gzip(tmp_path):
    f = RotatingFile(str(tmp_path / "flows.log"), 20_000, 3, compress=True)
    line = json.dumps({"flow": {"x": "y" * 180}}).encode() + b"\n"
    for _ in range(60):
        f.write(line * 20)  # 60 × ~4 KB: ~12 rotations
    f.close()
    backups = f.backups()
    assert f.rotations >= 10 and len(backups) == 3  # the oldest were deleted
    assert all(b.endswith(".gz") for b in backups)
    total = 0
    for b in backups + [str(tmp_path / "flows.log")]:
        lines = read_lines(Path(b))  # every file holds whole JSON lines
        total += len(lines)
        assert os.path.getsize(b) <= 20_000 or b.endswith(".gz")
    assert total > 0
    names = [os.path.basename(b) for b in backups]
    assert all(n.startswith("flows-") and n.endswith(".log.gz") for n in names)


async def test_falling_behind_writes_a_lost_events_line(tmp_path):
    p = wire_cache()
    path = tmp_path / "flows.log"
    exp = open_exporter(str(path), 10, 5, False, [], [], None, p, "node-h", max_pending=150)
    ring: Ring = Ring(4095)
    for k in range(5):
        ingest(ring, records(k * 100, 100), exp.on_batch)
    await exp.close()
    lines = read_lines(path)
    lost = [x for x in lines if "lost_events" in x]
    assert lost and lost[0]["lost_events"]["source"] == "OBSERVER_EVENTS_QUEUE"
    assert int(lost[0]["lost_events"]["num_events_lost"]) + len(lines) - 1 == 500

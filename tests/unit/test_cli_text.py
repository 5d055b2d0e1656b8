"""The text machinery of the webb command line: Go durations, Hubble's time layouts, Go's
tab writer, Hubble's JSON encoding."""
from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from webb.api.flow import flow_pb2 as fpb
from webb import protojson
from webb.durations import format_duration, parse_duration
from webb_cli.tabwriter import tabulate
from webb_cli.timefmt import format_time, parse_time


@pytest.mark.parametrize("text,ns", [
    ("0", 0), ("5m", 300 * 10**9), ("1h30m", 5400 * 10**9), ("300ms", 300 * 10**6),
    ("1.5h", 5400 * 10**9), ("-2s", -2 * 10**9), ("+1s", 10**9), ("1us", 1000), ("1µs", 1000),
    ("2h45m30.5s", (2 * 3600 + 45 * 60 + 30) * 10**9 + 5 * 10**8), (".5s", 5 * 10**8),
    ("1h43m", 103 * 60 * 10**9),
])
def test_parse_duration(text, ns):
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "5", "m", "1x", "1.s.", "s5", "1h 30m", ".s"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("ns,text", [
    (0, "0s"), (1, "1ns"), (1500, "1.5µs"), (1_500_000, "1.5ms"), (10**9, "1s"),
    (100 * 10**9, "1m40s"), (3600 * 10**9, "1h0m0s"), (3_723_500_000_000, "1h2m3.5s"),
    (-90 * 10**9, "-1m30s"), (10**9 + 1, "1.000000001s"),
])
def test_format_duration_as_go(ns, text):
    assert format_duration(ns) == text


def test_parse_time_relative_and_layouts():
    now = 1_700_000_000.25
    assert parse_time("10s", now) == Timestamp(seconds=1_699_999_990, nanos=250_000_000)
    assert parse_time("2023-11-14", now).ToJsonString() == "2023-11-14T00:00:00Z"
    assert parse_time("2023-11-14T22:13:20.123456789Z").ToJsonString() == "2023-11-14T22:13:20.123456789Z"
    assert parse_time("2023-11-14T22:13:20-01:30").ToJsonString() == "2023-11-14T23:43:20Z"
    for bad in ("2023-11-14T22", "14/11/2023", "Wed, 14 Nov 2023 22:13:20 +0000", "2023-02-30"):
        with pytest.raises(ValueError):
            parse_time(bad)
    assert parse_time("Tue, 14 Nov 2023 22:13:20 +0000").ToJsonString() == "2023-11-14T22:13:20Z"


def test_format_time_invalid_is_na():
    assert format_time(None) == "N/A"
    assert format_time(Timestamp(seconds=10**13)) == "N/A"
    assert format_time(Timestamp(seconds=0)) == "Jan  1 00:00:00.000"


def test_tabwriter_like_go():
    assert tabulate("a\tbb\tc\nddd\te\tf\n") == "a     bb   c\nddd   e    f\n"
    # a line without tabs ends the column blocks above it
    assert tabulate("a\tb\nlonglonglong\nccc\td\n") == "a   b\nlonglonglong\nccc   d\n"
    # cells of a column block line up even when later lines have fewer cells
    assert tabulate("x\ty\tz\nxxxx\tyy\n") == "x      y   z\nxxxx   yy\n"
    assert tabulate("ID\tLABELS\n1\ta\n\tb\n", minwidth=5) == "ID   LABELS\n1    a\n     b\n"
    assert tabulate("a\t\tb\t\n", strip=True) == "a      b\n"
    assert tabulate("") == ""


def test_protojson_declaration_order_and_escaping():
    f = fpb.Flow(Summary="a<b>&c", uuid="u", verdict=fpb.DROPPED,
                 source=fpb.Endpoint(labels=["x"], ID=3, pod_name="p"))
    assert protojson.message_json(f) == (
        '{"uuid":"u","verdict":"DROPPED","source":{"ID":3,"labels":["x"],"pod_name":"p"},'
        '"Summary":"a\\u003cb\\u003e\\u0026c"}')
    flt = protojson.parse_messages('{"source_pod":["a/"]}\n{"destinationPod":["b/"]}', fpb.FlowFilter)
    assert flt == [fpb.FlowFilter(source_pod=["a/"]), fpb.FlowFilter(destination_pod=["b/"])]
    assert protojson.message_json(fpb.Flow()) == "{}"

"""The exporter's flags in Hubble's formats.

--export-allowlist / --export-denylist: JSON-encoded FlowFilters, whitespace
separated like Hubble's hubble-export-allowlist ('{"source_pod":["kube-system/"]}
{"verdict":["DROPPED"]}'); a JSON array of them is accepted too. Field names may
be proto names or JSON (camelCase) names, as protojson reads them.
--export-fieldmask: flow.Flow field paths, space or comma separated
("time source.namespace verdict").
"""
from __future__ import annotations

import json
from typing import Any

from google.protobuf import field_mask_pb2, json_format

from webb.api.flow import flow_pb2 as fpb
from webb.filters import FilterError, build_filter_list


class ExportOptionError(ValueError):
    pass


def parse_filters(text: str, flag: str = "filter") -> list[fpb.FlowFilter]:
    text = text.strip()
    if not text:
        return []
    dec = json.JSONDecoder()
    objs: list[Any] = []
    pos = 0
    for _ in range(len(text) + 1):  # bounded: each round consumes one JSON value
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            break
        try:
            value, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise ExportOptionError(f"{flag}: not JSON FlowFilters: {e}") from None
        objs.extend(value if isinstance(value, list) else [value])
    out = []
    for obj in objs:
        if not isinstance(obj, dict):
            raise ExportOptionError(f"{flag}: each filter must be a JSON object, got {obj!r}")
        try:
            out.append(json_format.ParseDict(obj, fpb.FlowFilter()))
        except json_format.ParseError as e:
            msg = str(e).split(" Available Fields")[0]  # not the list of every field
            raise ExportOptionError(f"{flag}: {msg}") from None
    try:
        build_filter_list(out)  # the filter kinds check their values (CIDRs, selectors, ...)
    except FilterError as e:
        raise ExportOptionError(f"{flag}: {e}") from None
    return out


def parse_fieldmask(text: str) -> field_mask_pb2.FieldMask | None:
    paths = [p for p in text.replace(",", " ").split() if p]
    if not paths:
        return None
    mask = field_mask_pb2.FieldMask(paths=paths)
    if not mask.IsValidForDescriptor(fpb.Flow.DESCRIPTOR):
        bad = [p for p in paths
               if not field_mask_pb2.FieldMask(paths=[p]).IsValidForDescriptor(fpb.Flow.DESCRIPTOR)]
        raise ExportOptionError(f"--export-fieldmask: not flow.Flow fields: {', '.join(bad)}")
    return mask

"""Hubble's flow exporter (JSON lines in a rotated file), off the ingest hot path.

    exporter.py  batches from ingest → filter → field mask → JSON lines
    rotate.py    size rotation, backups, gzip (lumberjack's behaviour)
    options.py   the --export-* flags in Hubble's formats

The JSON itself is webb.protojson (shared with the CLI and the UI).
"""
from __future__ import annotations

from typing import Any, Sequence

from google.protobuf import field_mask_pb2

from webb.api.flow import flow_pb2 as fpb

from ..stores.history.encoding import wire_encoder
from ..pipeline.wire_cache import FlowWireCache
from .exporter import FlowExporter
from .options import ExportOptionError, parse_fieldmask, parse_filters
from .rotate import RotatingFile

__all__ = ["ExportOptionError", "FlowExporter", "RotatingFile", "open_exporter",
           "parse_fieldmask", "parse_filters"]


def open_exporter(path: str, max_size_mb: int, max_backups: int, compress: bool,
                  allow: Sequence[fpb.FlowFilter], deny: Sequence[fpb.FlowFilter],
                  fieldmask: field_mask_pb2.FieldMask | None, wire_cache: FlowWireCache,
                  node_name: str, **kw: Any) -> FlowExporter:
    out = RotatingFile(path, max_size_mb * 1024 * 1024, max_backups, compress)
    return FlowExporter(out, wire_encoder(wire_cache), allow, deny, fieldmask,
                        loop_wire=wire_cache.cache_wire, node_name=node_name, **kw)

"""History and export as the agent uses them: flags, start-up, batch hook, tasks.

Kept here so the agent's own modules only call in at five points (config, ring
start seq, on_batch, the observer's reader, tasks/close).
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine

from google.protobuf import field_mask_pb2

from webb.api.flow import flow_pb2 as fpb
from webb.durations import parse_duration

from ...pipeline.wire_cache import FlowWireCache
from . import DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, History
from .sizes import parse_size

log = logging.getLogger(__name__)

Batch = Callable[[list[Any]], None]


@dataclass
class PersistConfig:
    history_dir: str = ""  # empty: no history
    history_max_bytes: int = parse_size(DEFAULT_MAX_BYTES)
    history_max_age_ns: int = parse_duration(DEFAULT_MAX_AGE)
    history_flush_interval: float = 1.0
    export_file_path: str = ""  # empty: no export
    export_file_max_size_mb: int = 10
    export_file_max_backups: int = 5
    export_file_compress: bool = False
    export_allowlist: list[fpb.FlowFilter] = field(default_factory=list)
    export_denylist: list[fpb.FlowFilter] = field(default_factory=list)
    export_fieldmask: field_mask_pb2.FieldMask | None = None


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("flow history (a per-node store behind GetFlows since/until)")
    g.add_argument("--history-dir", default="", metavar="DIR",
                   help="keep flows beyond the ring in this directory ('' disables, the default)")
    g.add_argument("--history-max-bytes", default=DEFAULT_MAX_BYTES, metavar="SIZE",
                   help=f"disk the history may use, e.g. 300MB, 2GiB (default {DEFAULT_MAX_BYTES})")
    g.add_argument("--history-max-age", default=DEFAULT_MAX_AGE, metavar="DURATION",
                   help=f"oldest flows kept, a Go duration (default {DEFAULT_MAX_AGE})")
    g = p.add_argument_group("flow export (Hubble's exporter: JSON lines in a rotated file)")
    g.add_argument("--export-file-path", default="", metavar="PATH",
                   help="write flows to this file ('stdout' for standard output; '' disables)")
    g.add_argument("--export-file-max-size-mb", type=int, default=10, metavar="MB",
                   help="rotate the file at this size (default 10)")
    g.add_argument("--export-file-max-backups", type=int, default=5, metavar="N",
                   help="rotated files kept (default 5)")
    g.add_argument("--export-file-compress", action="store_true",
                   help="gzip rotated files")
    g.add_argument("--export-allowlist", default="", metavar="JSON",
                   help="export only flows matching these FlowFilters (JSON, like Hubble's "
                        "hubble-export-allowlist)")
    g.add_argument("--export-denylist", default="", metavar="JSON",
                   help="do not export flows matching these FlowFilters")
    g.add_argument("--export-fieldmask", default="", metavar="PATHS",
                   help="export only these flow fields, space or comma separated "
                        "(e.g. 'time source.namespace destination.namespace verdict')")


def config_from_args(a: argparse.Namespace, p: argparse.ArgumentParser) -> PersistConfig:
    """PersistConfig of parsed flags; bad values end with p.error (a clear message)."""
    from ...export.options import ExportOptionError, parse_fieldmask, parse_filters
    try:
        max_bytes = parse_size(a.history_max_bytes)
    except ValueError as e:
        p.error(f"--history-max-bytes: {e}")
    try:
        max_age = parse_duration(a.history_max_age)
    except ValueError as e:
        p.error(f"--history-max-age: {e}")
    if max_bytes < 1 << 20:
        p.error("--history-max-bytes must be at least 1MiB")
    if max_age <= 0:
        p.error("--history-max-age must be positive")
    if a.export_file_max_size_mb <= 0:
        p.error("--export-file-max-size-mb must be positive")
    if a.export_file_max_backups < 0:
        p.error("--export-file-max-backups cannot be negative")
    try:
        allow = parse_filters(a.export_allowlist, "--export-allowlist")
        deny = parse_filters(a.export_denylist, "--export-denylist")
        mask = parse_fieldmask(a.export_fieldmask)
    except ExportOptionError as e:
        p.error(str(e))
    return PersistConfig(
        history_dir=a.history_dir, history_max_bytes=max_bytes, history_max_age_ns=max_age,
        export_file_path=a.export_file_path, export_file_max_size_mb=a.export_file_max_size_mb,
        export_file_max_backups=a.export_file_max_backups,
        export_file_compress=a.export_file_compress, export_allowlist=allow,
        export_denylist=deny, export_fieldmask=mask)


class Persistence:
    """Opened when the agent is built (the ring continues the store's seqs)."""

    def __init__(self, cfg: PersistConfig) -> None:
        self.cfg = cfg
        self.history = (History(cfg.history_dir, cfg.history_max_bytes, cfg.history_max_age_ns,
                                cfg.history_flush_interval) if cfg.history_dir else None)
        if self.history is not None:
            log.info("%s", self.history.describe())
        self.exporter: Any = None

    @property
    def start_seq(self) -> int:
        return self.history.next_seq if self.history is not None else 0

    def bind(self, wire_cache: FlowWireCache, node_name: str, on_batch: Batch) -> Batch:
        """The ingest batch hook: the agent's own, then history's and export's."""
        hooks = [on_batch]
        if self.history is not None:
            self.history.bind(wire_cache)
            hooks.append(self.history.on_batch)
        c = self.cfg
        if c.export_file_path:
            from ...export import open_exporter
            self.exporter = open_exporter(
                c.export_file_path, c.export_file_max_size_mb, c.export_file_max_backups,
                c.export_file_compress, c.export_allowlist, c.export_denylist,
                c.export_fieldmask, wire_cache, node_name)
            hooks.append(self.exporter.on_batch)
            log.info("exporting flows to %s", c.export_file_path)
        if len(hooks) == 1:
            return on_batch

        def fan_out(recs: list[Any]) -> None:
            for h in hooks:
                h(recs)
        return fan_out

    def serve(self, observer: Any) -> None:
        """GetFlows reads the store and the ring as one."""
        if self.history is not None and self.history.reader is not None:
            observer.read_flows = self.history.reader

    def tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        out: list[tuple[str, Coroutine[Any, Any, None]]] = []
        if self.history is not None and self.history.writer is not None:
            out.append(("history", self.history.run()))
        if self.exporter is not None:
            out.append(("export", self.exporter.run()))
        return out

    async def close(self, next_seq: int) -> None:
        """Writes what is pending (a clean stop loses nothing)."""
        if self.exporter is not None:
            try:
                await self.exporter.close()
            except Exception:
                log.exception("closing the flow export")
        if self.history is not None:
            await self.history.close(next_seq)
            log.info("%s", self.history.describe())

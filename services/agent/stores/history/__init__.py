"""Flow history beyond the ring buffer: a per-node store queried through GetFlows.

    store.py    segment files, retention by size and age, crash and full-disk handling
    segment.py  the frame format (length + crc framing, per-frame index header)
    batch.py    the columns of one persisted batch (raw records, interned endpoints)
    writer.py   batches from ingest to disk, off the hot path
    reader.py   GetFlows over store + ring as one sequence (since/until/number/first)
    encoding.py flow bytes for stored records, the store's UUID salt

The agent uses the facade below (docs/history.md has the design and figures).
"""
from __future__ import annotations

import time
from typing import Any

from ...pipeline.wire_cache import FlowWireCache
from .encoding import use_store_salt, wire_encoder
from .reader import HistoryReader
from .sizes import format_size, parse_size
from .store import HistoryStore
from .writer import HistoryWriter

__all__ = ["History", "HistoryStore", "parse_size", "format_size"]

DEFAULT_MAX_BYTES = "300MB"  # about two days of the demo per node (docs/history.md)
DEFAULT_MAX_AGE = "24h"


class History:
    """The store opened at start-up (so the ring continues its sequence numbers),
    its writer and reader bound to the agent's wire cache."""

    def __init__(self, directory: str, max_bytes: int, max_age_ns: int,
                 flush_interval: float = 1.0) -> None:
        self.store = HistoryStore(directory, max_bytes, max_age_ns)
        self.store.open()
        self.flush_interval = flush_interval
        self.writer: HistoryWriter | None = None
        self.reader: HistoryReader | None = None

    @property
    def next_seq(self) -> int:
        return self.store.next_seq

    def bind(self, wire_cache: FlowWireCache) -> None:
        use_store_salt(wire_cache, self.store.salt)
        self.writer = HistoryWriter(self.store, wire_encoder(wire_cache), wire_cache.cache_wire,
                                    interval=self.flush_interval)
        self.reader = HistoryReader(self.store, self.writer)

    def on_batch(self, recs: list[Any]) -> None:
        assert self.writer is not None
        self.writer.on_batch(recs)

    async def run(self) -> None:
        assert self.writer is not None
        await self.writer.run()

    async def close(self, next_seq: int) -> None:
        if self.writer is not None:
            await self.writer.close(next_seq)
        else:
            self.store.close(next_seq)

    def describe(self) -> str:
        s = self.store
        oldest = s.oldest_time
        age = f", oldest {(time.time_ns() - oldest) / 1e9:.0f}s ago" if oldest else ""
        return (f"history in {s.dir}: {s.total_flows()} flows, {format_size(s.total_bytes())}"
                f"{age}; next seq {s.next_seq}")

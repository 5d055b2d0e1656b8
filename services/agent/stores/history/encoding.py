"""How the writer and the exporter get a record's flow.Flow bytes without racing the
event loop: from bytes already encoded, else from the raw bytes captured at ingest
(never from the record's own `raw`, which a reader may drop meanwhile)."""
from __future__ import annotations

from typing import Any, Callable

from ...datapath.event import decode
from ...pipeline.wire_cache import FlowWireCache
from ...pipeline.record import FlowRecord


def capture_raws(recs: list[Any]) -> list[bytes | None]:
    """The records' raw bytes, taken in the batch hook before any reader can drop them."""
    try:
        return [r.raw for r in recs]
    except AttributeError:  # records of other kinds may have no raw bytes at all
        return [getattr(r, "raw", None) for r in recs]


def wire_encoder(wire_cache: FlowWireCache) -> Callable[[Any, bytes | None], bytes]:
    encoder = wire_cache.encoder

    def wire_of(rec: Any, raw: bytes | None) -> bytes:
        if rec.wire is None and raw is not None and rec.__class__ is FlowRecord:
            src, dst = rec.src, rec.dst
            return encoder.encode(decode(raw), rec.time_ns, rec.seq,
                                  src.wire or src.with_wire().wire,
                                  dst.wire or dst.with_wire().wire)
        # Encoded already (the body, read here, is set once), or a kind of record
        # that encodes itself on the loop (L7).
        return wire_cache.cache_wire(rec)

    return wire_of


def use_store_salt(wire_cache: FlowWireCache, salt: str) -> None:
    """Flow UUIDs are salt + seq: with the store's salt (kept across restarts) and
    monotonic seqs, a stored flow has the same UUID before and after a restart."""
    if len(salt) >= 16:
        wire_cache.encoder.set_uuid_salt(salt)

"""One persisted batch of flows: columns of raw datapath records, interned endpoints.

Encoding a flow.Flow costs a few microseconds of Python; the agent ingests up to
~175k events/s, so the store keeps what ingest already has: each trace record's raw
perf bytes (104 bytes), its time and sequence number, and the two endpoint
snapshots it was seen with, interned once per batch (an endpoint's flow.Endpoint
wire bytes). Flows are encoded from these when somebody reads them, by the same
encoder as the ring's, so a stored flow reads exactly like the ring's.

Records that are not plain traces (drops and policy verdicts: their encoding
names policies that may change, and they are rare) and records without raw bytes
are stored as their encoded flow.Flow bytes instead.

Columns compress well (times and sequence numbers are nearly sequential, raw
records share most bytes), so a batch is stored column by column:

    head   n, n_endpoints, raw_bytes, wire_bytes              (<IIII)
    eps    n_endpoints × (length <I, flow.Endpoint bytes)
    seq    n × <q      time   n × <q
    src    n × <I      dst    n × <I   (endpoint index)
    rawlen n × <H      wirelen n × <I
    raw    the raw records, concatenated
    wire   the encoded flows, concatenated
"""
from __future__ import annotations

import struct
import sys
from array import array
from operator import attrgetter
from typing import Any, Callable, Sequence

from ...datapath.event import EVENT_SIZE, EVENT_TRACE, FlowEvent, decode, pack
from ...pipeline.prefilter import L4_OF_RECORD
from ...pipeline.record import FlowRecord

Keep = Callable[[tuple[int, int, int], Any, Any], bool]
_HEAD = struct.Struct("<IIII")
_LEN = struct.Struct("<I")
_LITTLE = sys.byteorder == "little"


def _event_type_offset() -> int | None:
    """Where event_type sits in a raw record, found from the layout itself (so a
    change of bpf/event.h needs no change here); None if it cannot be found."""
    fields = {f: 0 for f in FlowEvent._fields}
    fields.update(saddr=b"\0" * 16, daddr=b"\0" * 16, smac=b"\0" * 6, dmac=b"\0" * 6)
    try:
        a = pack(FlowEvent(**{**fields, "event_type": 0}))  # type: ignore[arg-type]
        b = pack(FlowEvent(**{**fields, "event_type": 0xA5}))  # type: ignore[arg-type]
    except Exception:
        return None
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    return diff[0] if len(diff) == 1 else None


EVENT_TYPE_OFFSET = _event_type_offset()


class StoredEndpoint:
    """An endpoint as stored: only its flow.Endpoint bytes (all the encoder reads);
    namespace and pod name parsed from them when a filter asks (once per endpoint
    of a frame)."""

    __slots__ = ("wire", "_ns_name")

    def __init__(self, wire: bytes) -> None:
        self.wire = wire
        self._ns_name: tuple[str, str] | None = None

    def with_wire(self) -> "StoredEndpoint":
        return self

    def _parse(self) -> tuple[str, str]:
        if self._ns_name is None:
            from webb.api.flow import flow_pb2

            ep = flow_pb2.Endpoint.FromString(self.wire)
            self._ns_name = (ep.namespace, ep.pod_name)
        return self._ns_name

    @property
    def namespace(self) -> str:
        return self._parse()[0]

    @property
    def name(self) -> str:
        return self._parse()[1]


def _ep_wire(ep: Any) -> bytes:
    w = ep.wire
    return w if w else ep.with_wire().wire


_seq_of = attrgetter("seq")
_time_of = attrgetter("time_ns")
_src_of = attrgetter("src")
_dst_of = attrgetter("dst")


def pack_batch(recs: Sequence[Any], raws: Sequence[bytes | None],
               wire_of: Callable[[Any, bytes | None], bytes]) -> bytes:
    """Column bytes of records with their raw bytes (captured when they were
    ingested: a reader may drop a ring record's raw bytes once encoded).
    wire_of(rec, raw) encodes the records kept as flow.Flow bytes.

    Written with map/comprehensions over whole columns: this runs at the ingest
    rate in the writer thread, which shares the GIL with ingest."""
    n = len(recs)
    off = EVENT_TYPE_OFFSET
    all_raw = False
    raw_blob = b""
    if off is not None and None not in raws:
        raw_blob = b"".join(raws)  # type: ignore[arg-type]
        if len(raw_blob) == n * EVENT_SIZE:
            # Ingest makes every datapath record EVENT_SIZE bytes: the event types are
            # a strided slice of the joined records (C speed, no per-record Python).
            all_raw = raw_blob[off::EVENT_SIZE].count(EVENT_TRACE) == n
    if not all_raw:
        if off is not None:
            kinds = [raw[off] if raw is not None else -1 for raw in raws]
        else:
            kinds = [decode(raw).event_type if raw is not None else -1 for raw in raws]
    srcs_e = list(map(_src_of, recs))
    dsts_e = list(map(_dst_of, recs))
    # Endpoints interned by object identity (snapshots are shared by reference): the
    # dicts keep one object per id, in first-seen order, in one C-level pass each.
    ids_s = list(map(id, srcs_e))
    ids_d = list(map(id, dsts_e))
    by_id = dict(zip(ids_s, srcs_e))
    by_id.update(zip(ids_d, dsts_e))
    index = {k: i for i, k in enumerate(by_id)}
    ep_wires = [_ep_wire(ep) for ep in by_id.values()]
    srcs = array("I", map(index.__getitem__, ids_s))
    dsts = array("I", map(index.__getitem__, ids_d))
    seqs = array("q", map(_seq_of, recs))
    times = array("q", map(_time_of, recs))
    if all_raw:
        rawlens = array("H", [EVENT_SIZE]) * n
        wirelens = array("I", bytes(4 * n))
        wire_blob = b""
    else:
        keep = [k == EVENT_TRACE for k in kinds]
        rawlens = array("H", [len(raw) if k else 0 for raw, k in zip(raws, keep)])  # type: ignore[arg-type]
        raw_blob = b"".join([raw for raw, k in zip(raws, keep) if k])  # type: ignore[misc]
        wires = [b"" if k else wire_of(r, raw) for r, raw, k in zip(recs, raws, keep)]
        wirelens = array("I", map(len, wires))
        wire_blob = b"".join(wires)
    cols = [seqs, times, srcs, dsts, rawlens, wirelens]
    if not _LITTLE:
        for c in cols:
            c.byteswap()
    eps = b"".join(_LEN.pack(len(w)) + w for w in ep_wires)
    return b"".join([_HEAD.pack(n, len(ep_wires), len(raw_blob), len(wire_blob)), eps,
                     *(c.tobytes() for c in cols), raw_blob, wire_blob])


def unpack_batch(data: bytes, keep: Keep | None = None) -> list[FlowRecord]:
    """The records of a batch, as ring-like FlowRecords (raw ones encoded when read).
    keep(l4, src, dst): False leaves out a raw record (a reader's pre-filter,
    pipeline/prefilter.py: only records its request cannot match), before a record is made."""
    n, n_eps, raw_len, wire_len = _HEAD.unpack_from(data, 0)
    pos = _HEAD.size
    eps: list[StoredEndpoint] = []
    for _ in range(n_eps):
        (ln,) = _LEN.unpack_from(data, pos)
        pos += 4
        eps.append(StoredEndpoint(bytes(data[pos:pos + ln])))
        pos += ln
    cols = []
    for code in ("q", "q", "I", "I", "H", "I"):
        a = array(code)
        size = a.itemsize * n
        a.frombytes(data[pos:pos + size])
        if not _LITTLE:
            a.byteswap()
        cols.append(a)
        pos += size
    seqs, times, srcs, dsts, rawlens, wirelens = cols
    raw_pos, wire_pos = pos, pos + raw_len
    if wire_pos + wire_len != len(data):
        raise ValueError("batch columns do not add up to its length")
    new = FlowRecord.__new__
    out: list[FlowRecord] = []
    append = out.append
    l4s: list[tuple[int, int, int]] = []
    if keep is not None and raw_len % EVENT_SIZE == 0 \
            and rawlens.count(0) + rawlens.count(EVENT_SIZE) == n:
        l4s = list(L4_OF_RECORD.iter_unpack(data[raw_pos:raw_pos + raw_len]))
    k = 0
    for i in range(n):
        rl = rawlens[i]
        if l4s and rl:
            ok = keep(l4s[k], eps[srcs[i]], eps[dsts[i]])  # type: ignore[misc]
            k += 1
            if not ok:
                raw_pos += rl
                continue
        r = new(FlowRecord)
        r.seq = seqs[i]
        r.time_ns = times[i]
        if rl:
            r.raw = data[raw_pos:raw_pos + rl]
            raw_pos += rl
            r.src = eps[srcs[i]]
            r.dst = eps[dsts[i]]
            r.wire = None
        else:
            wl = wirelens[i]
            r.wire = data[wire_pos:wire_pos + wl]
            wire_pos += wl
            r.raw = None
            r.src = r.dst = None
        append(r)
    return out

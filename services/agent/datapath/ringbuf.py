"""A BPF ring buffer (BPF_MAP_TYPE_RINGBUF) read by the agent itself: the L7 records'
way from the datapath (bpf/l7.h l7_events).

The map's fd is mapped as the kernel allows it: the consumer page read-write at
offset 0, the producer page and the data area (mapped twice in a row by the kernel,
so a record never wraps) read-only after it. drain() reads every committed record
since the last drain, in the order the programs reserved them (one ring for all CPUs),
and moves consumer_pos. It runs in C (_ringbuf.c) where scripts/build_ext.py built it,
else in Python (drain_py, the twin; tests/unit/test_ringbuf.py compares them).

Nobody waits on the ring: the programs write with BPF_RB_NO_WAKEUP and the agent
drains on its timer (pipeline/ingest.py). A record the ring had no room for is
counted by the program (STAT_L7_LOST) and reported from that count.
"""
from __future__ import annotations

import mmap
import struct
from typing import Any

try:
    from . import _ringbuf
except ImportError:  # not built (scripts/build_ext.py): the Python twin reads the ring
    _ringbuf = None  # type: ignore[assignment]

BUSY = 1 << 31     # BPF_RINGBUF_BUSY_BIT: reserved, not yet committed
DISCARD = 1 << 30  # BPF_RINGBUF_DISCARD_BIT: committed as discarded, skip it
HDR = 8            # BPF_RINGBUF_HDR_SZ
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def reader() -> str:
    """Which reader drains the rings: "C" or "Python"."""
    return "C" if _ringbuf is not None else "Python"


def drain_py(consumer: Any, producer: Any, out: list[bytes]) -> int:
    """_ringbuf.drain in Python: appends each committed record's bytes to out, stops at
    the first record still being written, stores consumer_pos; returns how many.

    (Plain loads and stores through the mapping: x86-64 keeps them in order (the
    producer's position and each header read before the record, consumer_pos written
    after), weaker machines such as arm64 do not promise it, so there the C reader,
    with its acquire/release, is the one to build.)"""
    page = mmap.PAGESIZE
    size = (len(producer) - page) // 2
    if size <= 0 or size & (size - 1) or len(producer) != page + 2 * size:
        raise ValueError("not a BPF ring buffer mapping")
    mask = size - 1
    cons = _U64.unpack_from(consumer, 0)[0]
    prod = _U64.unpack_from(producer, 0)[0]
    n = 0
    while cons < prod:
        at = page + (cons & mask)
        length = _U32.unpack_from(producer, at)[0]
        if length & BUSY:
            break
        rec = length & ~(BUSY | DISCARD)
        if rec > size - HDR:
            raise ValueError("BPF ring buffer record longer than the ring")
        if not length & DISCARD:
            out.append(producer[at + HDR:at + HDR + rec])
            n += 1
        cons += (rec + HDR + 7) & ~7
    _U64.pack_into(consumer, 0, cons)
    return n


class RingBuf:
    """One BPF_MAP_TYPE_RINGBUF map, mapped from its fd; data_size in bytes."""

    def __init__(self, map_fd: int, data_size: int) -> None:
        page = mmap.PAGESIZE
        self.consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self.producer = mmap.mmap(map_fd, page + 2 * data_size, mmap.MAP_SHARED,
                                      mmap.PROT_READ, offset=page)
        except BaseException:
            self.consumer.close()
            raise
        self._drain = _ringbuf.drain if _ringbuf is not None else drain_py

    def drain(self, out: list[bytes]) -> int:
        return self._drain(self.consumer, self.producer, out)

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()

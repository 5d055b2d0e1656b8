"""The L7 perf buffer read in C (_perfring.c) instead of through bcc's per-record
ctypes callbacks: a second mapping of each CPU's ring that bcc opened (the kernel
maps the same ring buffer again), drained into a list of record bytes per drain.

bcc still owns the buffers (opening, closing, the map's fds) and its consume() still
runs after this one: whatever it finds (records written in between) goes through the
callbacks into the same list, so either reader may take a record and none is read
twice (both move the ring's tail in the one ingest thread). Lost-record counts are
reported as bcc reports them (one count, no CPU).
"""
from __future__ import annotations

import logging
import mmap
from typing import Any, Callable

log = logging.getLogger(__name__)

try:
    from . import _perfring
except ImportError:  # not built (scripts/build_ext.py): bcc's callbacks read the ring
    _perfring = None  # type: ignore[assignment]


def available() -> bool:
    return _perfring is not None


class PerfRings:
    """The per-CPU rings of one BPF_PERF_OUTPUT table that bcc opened."""

    def __init__(self, bpf: Any, table: Any, page_cnt: int) -> None:
        from bcc.libbcc import lib

        assert _perfring is not None
        self.rings: list[tuple[int, mmap.mmap]] = []
        size = (page_cnt + 1) * mmap.PAGESIZE  # the control page and the data pages
        for (tid, cpu), reader in sorted(bpf.perf_buffers.items(), key=lambda kv: kv[0][1]):
            if tid != id(table):
                continue
            fd = lib.perf_reader_fd(reader)
            self.rings.append((cpu, mmap.mmap(fd, size, mmap.MAP_SHARED,
                                              mmap.PROT_READ | mmap.PROT_WRITE)))
        if not self.rings:
            raise RuntimeError("no perf buffer of that table is open")

    def drain(self, on_batch: Callable[[list[bytes]], None],
              on_lost: Callable[[int], None]) -> None:
        out: list[bytes] = []
        for _, ring in self.rings:
            lost = _perfring.drain(ring, out)
            if lost:
                on_lost(lost)
        if out:
            on_batch(out)

    def close(self) -> None:
        for _, ring in self.rings:
            ring.close()
        self.rings = []

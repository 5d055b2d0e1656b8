"""datapath/_perfring.c: the C reader of a perf ring, on a ring laid out as the kernel
lays it out (control page, then a power-of-two data area; records 8-byte aligned,
wrapping around the end). The real rings are read by it in the L7 e2e tests."""
from __future__ import annotations

import mmap
import random
import struct

from webb_agent.datapath import perf_ring

PERF_RECORD_LOST, PERF_RECORD_SAMPLE = 2, 9
HEAD, TAIL, OFFSET, SIZE = 1024, 1032, 1040, 1048  # struct perf_event_mmap_page


class Ring:
    """A perf ring in anonymous memory, written as the kernel writes one."""

    def __init__(self, pages: int = 2) -> None:
        self.page = mmap.PAGESIZE
        self.size = pages * self.page
        self.mm = mmap.mmap(-1, self.page + self.size)
        struct.pack_into("<QQ", self.mm, OFFSET, self.page, self.size)
        self.head = 0

    def set_position(self, pos: int) -> None:
        self.head = pos
        struct.pack_into("<QQ", self.mm, HEAD, pos, pos)

    def _write(self, rec: bytes) -> None:
        for i, b in enumerate(rec):
            self.mm[self.page + (self.head + i) % self.size] = b
        self.head += len(rec)

    def sample(self, raw: bytes) -> bytes:
        """A PERF_RECORD_SAMPLE of raw data; returns the bytes a reader must give (the
        kernel pads the raw data so that its u32 size and it end 8-aligned)."""
        padded = raw + b"\0" * (-(len(raw) + 4) % 8)
        self._write(struct.pack("<IHH", PERF_RECORD_SAMPLE, 0, 8 + 4 + len(padded))
                    + struct.pack("<I", len(padded)) + padded)
        return padded

    def lost(self, n: int) -> None:
        self._write(struct.pack("<IHHQQ", PERF_RECORD_LOST, 0, 24, 7, n))

    def publish(self) -> None:
        struct.pack_into("<Q", self.mm, HEAD, self.head)

    def tail(self) -> int:
        return struct.unpack_from("<Q", self.mm, TAIL)[0]


def test_c_reader_gives_every_record_in_order_across_the_wrap():
    assert perf_ring.available(), "_perfring.c not built: run make setup"
    rnd = random.Random(5)
    ring = Ring()
    ring.set_position(ring.size - 40)  # the first records wrap around the end
    want, lost = [], 0
    for i in range(30):
        if i % 7 == 3:
            ring.lost(i)
            lost += i
        want.append(ring.sample(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300)))))
    ring.publish()
    out: list[bytes] = []
    assert perf_ring._perfring.drain(ring.mm, out) == lost
    assert out == want and ring.tail() == ring.head
    # nothing new: nothing read; a record whose header is written but not published
    # (head not moved) is left for the next drain
    assert perf_ring._perfring.drain(ring.mm, out) == 0 and len(out) == len(want)
    more = ring.sample(b"x" * 70)
    assert perf_ring._perfring.drain(ring.mm, out) == 0 and len(out) == len(want)
    ring.publish()
    assert perf_ring._perfring.drain(ring.mm, out) == 0 and out[-1] == more


def test_c_reader_feeds_batches_and_losses_like_bccs_callbacks():
    """PerfRings.drain: one batch per drain to on_batch, each CPU's lost count to
    on_lost as bcc's lost callback gives it (the count only)."""
    rings = [Ring(), Ring()]
    pr = perf_ring.PerfRings.__new__(perf_ring.PerfRings)
    pr.rings = [(0, rings[0].mm), (1, rings[1].mm)]
    a = rings[0].sample(b"a" * 10)
    rings[1].lost(4)
    b = rings[1].sample(b"b" * 20)
    for r in rings:
        r.publish()
    batches: list[list[bytes]] = []
    losses: list[tuple[int, ...]] = []
    pr.drain(batches.append, lambda *args: losses.append(args))
    assert batches == [[a, b]] and losses == [(4,)]
    pr.drain(batches.append, lambda *args: losses.append(args))
    assert len(batches) == 1  # an empty drain calls nobody
    pr.close()


def test_c_decode_of_l7_records_is_decode_l7():
    """_perfring.decode_l7 (C) gives what event.decode_l7 gives for every record:
    equal L7Event tuples of that type, equal payloads (offsets past the end clamped as
    Python slices clamp), and records too short for a header counted, not decoded."""
    from webb_agent.datapath import event

    assert event._decode_l7_c is not None, "_perfring.c not built: run make setup"
    rnd = random.Random(6)
    raws = []
    for _ in range(3000):
        n = rnd.choice((0, 10, 71, 72, 73, 200, 1100))
        raw = bytearray(rnd.randrange(256) for _ in range(n))
        if n >= 72 and rnd.random() < 0.7:  # plausible offsets within the record
            struct.pack_into("<HH", raw, 56, rnd.randrange(0, 80), rnd.randrange(0, n - 60))
        raws.append(bytes(raw))
    items, bad = event._decode_l7_c(raws, event.L7Event)
    want, want_bad = event._decode_l7_batch_py(raws)
    assert bad == want_bad > 0 and items == want and len(items) > 1500
    assert all(type(ev) is event.L7Event and ev.ts == w.ts for (ev, _), (w, _) in zip(items, want))
    assert event.decode_l7_batch([bytearray(raws[-1])]) == event._decode_l7_batch_py(raws[-1:])

"""datapath/_ringbuf.c and its Python twin (ringbuf.drain_py): readers of a BPF ring
buffer, on rings laid out as the kernel lays one out (consumer page; producer page,
then the data area mapped twice in a row; 8-byte headers with BUSY and DISCARD bits,
records 8-aligned) and written as bpf_ringbuf_reserve/submit/discard write them. The
real ring (bpf/l7.h l7_events) is read by the C reader in the L7 e2e tests."""
from __future__ import annotations

import mmap
import random
import struct

import pytest

from webb_agent.datapath import ringbuf

PAGE = mmap.PAGESIZE


class Ring:
    """A ring buffer in anonymous memory; every data write goes to both copies, as the
    kernel's double mapping of the data pages shows it."""

    def __init__(self, pages: int = 2) -> None:
        self.size = pages * PAGE
        self.consumer = mmap.mmap(-1, PAGE)
        self.producer = mmap.mmap(-1, PAGE + 2 * self.size)
        self.prod = 0

    def set_position(self, pos: int) -> None:
        """An empty ring whose positions are pos (records then start there)."""
        self.prod = pos
        struct.pack_into("<Q", self.consumer, 0, pos)
        struct.pack_into("<Q", self.producer, 0, pos)

    def _write(self, pos: int, data: bytes) -> None:
        at = pos % self.size
        for base in (PAGE, PAGE + self.size):  # the mapping and its mirror
            first = min(len(data), self.size - at)
            self.producer[base + at:base + at + first] = data[:first]
            if first < len(data):  # past the end: the start of this copy
                self.producer[base:base + len(data) - first] = data[first:]

    def reserve(self, n: int) -> int:
        """bpf_ringbuf_reserve: a BUSY header, producer_pos moved past the record."""
        pos = self.prod
        assert pos + 8 + n - self.consumer_pos() <= self.size, "ring full"
        self._write(pos, struct.pack("<II", n | ringbuf.BUSY, 0))
        self.prod += (n + 8 + 7) & ~7
        struct.pack_into("<Q", self.producer, 0, self.prod)
        return pos

    def commit(self, pos: int, data: bytes, discard: bool = False) -> None:
        """bpf_ringbuf_submit (or _discard): the bytes, then the header's bits."""
        self._write(pos + 8, data)
        self._write(pos, struct.pack("<I", len(data) | (ringbuf.DISCARD if discard else 0)))

    def output(self, data: bytes, discard: bool = False) -> None:
        self.commit(self.reserve(len(data)), data, discard)

    def consumer_pos(self) -> int:
        return struct.unpack_from("<Q", self.consumer, 0)[0]


READERS = {"C": lambda: ringbuf._ringbuf.drain, "Python": lambda: ringbuf.drain_py}


@pytest.fixture(params=sorted(READERS))
def drain(request):
    if request.param == "C":
        assert ringbuf._ringbuf is not None, "_ringbuf.c not built: run make setup"
    return READERS[request.param]()


def scenario(drain) -> list:
    """Records across the end of the ring (the first ones wrap), some discarded, one
    reserved and not yet committed in the middle; what each drain gives."""
    rnd = random.Random(7)
    ring = Ring()
    ring.set_position(3 * ring.size - 40)  # a few laps done; the first records wrap
    steps: list = []
    out: list[bytes] = []
    assert drain(ring.consumer, ring.producer, out) == 0 and out == []  # empty
    want = []
    for i in range(12):
        data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300)))
        ring.output(data, discard=i % 5 == 2)
        if i % 5 != 2:
            want.append(data)
    busy = ring.reserve(100)  # a program is still writing this one
    after = [bytes([i]) * (i * 13 + 1) for i in range(1, 6)]
    for data in after:
        ring.output(data)
    n = drain(ring.consumer, ring.producer, out)
    assert n == len(want) and out == want, "the records before the busy one, in order"
    assert ring.consumer_pos() == busy, "consumer_pos stops at the busy record"
    steps.append((n, list(out), ring.consumer_pos()))
    out2: list[bytes] = []
    assert drain(ring.consumer, ring.producer, out2) == 0 and out2 == []  # still busy
    ring.commit(busy, b"late" * 25)
    n = drain(ring.consumer, ring.producer, out2)
    assert out2 == [b"late" * 25, *after] and n == 6
    assert ring.consumer_pos() == ring.prod, "everything read"
    steps.append((n, out2, ring.consumer_pos()))
    # a record that fills the ring to the last byte, across the end again
    big = bytes(rnd.randrange(256) for _ in range(ring.size - 8))
    ring.output(big)
    out3: list[bytes] = []
    assert drain(ring.consumer, ring.producer, out3) == 1 and out3 == [big]
    steps.append(ring.consumer_pos())
    return steps


def test_reader_gives_committed_records_in_order_across_the_wrap(drain):
    scenario(drain)


def test_c_and_python_readers_agree():
    assert ringbuf._ringbuf is not None, "_ringbuf.c not built: run make setup"
    assert scenario(ringbuf._ringbuf.drain) == scenario(ringbuf.drain_py)


def test_reader_rejects_what_is_not_a_ring(drain):
    ring = Ring()
    with pytest.raises(ValueError):  # a data area that is not a power of two, twice
        drain(ring.consumer, mmap.mmap(-1, PAGE + 3 * PAGE), [])
    ring.output(b"x" * 10)
    # a header claiming more than the ring holds: a broken mapping, not a record
    ring._write(0, struct.pack("<I", ring.size))
    with pytest.raises(ValueError):
        drain(ring.consumer, ring.producer, [])


def test_ring_size_is_pages_per_cpu_times_cpus_rounded_up_to_a_power_of_two():
    from webb_agent.datapath.loader import l7_ring_pages

    assert l7_ring_pages(1024, 2) == 2048
    assert l7_ring_pages(1024, 6) == 8192
    assert l7_ring_pages(16384, 2) == 32768
    assert l7_ring_pages(1, 1) == 1 and l7_ring_pages(4, 3) == 16


def test_c_decode_of_l7_records_is_decode_l7():
    """_ringbuf.decode_l7 (C) gives what event.decode_l7 gives for every record:
    equal L7Event tuples of that type, equal payloads (offsets past the end clamped as
    Python slices clamp), and records too short for a header counted, not decoded."""
    from webb_agent.datapath import event

    assert event._decode_l7_c is not None, "_ringbuf.c not built: run make setup"
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

"""A process writing history killed with SIGKILL mid-write reopens cleanly; a full
disk (a real tmpfs) keeps the store serving, reports the error and drops the oldest."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from history_support import BASE_NS, ingest, wire_cache, records
from webb_agent.pipeline.selection import Lost, ReadRequest
from webb_agent.stores.history import History
from webb_agent.stores.history.batch import unpack_batch
from webb_agent.stores.history.store import UNCLEAN_SEQ_GAP, HistoryStore
from webb_agent.stores.ring import Ring

HERE = Path(__file__).resolve().parent
FOREVER = 10**6 * 3600 * 10**9

WRITER = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {here!r})
    from history_support import ingest, wire_cache, records
    from webb_agent.stores.history import History
    from webb_agent.stores.ring import Ring

    async def main():
        h = History({d!r}, 10**9, {forever}, flush_interval=0.001)
        ring = Ring(63, h.next_seq)
        h.bind(wire_cache())
        task = asyncio.create_task(h.run())
        i = ring.next_seq
        for _ in range(100000):  # bounded; the test kills it long before
            ingest(ring, records(i, 200), h.on_batch)
            i += 200
            await asyncio.sleep(0.001)
    asyncio.run(main())
""")


def wait_until(pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def store_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("*.wbh")) if d.exists() else 0


@pytest.mark.parametrize("round_", range(3))
def test_killed_mid_write_reopens_cleanly(tmp_path, round_):
    d = tmp_path / "history"
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(here=str(HERE), d=str(d),
                                                                 forever=FOREVER)])
    try:
        threshold = 200_000 * (round_ + 1)
        wait_until(lambda: store_bytes(d) > threshold or proc.poll() is not None)
        assert proc.poll() is None, "the writer died by itself"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    store = HistoryStore(str(d), 10**9, FOREVER)
    store.open()
    assert store.stats.torn_frames <= 1  # at most the batch being written, counted
    expected = 0
    for fr in store.frames:  # every frame left is whole and in sequence
        data = store.read_frame(fr)
        assert data is not None
        recs = unpack_batch(data)
        assert [r.seq for r in recs] == list(range(expected, expected + len(recs)))
        expected += len(recs)
    assert expected > 1000
    # Killed: the flows that only its ring and pending batches held had seqs (and
    # UUIDs) beyond what was stored; the new run starts past any of them.
    assert store.unclean_start and store.next_seq >= expected + UNCLEAN_SEQ_GAP
    store.close()
    again = HistoryStore(str(d), 10**9, FOREVER)
    again.open()
    assert not again.unclean_start  # closed cleanly this time: no jump
    again.close()

    async def reopen_and_read() -> None:
        h = History(str(d), 10**9, FOREVER, flush_interval=0.01)
        ring: Ring = Ring(63, h.next_seq)
        h.bind(wire_cache())
        start = ring.next_seq
        ingest(ring, records(start, 100), h.on_batch)
        assert h.writer is not None and h.reader is not None
        await h.writer.flush()
        out = [x async for x in h.reader(ring, ReadRequest(first=True, number=10**7), None)]
        got = [x.seq for x in out if not isinstance(x, Lost)]
        assert got[:expected] == list(range(expected))
        assert got[-100:] == list(range(start, start + 100)) and start >= expected
        await h.close(ring.next_seq)
    asyncio.run(reopen_and_read())


@pytest.mark.root
def test_full_disk_keeps_serving_and_drops_the_oldest(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        async def run() -> None:
            # The budget (10 MB) is far more than the disk (1 MiB): the disk fills first.
            h = History(str(mnt), 10_000_000, FOREVER, flush_interval=0.01)
            h.store.segment_bytes = 100_000
            ring: Ring = Ring(63, h.next_seq)
            p = wire_cache()
            h.bind(p)
            assert h.writer is not None and h.reader is not None
            i = 0
            for _ in range(400):  # bounded: well past 1 MiB of frames
                # incompressible-ish flows: many distinct ports and times
                ingest(ring, records(i, 500, step_ns=7_919_993), h.on_batch)
                i += 500
                await h.writer.flush()
                if h.store.stats.removed_flows and i > 150_000:
                    break
            st = h.store.stats
            assert st.errors > 0 and "No space left" in st.last_error
            assert st.removed_flows > 0  # the oldest went to make room
            # still written and served after the disk filled: the newest flows
            out = [x async for x in h.reader(ring, ReadRequest(since_ns=BASE_NS), None)]
            lost = sum(x.count for x in out if isinstance(x, Lost))
            got = [x.seq for x in out if not isinstance(x, Lost)]
            assert got[-1] == i - 1 and got == sorted(got)
            assert lost >= st.removed_flows  # reported, not silently fewer
            assert lost + len(got) == i
            await h.close(ring.next_seq)
        asyncio.run(run())
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)

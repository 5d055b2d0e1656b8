"""The per-node flow store: a directory of segment files with retention by size and age.

Why segment files and not SQLite: persisting must cost ingest nearly nothing, and
retention, crash safety and a full disk all become whole-file operations — the
oldest segment is deleted (size, age, no space left), a torn last frame is cut off
on open — with no vacuum, no per-row index to maintain and no write amplification.
Queries go by the in-memory frame index (seq and time range per frame).

Layout of the directory:
    meta.json          format version, the UUID salt, the next sequence number
    removed.json       what retention deleted: seq and time ranges with flow counts,
                       so a window older than the retention is reported as lost
    <first_seq>.wbh    segments, oldest first (segment.py)

Thread safety: one writer thread appends and deletes; readers on the event loop
look frames up under `lock` and read files without it (a file deleted under a
reader is reported to it as removed).
"""
from __future__ import annotations

import bisect
import errno
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field

from .segment import HEADER_SIZE, SUFFIX, CorruptFrame, Frame, Segment, encode_frame, segment_name

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Sequence numbers skipped after an unclean stop: more than a ring and pending batches hold.
UNCLEAN_SEQ_GAP = 1 << 32
MAX_REMOVED_RANGES = 4096  # removed.json entries; older ones are merged pairwise
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass
class Removed:
    """A span of flows no longer stored (deleted by retention, or never written)."""

    first_seq: int
    last_seq: int
    min_time: int
    max_time: int
    count: int

    def to_list(self) -> list[int]:
        return [self.first_seq, self.last_seq, self.min_time, self.max_time, self.count]


@dataclass
class StoreStats:
    written_flows: int = 0
    written_bytes: int = 0
    removed_flows: int = 0  # by retention or to make room
    dropped_flows: int = 0  # never written: no space even after removing, write errors
    torn_frames: int = 0  # cut off on open (a crash mid-write)
    torn_flows: int = 0
    last_error: str = ""
    errors: int = 0
    recent_errors: list[str] = field(default_factory=list)


class HistoryStore:
    def __init__(self, directory: str, max_bytes: int, max_age_ns: int,
                 segment_bytes: int | None = None, compress_level: int = 3) -> None:
        if max_bytes <= 0:
            raise ValueError("history max bytes must be positive")
        if max_age_ns <= 0:
            raise ValueError("history max age must be positive")
        self.dir = directory
        self.max_bytes = max_bytes
        self.max_age_ns = max_age_ns
        # ~32 segments in the budget: retention frees space in steps of ~3 %.
        self.segment_bytes = segment_bytes or min(max(max_bytes // 32, 256 * 1024), 64 << 20)
        # A segment spans at most 1/32 of the max age, so age retention is as fine.
        self.segment_age_ns = max(max_age_ns // 32, 1_000_000_000)
        self.compress_level = compress_level
        self.lock = threading.Lock()
        self.segments: list[Segment] = []
        self.frames: list[Frame] = []  # every frame of every segment, in seq order
        self._frame_last: list[int] = []  # last_seq of each frame, for bisect
        self.removed: list[Removed] = []
        self.stats = StoreStats()
        self.salt = ""
        self.next_seq = 0
        self._clean = False
        self._fd: int | None = None
        self._roll = False  # start a new segment with the next append
        self._lock_fd: int | None = None

    # -- opening ------------------------------------------------------------------

    def open(self) -> None:
        """Loads or creates the store; cuts a torn last frame; applies retention."""
        os.makedirs(self.dir, exist_ok=True)
        # One writer per directory: a second agent on it would interleave frames.
        self._lock_fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise ValueError(f"{self.dir}: history directory is in use by another process "
                             "(one agent per directory)") from None
        meta = self._read_json("meta.json", {})
        if meta and meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{self.dir}: history format {meta.get('version')} is not "
                             f"{FORMAT_VERSION}; move the directory away to start afresh")
        self.salt = meta.get("salt") or uuid.uuid4().hex
        self.next_seq = int(meta.get("next_seq", 0))
        # Written False while open: after a crash, flows that only the ring or the
        # pending batches held had sequence numbers (and so UUIDs, salt + seq) that
        # the store never saw; jumping past them keeps every UUID unique.
        self.unclean_start = meta.get("clean") is False
        self.removed = [Removed(*r) for r in self._read_json("removed.json", [])]
        names = sorted(n for n in os.listdir(self.dir) if n.endswith(SUFFIX))
        for i, name in enumerate(names):
            try:
                first = int(name[:-len(SUFFIX)])
            except ValueError:
                continue
            seg = Segment(os.path.join(self.dir, name), first)
            # The newest segment is the one a crash can leave torn: check every frame.
            torn, torn_flows = seg.scan(verify=i == len(names) - 1)
            if torn:
                self.stats.torn_frames += torn
                self.stats.torn_flows += torn_flows
                log.warning("history: %s had a torn frame after a crash (%d flows lost); "
                            "cut off", name, torn_flows)
            if not seg.frames:
                os.unlink(seg.path)
                continue
            self.segments.append(seg)
        for seg in self.segments:
            self.frames.extend(seg.frames)
        self._frame_last = [f.last_seq for f in self.frames]
        if self.frames:
            self.next_seq = max(self.next_seq, self.frames[-1].last_seq + 1)
        if self.unclean_start:
            self.next_seq += UNCLEAN_SEQ_GAP
            log.warning("history: the last run did not close the store; sequence numbers "
                        "go on from %d", self.next_seq)
        self._clean = False
        self._write_meta()
        self.apply_retention(time.time_ns())

    def _read_json(self, name: str, default):  # type: ignore[no-untyped-def]
        path = os.path.join(self.dir, name)
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return default
        except (OSError, ValueError) as e:
            # A half-written file is impossible (written by rename); anything else is
            # reported and the defaults are used rather than refusing to start.
            log.warning("history: cannot read %s (%s); using defaults", path, e)
            return default

    def _write_json(self, name: str, value) -> None:  # type: ignore[no-untyped-def]
        path = os.path.join(self.dir, name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(value, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _write_meta(self) -> None:
        try:
            self._write_json("meta.json", {"version": FORMAT_VERSION, "salt": self.salt,
                                           "next_seq": self.next_seq, "clean": self._clean})
        except OSError as e:
            self._error(f"writing meta.json: {e}")

    # -- what is stored -----------------------------------------------------------

    @property
    def first_seq(self) -> int | None:
        with self.lock:
            return self.frames[0].first_seq if self.frames else None

    @property
    def last_seq(self) -> int | None:
        with self.lock:
            return self.frames[-1].last_seq if self.frames else None

    @property
    def oldest_time(self) -> int | None:
        with self.lock:
            return self.segments[0].min_time if self.segments else None

    def total_bytes(self) -> int:
        with self.lock:
            return sum(s.size for s in self.segments)

    def total_flows(self) -> int:
        with self.lock:
            return sum(f.count for f in self.frames)

    def frame_at_or_after(self, seq: int) -> Frame | None:
        """The first frame holding a seq >= seq."""
        with self.lock:
            i = bisect.bisect_left(self._frame_last, seq)
            return self.frames[i] if i < len(self.frames) else None

    def frame_before(self, seq: int) -> Frame | None:
        """The last frame whose first seq is < seq."""
        with self.lock:
            i = bisect.bisect_left(self._frame_last, seq)
            if i < len(self.frames) and self.frames[i].first_seq < seq:
                return self.frames[i]
            return self.frames[i - 1] if i > 0 else None

    def first_seq_since(self, since_ns: int) -> int | None:
        """Seq of the first frame that may hold a flow at or after since_ns."""
        with self.lock:
            for f in self.frames:  # frames are few (one per second at most)
                if f.max_time >= since_ns:
                    return f.first_seq
        return None

    def removed_in(self, first_seq: int, last_seq: int, since: int | None,
                   until: int | None) -> int:
        """Flows deleted from the seq span [first_seq, last_seq] whose time range
        meets [since, until]."""
        n = 0
        with self.lock:
            for r in self.removed:
                if r.last_seq < first_seq or r.first_seq > last_seq:
                    continue
                if since is not None and r.max_time < since:
                    continue
                if until is not None and r.min_time > until:
                    continue
                n += r.count
        return n

    def read_frame(self, frame: Frame) -> bytes | None:
        """The batch bytes of a frame; None if retention deleted it meanwhile."""
        try:
            return frame.segment.read_payload(frame)
        except FileNotFoundError:
            return None
        except CorruptFrame as e:
            # Bit rot in an old segment: that frame is lost, the rest still serve.
            self._error(str(e))
            return None

    # -- writing (the writer thread) ------------------------------------------------

    def append(self, payload: bytes, count: int, first_seq: int, last_seq: int,
               min_time: int, max_time: int) -> bool:
        """Writes one batch durably; on a full disk removes the oldest data to make
        room and retries once; False if the batch could not be written (counted)."""
        frame = encode_frame(payload, count, first_seq, last_seq, min_time, max_time,
                             self.compress_level)
        for attempt in (0, 1):
            try:
                self._append_frame(frame, count, first_seq, last_seq, min_time, max_time)
                return True
            except OSError as e:
                self._error(f"writing {count} flows: {e}")
                if attempt == 0 and e.errno in NO_SPACE and self._make_room():
                    continue
                break
        self.stats.dropped_flows += count
        self._note_removed(Removed(first_seq, last_seq, min_time, max_time, count))
        return False

    def _active(self, first_seq: int, min_time: int) -> Segment:
        seg = self.segments[-1] if self.segments else None
        if (seg is None or seg.size >= self.segment_bytes or self._roll
                or (seg.frames and min_time - seg.min_time > self.segment_age_ns)):
            self._roll = False
            self._close_fd()
            seg = Segment(os.path.join(self.dir, segment_name(first_seq)), first_seq)
            self._fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            with self.lock:
                self.segments.append(seg)
            self._write_meta()
        if self._fd is None:
            self._fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        return seg

    def _append_frame(self, frame: bytes, count: int, first_seq: int, last_seq: int,
                      min_time: int, max_time: int) -> None:
        seg = self._active(first_seq, min_time)
        assert self._fd is not None
        start = seg.size
        try:
            written = 0
            view = memoryview(frame)
            while written < len(frame):  # bounded: each write makes progress or raises
                n = os.write(self._fd, view[written:])
                if n <= 0:
                    raise OSError(errno.EIO, "short write")
                written += n
            os.fsync(self._fd)
        except OSError:
            # No torn frame is left behind: the file goes back to its last whole frame.
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass
            if not seg.frames:
                self._drop_empty(seg)
            raise
        f = Frame(seg, start, len(frame) - HEADER_SIZE, count, first_seq, last_seq,
                  min_time, max_time)
        seg.size = start + len(frame)
        with self.lock:
            seg.frames.append(f)
            self.frames.append(f)
            self._frame_last.append(last_seq)
        self.next_seq = max(self.next_seq, last_seq + 1)
        self.stats.written_flows += count
        self.stats.written_bytes += len(frame)

    def _drop_empty(self, seg: Segment) -> None:
        self._close_fd()
        with self.lock:
            if seg in self.segments:
                self.segments.remove(seg)
        try:
            os.unlink(seg.path)
        except OSError:
            pass

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _make_room(self) -> bool:
        """No space left: the oldest segment goes (the active one too if it is the
        only one). False if there was nothing to delete."""
        if not self.segments:
            return False
        self._remove_segment(self.segments[0], "no space left on the device")
        return True

    def apply_retention(self, now_ns: int) -> None:
        """Deletes the oldest segments beyond max bytes or older than max age."""
        horizon = now_ns - self.max_age_ns
        for _ in range(len(self.segments)):  # bounded: at most every segment once
            if not self.segments:
                return
            oldest = self.segments[0]
            total = sum(s.size for s in self.segments)
            if total > self.max_bytes and len(self.segments) > 1:
                self._remove_segment(oldest, "size")
            elif oldest.frames and oldest.max_time < horizon:
                self._remove_segment(oldest, "age")
            elif total > self.max_bytes:
                # One segment alone is over the budget: the next append starts a new
                # one, and then this one goes.
                self._roll = True
                return
            else:
                return

    def _remove_segment(self, seg: Segment, why: str) -> None:
        if seg is (self.segments[-1] if self.segments else None):
            self._close_fd()
        with self.lock:
            self.segments.remove(seg)
            n = len(seg.frames)
            if n and self.frames[:n] == seg.frames:
                del self.frames[:n]
                del self._frame_last[:n]
            else:
                ids = {id(f) for f in seg.frames}
                keep = [f for f in self.frames if id(f) not in ids]
                self.frames[:] = keep
                self._frame_last[:] = [f.last_seq for f in keep]
        try:
            os.unlink(seg.path)
        except FileNotFoundError:
            pass
        if seg.frames:
            count = seg.count
            self.stats.removed_flows += count
            self._note_removed(Removed(seg.frames[0].first_seq, seg.frames[-1].last_seq,
                                       seg.min_time, seg.max_time, count))
            log.info("history: removed %s (%d flows, %s)", os.path.basename(seg.path),
                     count, why)

    def _note_removed(self, r: Removed) -> None:
        with self.lock:
            self.removed.append(r)
            while len(self.removed) > MAX_REMOVED_RANGES:
                a, b = self.removed[0], self.removed[1]
                self.removed[:2] = [Removed(a.first_seq, b.last_seq, min(a.min_time, b.min_time),
                                            max(a.max_time, b.max_time), a.count + b.count)]
            snapshot = [x.to_list() for x in self.removed]
        try:
            self._write_json("removed.json", snapshot)
        except OSError as e:
            self._error(f"writing removed.json: {e}")

    def _error(self, msg: str) -> None:
        self.stats.errors += 1
        self.stats.last_error = msg
        self.stats.recent_errors = (self.stats.recent_errors + [msg])[-10:]
        log.error("history: %s", msg)

    def close(self, next_seq: int | None = None) -> None:
        """Remembers where sequence numbers go on (the ring's next seq), so they stay
        monotonic across restarts even for flows that were never persisted."""
        self._close_fd()
        if next_seq is not None:
            self.next_seq = max(self.next_seq, next_seq)
        self._clean = True
        self._write_meta()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

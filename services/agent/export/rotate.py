"""A size-rotated log file with the rotation Hubble's exporter gets from lumberjack.

The file at `path` is written until the next write would pass max_size; then it is
renamed to `<name>-<UTC time>.<ext>` (lumberjack's "2006-01-02T15-04-05.000"
stamp), optionally gzipped to `….gz`, and a new file is started. At most
max_backups rotated files are kept (0 keeps all), oldest deleted first. Log
shippers (Fluent Bit, Vector, promtail) follow such files by name.
"""
from __future__ import annotations

import gzip
import os
import shutil
import sys
import time
from typing import BinaryIO


def backup_name(path: str, now_ns: int) -> str:
    d, base = os.path.split(path)
    stem, ext = os.path.splitext(base)
    t = time.gmtime(now_ns // 1_000_000_000)
    ms = (now_ns // 1_000_000) % 1000
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S", t) + f".{ms:03d}"
    return os.path.join(d, f"{stem}-{stamp}{ext}")


class RotatingFile:
    def __init__(self, path: str, max_size_bytes: int, max_backups: int, compress: bool) -> None:
        if max_size_bytes <= 0:
            raise ValueError("export file max size must be positive")
        if max_backups < 0:
            raise ValueError("export file max backups cannot be negative")
        self.path = path
        self.max_size = max_size_bytes
        self.max_backups = max_backups
        self.compress = compress
        self.stdout = path == "stdout"
        self._f: BinaryIO | None = None
        self._size = 0
        self.rotations = 0

    def _open(self) -> BinaryIO:
        if self._f is None:
            if self.stdout:
                self._f = sys.stdout.buffer
            else:
                d = os.path.dirname(self.path)
                if d:
                    os.makedirs(d, exist_ok=True)
                self._f = open(self.path, "ab")
                self._size = self._f.tell()
        return self._f

    def write(self, data: bytes) -> None:
        """Writes whole lines; rotates first if they would not fit (a batch larger
        than max size is split at line ends)."""
        if self.stdout:
            f = self._open()
            f.write(data)
            f.flush()
            return
        view = memoryview(data)
        pos = 0
        for _ in range(len(data) + 1):  # bounded: every round writes at least one line
            if pos >= len(data):
                return
            f = self._open()
            room = self.max_size - self._size
            chunk_end = len(data) if len(data) - pos <= room else data.rfind(b"\n", pos, pos + room) + 1
            if chunk_end <= pos:
                if self._size > 0:
                    self.rotate()
                    continue
                chunk_end = data.find(b"\n", pos) + 1 or len(data)  # one line larger than max
            f.write(view[pos:chunk_end])
            self._size += chunk_end - pos
            pos = chunk_end

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def rotate(self) -> None:
        if self.stdout:
            return
        if self._f is not None:
            self._f.close()
            self._f = None
        self._size = 0
        if not os.path.exists(self.path):
            return
        dst = backup_name(self.path, time.time_ns())
        n = 0
        while os.path.exists(dst) or os.path.exists(dst + ".gz"):  # two rotations in 1 ms
            n += 1
            dst = backup_name(self.path, time.time_ns() + n * 1_000_000)
        os.rename(self.path, dst)
        self.rotations += 1
        if self.compress:
            with open(dst, "rb") as src, gzip.open(dst + ".gz.tmp", "wb") as out:
                shutil.copyfileobj(src, out)
            os.replace(dst + ".gz.tmp", dst + ".gz")
            os.unlink(dst)
        self._prune()

    def backups(self) -> list[str]:
        d, base = os.path.split(self.path)
        stem, ext = os.path.splitext(base)
        d = d or "."
        out = []
        for name in os.listdir(d):
            if not name.startswith(stem + "-"):
                continue
            rest = name[len(stem) + 1:]
            if rest.endswith(".gz"):
                rest = rest[:-3]
            if ext and not rest.endswith(ext):
                continue
            stamp = rest[:len(rest) - len(ext)] if ext else rest
            try:
                time.strptime(stamp.split(".")[0], "%Y-%m-%dT%H-%M-%S")
            except ValueError:
                continue
            out.append(os.path.join(d, name))
        return sorted(out)  # the stamp sorts by time

    def _prune(self) -> None:
        if self.max_backups == 0:
            return
        old = self.backups()
        for path in old[:max(0, len(old) - self.max_backups)]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        if self._f is not None and not self.stdout:
            self._f.close()
        self._f = None

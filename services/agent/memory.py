"""Process-wide memory settings of the agent: garbage collector and C heap.

- The ring holds ~65k records, each a GC-tracked object: with the default gen-0
  threshold (700) every drain triggers collections that walk them. After start-up
  the agent freezes what it has built (modules, protobuf descriptors, bcc objects)
  out of the collector's sight and raises the gen-0 threshold.
- bcc compiles the eBPF programs with LLVM inside the agent; LLVM frees its heap
  afterwards, but glibc keeps it mapped until malloc_trim returns it. The pages of
  libLLVM and libclang-cpp that the compile touched (~70 MiB, file-backed, clean)
  stay resident too: they are dropped with madvise(MADV_DONTNEED), which only
  unmaps them from this process (another compile would read them in again).

WEBB_AGENT_GC=default keeps CPython's defaults (to measure the difference).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re

from webb.gc_tune import THRESHOLD, freeze_and_raise

log = logging.getLogger(__name__)

GC_THRESHOLD = THRESHOLD
COMPILER_LIBS = re.compile(r"/libLLVM[-.\w]*\.so|/libclang-cpp[-.\w]*\.so")
MADV_DONTNEED = 4
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")


def tune_gc() -> bool:
    """Collects, freezes the survivors and raises the thresholds (webb/gc_tune.py, as
    the UI does); False if disabled."""
    return freeze_and_raise("WEBB_AGENT_GC", GC_THRESHOLD)


def release_freed_heap() -> bool:
    """glibc's malloc_trim(0): returns freed heap pages to the kernel; False where
    there is no glibc (or WEBB_AGENT_GC=default)."""
    if os.environ.get("WEBB_AGENT_GC", "") == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    try:
        drop_clean_file_pages(COMPILER_LIBS)
    except OSError as e:
        log.debug("dropping the compiler's pages: %s", e)
    return True


def drop_clean_file_pages(path: "re.Pattern[str]", smaps: str = "/proc/self/smaps") -> int:
    """Unmaps the resident pages of file mappings whose path matches, from this
    process only; returns the bytes that were resident.

    Only mappings without anonymous (copied-on-write) pages are touched: for them
    MADV_DONTNEED just drops page-table entries, and any later access reads the
    file (page cache) again. A library's relocated data (anonymous copies) is left
    alone.
    """
    maps: list[dict[str, object]] = []
    cur: dict[str, object] | None = None
    with open(smaps) as f:
        for line in f:
            m = _MAPPING.match(line)
            if m:
                cur = {"lo": int(m.group(1), 16), "hi": int(m.group(2), 16),
                       "path": m.group(4)}
                if path.search(m.group(4)):
                    maps.append(cur)
                continue
            if cur is not None:
                k, _, v = line.partition(":")
                if k in ("Rss", "Anonymous"):
                    cur[k] = int(v.split()[0]) * 1024
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    dropped = 0
    for m in maps:
        rss = int(m.get("Rss", 0))  # type: ignore[call-overload]
        if not rss or m.get("Anonymous", 1) != 0:  # copies-on-write: never dropped
            continue
        lo, hi = int(m["lo"]), int(m["hi"])  # type: ignore[call-overload]
        if madvise(lo, hi - lo, MADV_DONTNEED) == 0:
            dropped += rss
    if dropped:
        log.info("dropped %.0f MiB of resident compiler pages", dropped / 2**20)
    return dropped

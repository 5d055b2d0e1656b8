"""Segment files: append-only frames, each a compressed batch with its own index entry.

    frame = magic "WBF1" | crc32 <I | payload length <I | count <I
            | first_seq <q | last_seq <q | min_time <q | max_time <q | payload (zlib)

The crc covers everything after it, header and payload, so a frame torn by a
crash (or a bit flipped on disk) is recognised; opening a segment keeps the
frames before the first bad one and truncates the rest. A frame's header is its
index entry: opening reads headers only (seeking over payloads), and a query
skips a frame by its seq and time range without decompressing it.
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

MAGIC = b"WBF1"
_HEADER = struct.Struct("<4sIIIqqqq")
HEADER_SIZE = _HEADER.size
_AFTER_CRC = 8  # magic + crc
MAX_PAYLOAD = 1 << 30  # a length above this is a torn or foreign header, not a frame
SUFFIX = ".wbh"


@dataclass
class Frame:
    """Where a frame is and what it holds (its header)."""

    segment: "Segment"
    offset: int
    length: int  # payload bytes
    count: int
    first_seq: int
    last_seq: int
    min_time: int
    max_time: int

    @property
    def end(self) -> int:
        return self.offset + HEADER_SIZE + self.length


def encode_frame(payload: bytes, count: int, first_seq: int, last_seq: int,
                 min_time: int, max_time: int, level: int = 3) -> bytes:
    body = zlib.compress(payload, level)
    rest = struct.pack("<IIqqqq", len(body), count, first_seq, last_seq, min_time, max_time)
    crc = zlib.crc32(body, zlib.crc32(rest))
    return MAGIC + struct.pack("<I", crc) + rest + body


class CorruptFrame(Exception):
    pass


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


class Segment:
    """One file of frames; the store appends only to its newest segment."""

    def __init__(self, path: str, first_seq: int) -> None:
        self.path = path
        self.first_seq = first_seq
        self.frames: list[Frame] = []
        self.size = 0

    @property
    def min_time(self) -> int:
        return min((f.min_time for f in self.frames), default=0)

    @property
    def max_time(self) -> int:
        return max((f.max_time for f in self.frames), default=0)

    @property
    def count(self) -> int:
        return sum(f.count for f in self.frames)

    def scan(self, verify: bool) -> tuple[int, int]:
        """Reads the frame headers (and checks every crc if verify); truncates the
        file after the last good frame. Returns (torn frames, flows in them if
        their header could be read)."""
        self.frames = []
        with open(self.path, "r+b") as f:
            file_size = os.fstat(f.fileno()).st_size
            pos = 0
            while pos + HEADER_SIZE <= file_size:
                f.seek(pos)
                head = f.read(HEADER_SIZE)
                magic, crc, length, count, s0, s1, t0, t1 = _HEADER.unpack(head)
                if magic != MAGIC or length > MAX_PAYLOAD or pos + HEADER_SIZE + length > file_size:
                    break
                if verify:
                    body = f.read(length)
                    if zlib.crc32(body, zlib.crc32(head[_AFTER_CRC:])) != crc:
                        break
                self.frames.append(Frame(self, pos, length, count, s0, s1, t0, t1))
                pos += HEADER_SIZE + length
            torn_flows = 0
            torn = 0
            if pos < file_size:
                torn = 1
                f.seek(pos)
                head = f.read(HEADER_SIZE)
                if len(head) == HEADER_SIZE and head[:4] == MAGIC:
                    torn_flows = _HEADER.unpack(head)[3]
                f.truncate(pos)
                f.flush()
                os.fsync(f.fileno())
            self.size = pos
        return torn, torn_flows

    def read_payload(self, frame: Frame) -> bytes:
        """The frame's batch bytes; CorruptFrame if they do not match their crc."""
        with open(self.path, "rb") as f:
            f.seek(frame.offset)
            data = f.read(HEADER_SIZE + frame.length)
        if len(data) != HEADER_SIZE + frame.length:
            raise CorruptFrame(f"{self.path}: frame at {frame.offset} is short")
        magic, crc = data[:4], struct.unpack_from("<I", data, 4)[0]
        if magic != MAGIC or zlib.crc32(data[_AFTER_CRC:]) != crc:
            raise CorruptFrame(f"{self.path}: frame at {frame.offset} fails its checksum")
        return zlib.decompress(data[HEADER_SIZE:])

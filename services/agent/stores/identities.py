"""Security identities: one number per distinct set of security-relevant labels.

Reserved identities keep Cilium's numbers. Allocated identities start at 256. Agents
on one host (the demo's "nodes") agree on numbers by sharing an allocation file,
locked while it is read and extended, so the same labels get the same number on
every node and two label sets never share one.
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
from dataclasses import dataclass
from typing import Iterable

RESERVED_HOST = 1
RESERVED_WORLD = 2
RESERVED_UNMANAGED = 3
RESERVED_HEALTH = 4
RESERVED_INIT = 5
RESERVED_REMOTE_NODE = 6
RESERVED_KUBE_APISERVER = 7
RESERVED_INGRESS = 8
RESERVED_WORLD_IPV4 = 9
RESERVED_WORLD_IPV6 = 10

RESERVED: dict[int, tuple[str, ...]] = {
    RESERVED_HOST: ("reserved:host",),
    RESERVED_WORLD: ("reserved:world",),
    RESERVED_UNMANAGED: ("reserved:unmanaged",),
    RESERVED_HEALTH: ("reserved:health",),
    RESERVED_INIT: ("reserved:init",),
    RESERVED_REMOTE_NODE: ("reserved:remote-node",),
    RESERVED_KUBE_APISERVER: ("reserved:kube-apiserver",),
    RESERVED_INGRESS: ("reserved:ingress",),
    RESERVED_WORLD_IPV4: ("reserved:world-ipv4",),
    RESERVED_WORLD_IPV6: ("reserved:world-ipv6",),
}

FIRST_ALLOCATED = 256


@dataclass(frozen=True)
class Identity:
    id: int
    labels: tuple[str, ...]


def label_key(labels: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(labels)))


class IdentityAllocator:
    """Maps label sets to numbers, optionally persisted in a file shared by agents."""

    def __init__(self, path: str | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._by_labels: dict[tuple[str, ...], int] = {}
        self._by_id: dict[int, Identity] = {i: Identity(i, l) for i, l in RESERVED.items()}

    def allocate(self, labels: Iterable[str]) -> Identity:
        key = label_key(labels)
        with self._lock:
            num = self._by_labels.get(key)
            if num is None:
                num = self._allocate_shared(key) if self._path else self._next_free()
                self._remember(num, key)
            return self._by_id[num]

    def get(self, num: int) -> Identity | None:
        with self._lock:
            if num not in self._by_id and self._path:
                self._load_shared()
            return self._by_id.get(num)

    def all(self) -> list[Identity]:
        with self._lock:
            return sorted(self._by_id.values(), key=lambda i: i.id)

    def _remember(self, num: int, key: tuple[str, ...]) -> None:
        self._by_labels[key] = num
        self._by_id[num] = Identity(num, key)

    def _next_free(self) -> int:
        used = [n for n in self._by_id if n >= FIRST_ALLOCATED]
        return max(used, default=FIRST_ALLOCATED - 1) + 1

    def _load_shared(self) -> None:
        assert self._path
        try:
            with open(self._path, encoding="utf-8") as f:
                fcntl.flock(f, fcntl.LOCK_SH)
                table = json.load(f) if os.path.getsize(self._path) else {}
        except FileNotFoundError:
            return
        for num, labels in table.items():
            self._remember(int(num), tuple(labels))

    def _allocate_shared(self, key: tuple[str, ...]) -> int:
        assert self._path
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            text = f.read()
            table: dict[str, list[str]] = json.loads(text) if text.strip() else {}
            for num, labels in table.items():
                if tuple(labels) == key:
                    return int(num)
            nums = [int(n) for n in table] + [n for n in self._by_id if n >= FIRST_ALLOCATED]
            num = max(nums, default=FIRST_ALLOCATED - 1) + 1
            table[str(num)] = list(key)
            f.seek(0)
            f.truncate()
            json.dump(table, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
            return num

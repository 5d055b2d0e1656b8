"""Endpoint IDs: small integers, unique on one node, held by an endpoint for its life.

As in Cilium (pkg/endpointmanager/idallocator) an ID is in 1..4095 and belongs to the
node: another node may give the same number to another endpoint. Flows carry it as
source/destination `ID` for the node's own endpoints (0 for everything else), and
`webb endpoint`, `webb monitor` and agent events show it. Where Cilium draws a random
free ID and restores it from its state directory after a restart, webb starts the
search at a hash of the endpoint's namespace/name: the same pod gets the same number
after an agent restart (unless two pods' hashes meet), with no state on disk.
"""
from __future__ import annotations

import zlib

MIN_ID = 1
MAX_ID = 4095


class EndpointIDError(ValueError):
    """An ID out of range, taken by another endpoint, or none left."""


class EndpointIDs:
    def __init__(self) -> None:
        self._owner: dict[int, str] = {}   # ID -> endpoint key
        self._of: dict[str, int] = {}      # endpoint key -> ID

    def get(self, key: str) -> int:
        return self._of.get(key, 0)

    def allocate(self, key: str, wanted: int = 0) -> int:
        """The endpoint's ID: `wanted` if given (restored or set by its definition),
        else the one it holds, else a free one."""
        held = self._of.get(key, 0)
        if wanted:
            if not MIN_ID <= wanted <= MAX_ID:
                raise EndpointIDError(f"endpoint ID {wanted} out of range {MIN_ID}-{MAX_ID}")
            owner = self._owner.get(wanted)
            if owner is not None and owner != key:
                raise EndpointIDError(f"endpoint ID {wanted} is already in use by {owner}")
            if held and held != wanted:
                del self._owner[held]
            self._owner[wanted] = key
            self._of[key] = wanted
            return wanted
        if held:
            return held
        size = MAX_ID - MIN_ID + 1
        if len(self._owner) >= size:
            raise EndpointIDError(f"no endpoint ID left ({size} endpoints on this node)")
        start = zlib.crc32(key.encode()) % size
        for i in range(size):
            n = MIN_ID + (start + i) % size
            if n not in self._owner:
                self._owner[n] = key
                self._of[key] = n
                return n
        raise AssertionError("unreachable: a free ID exists")

    def release(self, key: str) -> None:
        n = self._of.pop(key, 0)
        if n:
            del self._owner[n]

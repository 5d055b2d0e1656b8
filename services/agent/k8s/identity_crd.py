"""Cluster-wide security identities allocated through the API server.

Like Cilium's CRD identity mode, each identity is a cluster-scoped custom resource
named by its number (`WebbIdentity`, webbidentities.webb.io) that holds its
security labels (`security-labels`, as in CiliumIdentity). The API server's
create-if-absent on a name is the only lock needed:

- a label set's search starts at a number derived from a hash of its labels and
  probes upwards (wrapping inside 256..65535, Cilium's cluster range): an object
  with the same labels is the answer; a free number is created; an object with
  other labels means "taken, try the next". Two agents racing for the same labels
  walk the same sequence, so the loser's create fails with 409 Conflict, it reads
  the winner's object and agrees; two different label sets can never share a
  name, so never a number.
- garbage collection deletes an identity that no pod of the cluster has used for a
  grace period, except one that lies on the probe path of an identity in use
  (deleting it would make the next search stop early and mint a duplicate). The
  delete carries the object's uid and resourceVersion as preconditions, so an
  identity re-created meanwhile is not touched.
- identities outlive agents: a restarted agent finds its label sets where they were.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any, Callable, Iterable

from ..stores.identities import FIRST_ALLOCATED, Identity, IdentityAllocator, label_key
from .client import KubeClient, KubeError, Resource
from .informer import DELETED, Informer

log = logging.getLogger(__name__)

GROUP, VERSION, KIND, PLURAL = "webb.io", "v1", "WebbIdentity", "webbidentities"
RESOURCE = Resource(f"{GROUP}/{VERSION}", PLURAL, namespaced=False)
HASH_LABEL = "webb.io/labels-hash"  # on each object: its label set, hashed
LAST_ALLOCATED = 65535  # Cilium's cluster-scoped range ends here too
MAX_PROBES = 4096

IDENTITY_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Cluster",
        "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL,
                  "singular": "webbidentity", "shortNames": ["wid"]},
        "versions": [{
            "name": VERSION, "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "description": "A security identity: metadata.name is its number.",
                "required": ["security-labels"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "security-labels": {"type": "object",
                                        "additionalProperties": {"type": "string"},
                                        "description": "source:key -> value"},
                },
            }},
            "additionalPrinterColumns": [
                {"name": "Namespace", "type": "string",
                 "jsonPath": ".security-labels.k8s:io\\.kubernetes\\.pod\\.namespace"},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
        }],
    },
}


class IdentityError(RuntimeError):
    pass


def first_candidate(key: tuple[str, ...], low: int = FIRST_ALLOCATED,
                    high: int = LAST_ALLOCATED) -> int:
    digest = hashlib.sha256("\n".join(key).encode()).digest()
    return low + int.from_bytes(digest[:8], "big") % (high - low + 1)


def labels_hash(key: tuple[str, ...]) -> str:
    """A label value naming the label set, so the API server can find its identity."""
    return hashlib.sha256("\n".join(key).encode()).hexdigest()[:32]


def probe(start: int, i: int, low: int = FIRST_ALLOCATED, high: int = LAST_ALLOCATED) -> int:
    return low + (start - low + i) % (high - low + 1)


def to_object(num: int, key: tuple[str, ...]) -> dict[str, Any]:
    labels = {}
    for lbl in key:
        k, sep, v = lbl.partition("=")
        labels[k] = v
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": str(num), "labels": {"app.kubernetes.io/managed-by": "webb",
                                                       HASH_LABEL: labels_hash(key)}},
            "security-labels": labels}


def from_object(obj: dict[str, Any]) -> tuple[int, tuple[str, ...]] | None:
    """(number, labels) of a WebbIdentity, or None for one that is not well formed."""
    try:
        num = int((obj.get("metadata") or {}).get("name", ""))
    except ValueError:
        return None
    raw = obj.get("security-labels")
    if not isinstance(raw, dict) or not raw:
        return None
    # Only reserved labels ("reserved:host") have no "="; "k8s:app=" (an empty value)
    # keeps its "=", or agents reading the object back would see another label set.
    return num, label_key(str(k) if not v and str(k).startswith("reserved:") else f"{k}={v}"
                          for k, v in raw.items())


class CRDIdentityAllocator(IdentityAllocator):
    """The agent's IdentityAllocator in Kubernetes mode.

    `ensure` (async) finds or creates a label set's identity through the API server;
    `allocate` (what the endpoint registry calls, synchronously) answers from the
    local cache and refuses label sets that were not ensured first.
    """

    def __init__(self, low: int = FIRST_ALLOCATED, high: int = LAST_ALLOCATED) -> None:
        super().__init__(None)
        self.low, self.high = low, high
        self.client: KubeClient | None = None
        self.informer: Informer | None = None
        self._uid: dict[int, tuple[str, str]] = {}  # number -> (uid, resourceVersion)
        self._alloc_lock = asyncio.Lock()
        self._unused_since: dict[int, float] = {}
        self.in_use: Callable[[], set[tuple[str, ...]]] = set
        # Whether in_use is complete (the pod cache synced): until then nothing is
        # collected, or every identity would look unused.
        self.gc_ready: Callable[[], bool] = lambda: True
        self.created = 0
        self.conflicts = 0
        self.collected = 0

    # -- wiring -------------------------------------------------------------------------
    async def start(self, client: KubeClient, install_crd: bool = True,
                    timeout: float = 30.0) -> Informer:
        self.client = client
        if not await client.served(RESOURCE.group_version, PLURAL):
            if not install_crd:
                raise IdentityError(f"the API server does not serve {PLURAL}.{GROUP}: "
                                    "install its CustomResourceDefinition (see docs/kubernetes.md)")
            await self._install_crd(timeout)
        self.informer = Informer(client, RESOURCE, self._on_event, "identities")
        return self.informer

    async def _install_crd(self, timeout: float) -> None:
        assert self.client is not None
        try:
            await self.client.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                     IDENTITY_CRD)
            log.info("installed CustomResourceDefinition %s.%s", PLURAL, GROUP)
        except KubeError as e:
            if e.status != 409:
                raise IdentityError(f"cannot install the {PLURAL}.{GROUP} "
                                    f"CustomResourceDefinition: {e}") from None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # a new CRD is served after a moment
            if await self.client.served(RESOURCE.group_version, PLURAL):
                return
            await asyncio.sleep(0.2)
        raise IdentityError(f"{PLURAL}.{GROUP} is still not served after {timeout:.0f}s")

    async def _on_event(self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        parsed = from_object(obj)
        if parsed is None:
            return
        num, key = parsed
        if not self.low <= num <= self.high:
            return
        meta = obj.get("metadata") or {}
        if kind == DELETED:
            self._forget(num, key)
            if key in self.in_use():
                # Deleted while a pod still has these labels (by hand, or a racing
                # collector): put it back under the same number, as Cilium's agents do.
                log.warning("identity %d deleted while in use; re-creating it", num)
                await self._create_at(num, key)
            return
        self._uid[num] = (str(meta.get("uid", "")), str(meta.get("resourceVersion", "")))
        with self._lock:
            self._remember(num, key)

    def _forget(self, num: int, key: tuple[str, ...]) -> None:
        self._uid.pop(num, None)
        with self._lock:
            if self._by_labels.get(key) == num:
                del self._by_labels[key]
            self._by_id.pop(num, None)

    # -- allocation -----------------------------------------------------------------------
    def allocate(self, labels: Iterable[str]) -> Identity:
        key = label_key(labels)
        with self._lock:
            num = self._by_labels.get(key)
            if num is None:
                raise IdentityError(f"identity for {list(key)} not allocated through the API "
                                    "server yet")
            return self._by_id[num]

    def known(self, labels: Iterable[str]) -> Identity | None:
        key = label_key(labels)
        with self._lock:
            num = self._by_labels.get(key)
            return self._by_id[num] if num is not None else None

    async def ensure(self, labels: Iterable[str]) -> Identity:
        key = label_key(labels)
        found = self.known(key)
        if found is not None:
            return found
        async with self._alloc_lock:
            found = self.known(key)
            if found is not None:
                return found
            return await self._search(key)

    async def _search(self, key: tuple[str, ...]) -> Identity:
        # Asked by label-set hash first: the probe path may have a gap (an unused
        # identity collected while another agent probed past it) that a search from
        # the start would fill with a second number for the same labels.
        existing = await self._by_hash(key)
        if existing is not None:
            return existing
        start = first_candidate(key, self.low, self.high)
        for i in range(min(MAX_PROBES, self.high - self.low + 1)):
            num = probe(start, i, self.low, self.high)
            with self._lock:
                have = self._by_id.get(num)
            if have is not None:
                if have.labels == key:
                    return have
                continue
            for _ in range(3):  # created and deleted under our feet: look again
                there = await self._create_at(num, key)
                if there is not None:
                    break
            if there == key:
                with self._lock:
                    self._remember(num, key)
                    return self._by_id[num]
        raise IdentityError(f"no free identity for {list(key)} after {MAX_PROBES} probes")

    async def _by_hash(self, key: tuple[str, ...]) -> Identity | None:
        assert self.client is not None
        try:
            got = await self.client.get(RESOURCE.path(),
                                        labelSelector=f"{HASH_LABEL}={labels_hash(key)}")
        except KubeError as e:
            raise IdentityError(f"looking up the identity of {list(key)}: {e}") from None
        for obj in got.get("items") or []:
            parsed = from_object(obj)
            if parsed is not None and parsed[1] == key and self.low <= parsed[0] <= self.high:
                with self._lock:
                    self._remember(parsed[0], key)
                    return self._by_id[parsed[0]]
        return None

    async def _create_at(self, num: int, key: tuple[str, ...]) -> tuple[str, ...] | None:
        """Creates identity `num` for `key`; returns the labels the number has now
        (ours, or a racing agent's), or None if it vanished between create and read."""
        assert self.client is not None
        try:
            obj = await self.client.create(RESOURCE.path(), to_object(num, key))
            self.created += 1
            meta = obj.get("metadata") or {}
            self._uid[num] = (str(meta.get("uid", "")), str(meta.get("resourceVersion", "")))
            log.info("identity %d allocated for %s", num, ",".join(key))
            return key
        except KubeError as e:
            if e.status != 409:
                raise IdentityError(f"allocating identity {num}: {e}") from None
        self.conflicts += 1
        try:
            obj = await self.client.get(RESOURCE.path(name=str(num)))
        except KubeError as e:
            if e.status == 404:
                return None
            raise IdentityError(f"reading identity {num}: {e}") from None
        parsed = from_object(obj)
        if parsed is None:
            return ()  # malformed: treat the number as taken
        with self._lock:
            self._remember(num, parsed[1])
        return parsed[1]

    # -- garbage collection ---------------------------------------------------------------
    def _protected(self, used: set[tuple[str, ...]]) -> set[int]:
        """Numbers in use, and every number on the probe path to one in use."""
        keep: set[int] = set()
        with self._lock:
            by_labels = dict(self._by_labels)
        for key in used:
            num = by_labels.get(key)
            if num is None:
                continue
            start = first_candidate(key, self.low, self.high)
            for i in range(MAX_PROBES):
                n = probe(start, i, self.low, self.high)
                keep.add(n)
                if n == num:
                    break
        return keep

    async def collect(self, grace_s: float, now: float | None = None) -> list[int]:
        """One garbage collection pass; returns the numbers deleted."""
        if (self.client is None or self.informer is None or not self.informer.synced.is_set()
                or not self.gc_ready()):
            return []
        now = time.monotonic() if now is None else now
        used = self.in_use()
        with self._lock:
            pending = [k for k in used if k not in self._by_labels]
        if pending:
            # A label set in use whose identity this cache has not seen yet (another
            # agent just created it): its probe path is unknown, so nothing is safe
            # to delete until the cache catches up.
            return []
        keep = self._protected(used)
        with self._lock:
            candidates = [n for n in self._by_id if self.low <= n <= self.high]
        for n in list(self._unused_since):
            if n in keep or n not in candidates:
                del self._unused_since[n]
        deleted = []
        for n in candidates:
            if n in keep:
                continue
            since = self._unused_since.setdefault(n, now)
            if now - since < grace_s:
                continue
            uid, rv = self._uid.get(n, ("", ""))
            body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
            if uid:
                body["preconditions"] = {"uid": uid, "resourceVersion": rv}
            try:
                await self.client.delete(RESOURCE.path(name=str(n)), body)
                deleted.append(n)
                self.collected += 1
                log.info("identity %d garbage-collected (unused for %.0fs)", n, now - since)
            except KubeError as e:
                if e.status not in (404, 409):
                    log.warning("identity %d: garbage collection failed: %s", n, e)
            self._unused_since.pop(n, None)
        return deleted

    async def run_gc(self, interval_s: float, grace_s: float) -> None:
        while True:  # ends when the agent cancels it
            await asyncio.sleep(interval_s)
            try:
                await self.collect(grace_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("identity garbage collection failed")

"""List-then-watch of one kind of object, kept as a local cache (client-go's informer).

The cache follows the API server: a first list, then a watch from the list's
resourceVersion; a watch the server ends is resumed where it stopped, an expired one
(410 Gone) or any error leads to a fresh list, whose difference with the cache is
delivered as events, so no deletion is missed while the watch was down.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from webb.backoff import Backoff

from .client import KubeClient, KubeError, Resource, WatchExpired

log = logging.getLogger(__name__)

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"

# (event type, the object now (or last seen, for DELETED), the object before or None)
Handler = Callable[[str, dict[str, Any], dict[str, Any] | None], Awaitable[None]]


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace") or ""
    return f"{ns}/{meta.get('name', '')}" if ns else str(meta.get("name", ""))


class Informer:
    def __init__(self, client: KubeClient, res: Resource, handler: Handler,
                 name: str = "") -> None:
        self.client = client
        self.res = res
        self.handler = handler
        self.name = name or res.plural
        self.objects: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()  # set after the first complete list
        self.errors = 0

    async def _emit(self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        try:
            await self.handler(kind, obj, old)
        except asyncio.CancelledError:
            raise
        except Exception:  # one bad object must not stop the cache
            log.exception("%s: handling %s %s failed", self.name, kind, object_key(obj))

    async def _relist(self) -> str:
        items, rv = await self.client.list(self.res)
        fresh = {object_key(o): o for o in items}
        for key in sorted(self.objects.keys() - fresh.keys()):
            old = self.objects.pop(key)
            await self._emit(DELETED, old, old)
        for key, obj in fresh.items():
            old = self.objects.get(key)
            if old is not None and _rv(old) == _rv(obj):
                continue
            self.objects[key] = obj
            await self._emit(MODIFIED if old is not None else ADDED, obj, old)
        return rv

    async def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        key = object_key(obj)
        if kind == DELETED:
            old = self.objects.pop(key, None)
            await self._emit(DELETED, obj, old)
            return
        old = self.objects.get(key)
        self.objects[key] = obj
        await self._emit(MODIFIED if old is not None else ADDED, obj, old)

    async def run(self) -> None:
        backoff = Backoff(0.5, 30.0)
        while True:  # ends when the agent cancels it
            try:
                rv = await self._relist()
                self.synced.set()
                backoff.reset()
                while True:
                    async for kind, obj in self.client.watch(self.res, rv):
                        new_rv = _rv(obj)
                        if new_rv:
                            rv = new_rv
                        if kind in (ADDED, MODIFIED, DELETED):
                            await self._apply(kind, obj)
                    # The server ended the watch (its timeout): resume from rv, after
                    # a pause so that a server ending watches at once is not hammered.
                    await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                raise
            except WatchExpired:
                log.info("%s: watch expired, listing again", self.name)
                continue
            except KubeError as e:
                self.errors += 1
                level = logging.WARNING if backoff.attempt < 3 else logging.ERROR
                log.log(level, "%s: %s (retrying)", self.name, e)
            except Exception:
                self.errors += 1
                log.exception("%s: watch failed (retrying)", self.name)
            await backoff.sleep()


def _rv(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", "") or "")

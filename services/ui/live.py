"""Live updates to the browser as server-sent events (EventSource reconnects by itself).

Events of one stream (one view):
  status  relay connection (connected / unreachable + error, nodes) and the view's state
  map     the whole service map with its layout, when it changed (at most once a second)
  flows   new table rows (oldest first), at most ``max_rows_per_push`` per update; the
          number of newer-than-last flows left out is in ``skipped``
Each client only remembers the last sequence number it was sent: memory per client is
constant whatever the flow rate.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator

from webb.timeouts import wait_for

from .relay import RelayClient
from .settings import Settings
from .view import View


_stopping = False
MAX_MAP_INTERVAL = 1.5  # seconds


def stop_all() -> None:
    """The server is shutting down: end every event stream at its next tick, so that
    connections close cleanly instead of being cancelled."""
    global _stopping
    _stopping = True


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def status_payload(relay: RelayClient, view: View) -> dict[str, Any]:
    return {"relay": relay.status(), "view": view.status(), "time": time.time()}


async def event_stream(view: View, relay: RelayClient, settings: Settings,
                       after: int | None = None) -> AsyncIterator[str]:
    view.subscribers += 1
    try:
        yield "retry: 2000\n\n"
        await _wait_ready(view)
        status_key = (relay.version, view.version)
        yield sse("status", status_payload(relay, view))
        snap = view.snapshot()
        map_version, map_sent = snap["version"], time.monotonic()
        yield sse("map", snap)
        last = view.seq - settings.table_rows if after is None else after
        rows, skipped = view.rows_since(max(0, last), settings.table_rows)
        last = view.seq
        yield sse("flows", {"rows": rows, "skipped": skipped, "seq": last, "initial": True,
                            "max_rows": settings.table_rows})
        status_sent = time.monotonic()
        while not _stopping:
            await asyncio.sleep(settings.push_interval)
            view.touch()
            now = time.monotonic()
            if view.seq > last:
                rows, skipped = view.rows_since(last, settings.max_rows_per_push)
                last = view.seq
                yield sse("flows", {"rows": rows, "skipped": skipped, "seq": last})
            # big maps cost more to build and send: then they come less often, but never
            # more than 1.5 s apart (with the push tick, a map is at most ~2 s old)
            interval = min(MAX_MAP_INTERVAL, max(settings.map_interval, 6 * view.snapshot_cost))
            if view.map.version != map_version and now - map_sent >= interval:
                snap = view.snapshot()
                map_version, map_sent = snap["version"], now
                yield sse("map", snap)
            key = (relay.version, view.version)
            if key != status_key or now - status_sent >= 5.0:
                status_key, status_sent = key, now
                yield sse("status", status_payload(relay, view))
    finally:
        view.subscribers -= 1
        view.touch()


async def _wait_ready(view: View, timeout: float = 3.0) -> None:
    try:
        await wait_for(asyncio.shield(view.ready.wait()), timeout)
    except asyncio.TimeoutError:
        pass

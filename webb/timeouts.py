"""asyncio.wait_for as Python 3.12 has it, for the 3.11 this project also runs on.

Python 3.11's `asyncio.wait_for` swallows a cancellation of the calling task when
the awaited thing finishes in the same loop step as the cancel arrives: it returns
the result and the task runs on as if never cancelled (python/cpython#86296, fixed
in 3.12 by building wait_for on `asyncio.timeout`). A service loop that waits this
way (an event or a timeout) then outlives the `cancel(); await task` that stops it,
and its stop hangs: seen as the metrics exporter's stop never returning when its
follower's channel became ready just as it was cancelled. `asyncio.timeout` runs the
awaited coroutine in the calling task itself, so a cancel always reaches it.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """`await aw`, TimeoutError (= asyncio.TimeoutError) after `timeout` seconds
    (None: no limit); a cancellation of the caller always propagates."""
    async with asyncio.timeout(timeout):
        return await aw

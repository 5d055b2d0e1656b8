"""Garbage-collector settings for a long-running webb service that handles flows.

CPython's defaults collect the youngest generation every 700 container allocations
and, now and then, walk every object the process holds. A service that turns flow
batches into short-lived objects (the UI: views, routes, windows of flows) then spends
~5 % of its CPU in the collector, with whole-heap walks of ~0.1 s. After start-up the
service freezes what it has built (modules, protobuf descriptors, the web framework)
out of the collector's sight and raises the youngest generation's threshold; the agent
does the same (services/agent/memory.py calls this). Reference counting still frees everything that
is not in a cycle at once; cycles are collected, only less often.
"""
from __future__ import annotations

import gc
import os

THRESHOLD = (50_000, 50, 100)


def freeze_and_raise(env: str, threshold: tuple[int, int, int] = THRESHOLD) -> bool:
    """Collects, freezes the survivors and raises the thresholds; False (nothing done)
    when the environment variable ``env`` is "default" (to measure the difference)."""
    if os.environ.get(env, "") == "default":
        return False
    gc.collect()
    gc.freeze()
    gc.set_threshold(*threshold)
    return True

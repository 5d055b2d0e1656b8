"""webb/gc_tune.py: a service freezes what it built and raises the collector's thresholds,
unless told to keep CPython's defaults."""
from __future__ import annotations

import gc

from webb.gc_tune import THRESHOLD, freeze_and_raise


def test_freeze_and_raise_unless_defaults_are_asked_for(monkeypatch):
    before = gc.get_threshold()
    try:
        monkeypatch.setenv("WEBB_TEST_GC", "default")
        assert not freeze_and_raise("WEBB_TEST_GC")
        assert gc.get_threshold() == before and gc.get_freeze_count() == 0
        monkeypatch.delenv("WEBB_TEST_GC")
        assert freeze_and_raise("WEBB_TEST_GC")
        assert gc.get_threshold() == THRESHOLD and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

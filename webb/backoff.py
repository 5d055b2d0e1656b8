"""Exponential back-off for every retry loop in webb (one implementation).

Two ways to use it:

- ``delay(attempt, low, high)``: a pure function for code that already counts its
  attempts (e.g. a merger that keeps the attempt number per upstream).
- ``Backoff(low, high)``: an object for a reconnect loop::

      backoff = Backoff(0.2, 5.0)
      while True:
          try:
              await connect_and_follow()      # on the first good answer: backoff.reset()
          except SomeError:
              ...
          await backoff.sleep()               # 0.2, 0.4, 0.8, ... 5.0 s, each ±20 %

The delay doubles per failed attempt from ``low`` up to ``high``; ``jitter`` (a
fraction) spreads it so that many clients of one restarted server do not all come
back in the same millisecond. ``sleep()`` is an ordinary asyncio sleep, so
cancelling the task ends it at once; ``wake()`` ends a pending sleep early without
cancelling anything (e.g. when the user asks to retry now or the service stops).
"""
from __future__ import annotations

import asyncio
import random
from typing import Callable

from .timeouts import wait_for

_MAX_EXP = 62  # 2**62 * any sane low is far above any high: stop growing there


def delay(attempt: int, low: float, high: float, jitter: float = 0.2,
          factor: float = 2.0, rand: Callable[[], float] = random.random) -> float:
    """The pause before retry number ``attempt`` (0 = first retry): ``low * factor**attempt``
    capped at ``high``, then spread by ±``jitter`` (never below 0, never above high*(1+jitter))."""
    if low < 0 or high < low:
        raise ValueError(f"back-off needs 0 <= low <= high, got low={low} high={high}")
    if not 0 <= jitter < 1:
        raise ValueError(f"back-off jitter must be in [0, 1), got {jitter}")
    if factor < 1:
        raise ValueError(f"back-off factor must be >= 1, got {factor}")
    attempt = max(0, attempt)
    base = high if attempt >= _MAX_EXP else min(high, low * factor ** attempt)
    if jitter:
        base *= 1.0 + jitter * (2.0 * rand() - 1.0)
    return max(0.0, base)


class Backoff:
    """Attempt counter + delay + a cancellable, wakeable asyncio sleep."""

    def __init__(self, low: float, high: float, jitter: float = 0.2, factor: float = 2.0,
                 rand: Callable[[], float] = random.random) -> None:
        delay(0, low, high, jitter, factor, rand)  # validates the arguments
        self.low = low
        self.high = high
        self.jitter = jitter
        self.factor = factor
        self._rand = rand
        self.attempt = 0  # failed attempts since the last success
        self._wake: asyncio.Event | None = None

    def reset(self) -> None:
        """Call on success: the next failure waits ``low`` again."""
        self.attempt = 0

    def next_delay(self) -> float:
        """The pause before the next retry; counts the attempt."""
        d = delay(self.attempt, self.low, self.high, self.jitter, self.factor, self._rand)
        self.attempt += 1
        return d

    async def sleep(self) -> bool:
        """Waits ``next_delay()`` seconds. Returns False if ``wake()`` cut it short.
        Cancelling the calling task cancels the sleep (CancelledError propagates)."""
        d = self.next_delay()
        ev = self._wake = asyncio.Event()
        try:
            await wait_for(ev.wait(), d)
        except asyncio.TimeoutError:
            return True
        finally:
            self._wake = None
        return False

    def wake(self) -> None:
        """Ends a pending ``sleep()`` now (no effect when nothing sleeps)."""
        if self._wake is not None:
            self._wake.set()

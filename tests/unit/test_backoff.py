"""webb.backoff: the one back-off of the project."""
import asyncio
import time

import pytest

from webb.backoff import Backoff, delay


def test_delay_doubles_up_to_high_without_jitter():
    assert [delay(a, 0.2, 5.0, jitter=0) for a in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert delay(10_000, 0.5, 30.0, jitter=0) == 30.0  # huge attempt numbers do not overflow
    assert delay(-3, 0.5, 30.0, jitter=0) == 0.5


def test_delay_jitter_spreads_within_bounds():
    assert delay(0, 1.0, 10.0, jitter=0.2, rand=lambda: 0.0) == pytest.approx(0.8)
    assert delay(0, 1.0, 10.0, jitter=0.2, rand=lambda: 1.0) == pytest.approx(1.2)
    assert delay(9, 1.0, 10.0, jitter=0.2, rand=lambda: 1.0) == pytest.approx(12.0)
    seen = {round(delay(3, 1.0, 100.0), 6) for _ in range(50)}
    assert len(seen) > 10 and all(6.4 <= s <= 9.6 for s in seen)


@pytest.mark.parametrize("kw", [dict(low=-1, high=1), dict(low=2, high=1),
                                dict(low=1, high=2, jitter=1.0), dict(low=1, high=2, factor=0.5)])
def test_bad_arguments_say_what_is_wrong(kw):
    with pytest.raises(ValueError, match="back-off"):
        delay(0, **kw)
    with pytest.raises(ValueError, match="back-off"):
        Backoff(**kw)


def test_counts_attempts_and_resets_on_success():
    b = Backoff(0.1, 1.0, jitter=0)
    assert [b.next_delay() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert b.attempt == 6
    b.reset()
    assert b.attempt == 0 and b.next_delay() == 0.1


def test_sleep_waits_the_delay_and_can_be_woken_or_cancelled():
    async def main():
        b = Backoff(0.05, 10.0, jitter=0)
        t0 = time.monotonic()
        assert await b.sleep() is True
        assert time.monotonic() - t0 >= 0.05
        # the next one would be 0.1 s, then 0.2 ... make it long and wake it instead
        b.attempt = 20
        task = asyncio.create_task(b.sleep())
        await asyncio.sleep(0)  # let it start sleeping
        t0 = time.monotonic()
        b.wake()
        assert await task is False
        assert time.monotonic() - t0 < 1.0
        b.wake()  # nothing sleeps: no effect, no error
        task = asyncio.create_task(b.sleep())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(main())

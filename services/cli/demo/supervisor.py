"""Keeps the demo's processes running, like kubelet keeps a node's containers.

A process that exits while the demo runs (a crash, `kill -9`) is logged with how it
ended and started again after a back-off (webb.backoff: 0.5 s doubling to 30 s, with
jitter, like kubelet's CrashLoopBackOff); everything else keeps running, so a user sees
what a cluster shows when one part fails: the relay marks a node unavailable and then
connected again, the UI and the exporter reconnect. A process that stayed up for
`STABLE_S` seconds starts its back-off afresh the next time it fails.
"""
from __future__ import annotations

import logging
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

from webb.backoff import delay

log = logging.getLogger("webb.demo")

BACKOFF_LOW_S = 0.5
BACKOFF_HIGH_S = 30.0
STABLE_S = 30.0  # up this long: the next failure is a first one again


@dataclass
class Child:
    """What the supervisor knows of one process: how to start it, how it fared."""

    key: str
    start: Callable[[], subprocess.Popen]
    proc: subprocess.Popen
    started_at: float = field(default_factory=time.monotonic)
    failures: int = 0  # consecutive quick failures: the back-off's attempt number
    restarts: int = 0
    restart_at: float | None = None  # when the exited process is started again


def exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.children: dict[str, Child] = {}
        self.clock = clock

    def add(self, key: str, start: Callable[[], subprocess.Popen],
            proc: subprocess.Popen) -> None:
        self.children[key] = Child(key, start, proc, self.clock())

    def remove(self, key: str) -> None:
        """A process the demo stops on purpose (scaled down) is not restarted."""
        self.children.pop(key, None)

    def check(self) -> list[str]:
        """Notes exits and restarts what is due; returns the keys restarted now."""
        now = self.clock()
        restarted = []
        for c in list(self.children.values()):
            if c.restart_at is None:
                code = c.proc.poll()
                if code is None:
                    continue
                if now - c.started_at >= STABLE_S:
                    c.failures = 0
                wait = delay(c.failures, BACKOFF_LOW_S, BACKOFF_HIGH_S)
                c.failures += 1
                c.restart_at = now + wait
                log.warning("%s (pid %d) %s after %.0fs; restarting in %.1fs (restart %d)",
                            c.key, c.proc.pid, exit_text(code), now - c.started_at, wait,
                            c.restarts + 1)
            elif now >= c.restart_at:
                try:
                    c.proc = c.start()
                except OSError as e:  # e.g. the binary went away: try again later
                    c.restart_at = now + delay(c.failures, BACKOFF_LOW_S, BACKOFF_HIGH_S)
                    c.failures += 1
                    log.error("%s could not be started again: %s", c.key, e)
                    continue
                c.restart_at = None
                c.started_at = now
                c.restarts += 1
                restarted.append(c.key)
                log.warning("%s restarted (pid %d, restart %d)", c.key, c.proc.pid, c.restarts)
        return restarted

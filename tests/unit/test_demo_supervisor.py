"""The demo's supervisor with real processes: a SIGKILLed one is logged and started
again after a growing back-off, the others keep running, a scaled-down one is not."""
from __future__ import annotations

import logging
import signal
import subprocess
import sys

import pytest

from webb_cli.demo import supervisor as sup
from webb_cli.demo.supervisor import Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        started.append(p)
        return p
    yield start, started
    for p in started:
        p.kill()
        p.wait(10)


def test_a_killed_process_is_restarted_with_backoff_and_the_rest_keeps_running(procs, caplog,
                                                                                monkeypatch):
    monkeypatch.setattr(sup, "delay", lambda attempt, low, high: min(high, low * 2 ** attempt))
    start, started = procs
    clock = Clock()
    s = Supervisor(clock)
    s.add("agent-n1", start, start())
    s.add("relay", start, start())
    relay = s.children["relay"].proc
    caplog.set_level(logging.INFO, logger="webb.demo")
    waits = []
    for round_ in range(3):  # three quick crashes: 0.5, 1, 2 s
        victim = s.children["agent-n1"].proc
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        assert s.check() == []  # noted, not restarted at once
        due = s.children["agent-n1"].restart_at
        assert due is not None
        waits.append(due - clock.now)
        clock.now = due - 0.01
        assert s.check() == []
        clock.now = due
        assert s.check() == ["agent-n1"]
        assert s.children["agent-n1"].proc.poll() is None
        assert s.children["agent-n1"].proc is not victim
        clock.now += 1
    assert waits == [0.5, 1.0, 2.0]
    assert relay.poll() is None and s.children["relay"].proc is relay  # untouched
    text = caplog.text
    assert "agent-n1 (pid" in text and "was killed by SIGKILL" in text
    assert "agent-n1 restarted (pid" in text and "restart 3)" in text
    # up for a while: the next crash starts the back-off afresh
    clock.now += sup.STABLE_S
    s.children["agent-n1"].proc.kill()
    s.children["agent-n1"].proc.wait(10)
    s.check()
    assert s.children["agent-n1"].restart_at == clock.now + 0.5


def test_exit_status_and_a_removed_process(procs, caplog):
    start, _ = procs
    s = Supervisor()
    done = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    done.wait(10)
    caplog.set_level(logging.INFO, logger="webb.demo")
    s.add("ui", start, done)
    s.check()
    assert "ui (pid" in caplog.text and "exited with status 3" in caplog.text
    gone = start()
    s.add("pod-x", start, gone)
    s.remove("pod-x")  # scaled down: stopped on purpose
    gone.kill()
    gone.wait(10)
    s.check()
    assert "pod-x" not in s.children and "pod-x" not in caplog.text

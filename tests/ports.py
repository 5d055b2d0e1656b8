"""Ports for the tests' own servers.

A port found by binding port 0 and closing is in the kernel's ephemeral range
(ip_local_port_range): until the server binds it, any connect() on the host may take
it as a source port, and the next bind(0) may hand it out again. Both happened in CI
(a UI and a relay given the same port; EADDRINUSE seconds later). Ports here come
from a block below the ephemeral range, which connect() never picks, and this process
never hands one out twice (until all have been used).
"""
from __future__ import annotations

import itertools
import random
import socket
from pathlib import Path

# Below Linux's default ephemeral range (32768-60999) and above the L7 proxy's
# upstream source ports (10260-29999), so a test agent's proxy never holds one either.
LOW, HIGH = 30000, 32767


def _ephemeral() -> range:
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return range(32768, 61000)
    return range(lo, hi + 1)


_EPHEMERAL = _ephemeral()
_SPAN = HIGH - LOW + 1
# A random start: two test runs on one machine (worktrees) rarely walk the same ports.
_turn = itertools.count(random.randrange(_SPAN))


def free_port(address: str = "127.0.0.1") -> int:
    """A port free on `address` now, outside the ephemeral range, not given out before."""
    for _ in range(_SPAN):
        port = LOW + next(_turn) % _SPAN
        if port in _EPHEMERAL:
            continue
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family) as s:
            try:
                s.bind((address, port))
            except OSError:
                continue  # held, or in TIME_WAIT: a server without SO_REUSEADDR would fail
        return port
    raise RuntimeError(f"no free port in {LOW}-{HIGH} outside the ephemeral range "
                       f"{_EPHEMERAL.start}-{_EPHEMERAL.stop - 1} on {address}")

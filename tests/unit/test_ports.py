"""The tests' port allocator: outside the ephemeral range, never the same port twice,
never a port something holds."""
import itertools
import socket
from pathlib import Path

import ports
from ports import free_port


def test_ports_are_outside_the_ephemeral_range_and_distinct():
    lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    got = [free_port() for _ in range(500)]
    assert len(set(got)) == len(got)
    assert not [p for p in got if lo <= p <= hi]


def test_a_held_port_is_skipped(monkeypatch):
    start = next(p for p in range(ports.LOW, ports.HIGH + 1)
                 if p not in ports._EPHEMERAL and _bindable(p))
    with socket.socket() as s:
        s.bind(("127.0.0.1", start))
        s.listen()
        # the next port in turn is the one this listener holds
        monkeypatch.setattr(ports, "_turn", itertools.count(start - ports.LOW))
        got = free_port()
    assert got != start and ports.LOW <= got <= ports.HIGH, got


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True

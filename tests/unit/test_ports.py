"""The tests' port allocator: outside the ephemeral range, never the same port twice."""
from pathlib import Path

from ports import free_port


def test_ports_are_outside_the_ephemeral_range_and_distinct():
    lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    got = [free_port() for _ in range(500)]
    assert len(set(got)) == len(got)
    assert not [p for p in got if lo <= p <= hi]


def test_a_held_port_is_not_handed_out():
    import socket
    held = []
    try:
        for _ in range(50):
            s = socket.socket()
            s.bind(("127.0.0.1", free_port()))
            s.listen()
            held.append(s)
        # every port handed out above was bindable: none of them was held already
        assert len({s.getsockname()[1] for s in held}) == 50
    finally:
        for s in held:
            s.close()

"""The source ports of the L7 proxy's upstream connections (l7proxy/steering.py), over
real loopback sockets. Root: the sockets are IP_TRANSPARENT, as in the agent. Their
TIME_WAIT and node services binding beside them are tested end to end in
tests/e2e/test_l7_egress.py."""
from __future__ import annotations

import asyncio
import errno
import itertools
import socket
import struct
from typing import Any, Callable

import pytest

from webb_agent.l7proxy.steering import connect_upstream, port_order, transparent_upstream_socket

pytestmark = pytest.mark.root


@pytest.mark.parametrize("ports", [(10260, 29999), (20000, 20063), (5, 5), (1, 7919),
                                   (1, 2 * 7919)])
def test_each_port_of_the_range_comes_once_per_turn(ports):
    lo, hi = ports
    n = hi - lo + 1
    turn = list(itertools.islice(port_order(ports), n))
    assert sorted(turn) == list(range(lo, hi + 1))


class _Datapath:
    async def in_netns(self, fn: Callable[[], Any]) -> Any:
        return fn()


def _two_free_ports() -> int:
    """A port p such that p and p + 1 are free on 127.0.0.1 now."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            p = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
            return p
    raise AssertionError("no two free ports in a row")


def test_a_taken_4_tuple_moves_the_connection_to_another_port():
    """The port's bind() succeeds beside another upstream connection of it
    (SO_REUSEADDR), its connect() to the same server does not (EADDRNOTAVAIL): the
    next port is tried. With no other port, the connection fails with that error."""
    async def run() -> None:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        dst = server.getsockname()
        p = _two_free_ports()
        held = transparent_upstream_socket(socket.AF_INET, "127.0.0.1", order=iter([p]))
        got: list[socket.socket] = []
        try:
            await asyncio.get_running_loop().sock_connect(held, dst)
            for _ in range(8):  # either port first, by chance: always the free one
                s = await connect_upstream(_Datapath(), socket.AF_INET, "127.0.0.1", dst,
                                           ports=(p, p + 1), timeout=5)
                got.append(s)
                assert s.getsockname()[1] == p + 1
                # A reset leaves no TIME_WAIT: the next one finds p + 1 free.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            with pytest.raises(OSError) as e:
                await connect_upstream(_Datapath(), socket.AF_INET, "127.0.0.1", dst,
                                       ports=(p, p), timeout=5)
            assert e.value.errno == errno.EADDRNOTAVAIL
        finally:
            held.close()
            server.close()
            for s in got:
                s.close()
    asyncio.run(run())

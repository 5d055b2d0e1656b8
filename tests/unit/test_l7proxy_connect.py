"""The L7 proxy's connection upstream when its client goes away meanwhile, over real
loopback sockets and a real thread standing for the agent's netlink thread. Root:
the upstream socket is IP_TRANSPARENT, as in the agent. The servers that fail right
after accepting are tested end to end in tests/e2e/test_l7_policy.py."""
from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest
import uvloop

from test_l7proxy_streaming import _Engine, _Registry
from webb_agent.l7proxy.connection import ClientConnection
from webb_agent.l7proxy.proxy import L7Proxy

pytestmark = pytest.mark.root


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class _GatedNetns:
    """in_netns on a thread of its own that waits for `gate` before running the job:
    the job is running (it cannot be cancelled any more) while the test closes the
    client."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1)
        self.entered = threading.Event()
        self.gate = threading.Event()

    async def in_netns(self, fn: Callable[[], Any]) -> Any:
        def job() -> Any:
            self.entered.set()
            self.gate.wait(10)
            return fn()
        return await asyncio.get_running_loop().run_in_executor(self.pool, job)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_client_gone_while_its_upstream_socket_is_made_leaks_nothing(loop_kind):
    """The task connecting upstream is cancelled while the netlink thread makes its
    socket: that socket is closed as soon as it comes, not left to the garbage
    collector (which closes it with a ResourceWarning, if nothing else holds it)."""
    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        netns = _GatedNetns()
        proxy = L7Proxy(_Engine(server.getsockname()[1]), _Registry(), netns)
        conns: list[ClientConnection] = []

        class Conn(ClientConnection):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                self.server = server.getsockname()  # the datapath's part
                conns.append(self)
        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        srv = await loop.create_server(lambda: Conn(proxy, True), sock=lst)
        before = _fds()
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, lst.getsockname())
        await loop.sock_sendall(client, b"GET / HTTP/1.1\r\nHost: s\r\n\r\n")
        assert await loop.run_in_executor(None, netns.entered.wait, 10)
        # The client resets its connection: the proxy's side goes, its task is cancelled.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        for _ in range(500):
            if not proxy._conns:
                break
            await asyncio.sleep(0.01)
        assert not proxy._conns and conns[0]._task is not None and conns[0]._task.cancelled()
        netns.gate.set()
        # The job ends, then its result reaches the loop: the socket must be gone by then.
        await loop.run_in_executor(netns.pool, lambda: None)
        for _ in range(500):
            if _fds() <= before:
                break
            await asyncio.sleep(0.01)
        assert _fds() <= before
        srv.close()
        await srv.wait_closed()
        server.close()
        netns.pool.shutdown()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        if loop_kind == "uvloop":
            uvloop.run(run())
        else:
            asyncio.run(run())
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)
                and "socket" in str(w.message)]
    assert not unclosed


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_clients_that_reset_before_they_are_served_leak_nothing(loop_kind):
    """A client that connects and resets at once (before the loop hands the connection
    to the proxy): under uvloop the transport then has no peer address. Its fd and its
    place among max_connections must be given back, or such clients fill the proxy."""
    async def run() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        proxy = L7Proxy(_Engine(9), _Registry(), _GatedNetns(), max_connections=8)
        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(64)
        srv = await loop.create_server(lambda: ClientConnection(proxy, True), sock=lst)
        await asyncio.sleep(0)
        before = _fds()
        for _ in range(20):  # more than max_connections, with the loop held meanwhile
            c = socket.socket()
            c.connect(lst.getsockname())
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        for _ in range(500):
            if proxy.stats.connections >= 20 and not proxy._conns and _fds() <= before:
                break
            await asyncio.sleep(0.01)
        assert proxy.stats.connections == 20
        assert not proxy._conns and proxy.stats.active == 0, proxy.stats
        assert _fds() <= before
        assert not errors, errors[0]
        srv.close()
        await srv.wait_closed()

    if loop_kind == "uvloop":
        uvloop.run(run())
    else:
        asyncio.run(run())

"""The L7 proxy's connection handler over real loopback sockets: bodies are streamed
with bounded buffers both ways (a peer that stops reading stops the other side), and
arrive whole once it reads again. Root: the upstream socket is IP_TRANSPARENT, as in
the agent. The eBPF steering is tested end to end in tests/e2e/test_l7_policy.py."""
from __future__ import annotations

import asyncio
import socket
import struct
import threading

import pytest

from webb_agent.l7proxy.connection import DNS, ClientConnection
from webb_agent.l7proxy.proxy import ACCESS_DENIED, L7Proxy, error_response
from webb_agent.policy.compile import DIR_EGRESS, L7Entry, PolicyRef
from webb_agent.policy.model import DNSRule

pytestmark = pytest.mark.root

BODY = 32 << 20        # far more than every socket buffer on the way can hold
BOUND = 1 << 20        # what the proxy may hold of it in user space
SMALL = 64 << 10       # the test's own socket buffers


class _Endpoint:
    id = 1


class _Registry:
    def by_ip(self, ip: str) -> _Endpoint:
        return _Endpoint()

    def is_local(self, ep: _Endpoint) -> bool:
        return True


class _Engine:
    def __init__(self, port: int) -> None:
        ref = PolicyRef("CiliumNetworkPolicy", "t", "p", 1, ())
        self.compiled = type("C", (), {"l7": {(1, DIR_EGRESS, port): (
            L7Entry(frozenset({5}), None, ref),)}})()

    def identity_of(self, ip: str) -> int:
        return 5


class _Datapath:
    async def in_netns(self, fn):  # type: ignore[no-untyped-def]
        return fn()


def _small(s: socket.socket) -> socket.socket:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
    return s


async def _proxy(server_port: int) -> tuple[L7Proxy, list[ClientConnection], int, asyncio.AbstractServer]:
    proxy = L7Proxy(_Engine(server_port), _Registry(), _Datapath())
    conns: list[ClientConnection] = []

    class Conn(ClientConnection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self.server = ("127.0.0.1", server_port)  # the datapath's part
            conns.append(self)
    lst = _small(socket.socket())
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    srv = await asyncio.get_running_loop().create_server(lambda: Conn(proxy, True), sock=lst)
    return proxy, conns, lst.getsockname()[1], srv


def _held(conn: ClientConnection) -> int:
    """What the proxy holds of the connection's bytes in user space."""
    up = conn.up.transport.get_write_buffer_size() if conn.up and conn.up.transport else 0
    assert conn.transport is not None
    return (up + conn.transport.get_write_buffer_size() + len(conn.buf) - conn.pos
            + len(conn.rbuf))


async def _until_stuck(sent: list[int]) -> None:
    """Until the pushing thread made no progress for a while."""
    last = -1
    while sent[0] != last:
        last = sent[0]
        await asyncio.sleep(0.3)


def test_a_request_body_to_a_server_that_does_not_read_stops_the_client():
    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = _small(socket.socket())
        server.bind(("127.0.0.1", 0))
        server.listen()
        proxy, conns, port, srv = await _proxy(server.getsockname()[1])
        sent = [0]
        answer: list[bytes] = []

        def client() -> None:
            c = _small(socket.socket())
            c.connect(("127.0.0.1", port))
            c.sendall(b"POST /up HTTP/1.1\r\nHost: s\r\nContent-Length: %d\r\n\r\n" % BODY)
            piece = b"x" * 65536
            while sent[0] < BODY:
                c.sendall(piece)
                sent[0] += len(piece)
            answer.append(c.recv(65536))
            c.close()
        t = threading.Thread(target=client, daemon=True)
        t.start()
        server.setblocking(False)
        up, _ = await loop.sock_accept(server)
        await _until_stuck(sent)  # the server reads nothing: everything stops
        assert sent[0] < BODY // 2 and len(conns) == 1
        assert _held(conns[0]) < BOUND, _held(conns[0])
        # The server reads: the whole body comes through, then its answer goes back.
        up.setblocking(False)
        got = 0
        head = b""
        while got < BODY:
            data = await loop.sock_recv(up, 1 << 20)
            assert data
            if not head:
                head, _, data = data.partition(b"\r\n\r\n")
            got += len(data)
        assert got == BODY and head.startswith(b"POST /up ")
        await loop.sock_sendall(up, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await loop.run_in_executor(None, t.join, 10)
        assert answer == [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
        up.close()
        server.close()
        srv.close()
        for conn in conns:
            conn.abort()
        await asyncio.sleep(0.05)
        assert not proxy._conns  # every connection let go of
    asyncio.run(run())


def test_an_answer_to_a_client_that_does_not_read_stops_the_server():
    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = _small(socket.socket())
        server.bind(("127.0.0.1", 0))
        server.listen()
        proxy, conns, port, srv = await _proxy(server.getsockname()[1])
        sent = [0]

        def serve() -> None:
            up, _ = server.accept()
            _small(up)
            while b"\r\n\r\n" not in up.recv(65536):
                pass
            up.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BODY)
            piece = b"y" * 65536
            while sent[0] < BODY:
                up.sendall(piece)
                sent[0] += len(piece)
            up.close()
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        c = _small(socket.socket())
        c.setblocking(False)
        await loop.sock_connect(c, ("127.0.0.1", port))
        await loop.sock_sendall(c, b"GET /big HTTP/1.1\r\nHost: s\r\n\r\n")
        await _until_stuck(sent)  # the client reads nothing: everything stops
        assert sent[0] < BODY // 2 and len(conns) == 1
        assert _held(conns[0]) < BOUND, _held(conns[0])
        got = b""
        while b"\r\n\r\n" not in got:
            got += await loop.sock_recv(c, 65536)
        n = len(got.partition(b"\r\n\r\n")[2])
        while n < BODY:
            data = await loop.sock_recv(c, 1 << 20)
            assert data
            n += len(data)
        assert n == BODY
        await loop.run_in_executor(None, t.join, 10)
        c.close()
        server.close()
        srv.close()
        for conn in conns:
            conn.abort()
        await asyncio.sleep(0.05)
        assert not proxy._conns  # every connection let go of
    asyncio.run(run())


class _NotLocal(_Registry):
    def is_local(self, ep: _Endpoint) -> bool:
        return False  # no rules apply: every request is denied (403)


def test_pipelined_denied_requests_of_a_client_that_does_not_read_stay_bounded():
    """Pipelined requests the proxy answers itself (403) are answered only as fast as
    the client reads: a 403 is ~7 times a minimal request, so answering everything a
    read brought at once held megabytes per connection for a client that reads nothing."""
    async def run() -> None:
        loop = asyncio.get_running_loop()
        proxy, conns, port, srv = await _proxy(9)
        proxy.registry = _NotLocal()
        request = b"GET / HTTP/1.1\r\n\r\n"
        n = (240 << 10) // len(request)
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)  # all sent before a read
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
        c.connect(("127.0.0.1", port))
        c.sendall(request * n)  # the loop is held: the proxy reads it in one go
        c.setblocking(False)
        for _ in range(20):
            await asyncio.sleep(0.02)
        assert len(conns) == 1 and conns[0].transport is not None
        # answers wait in user space up to the transport's high-water mark (one more
        # crosses it), the rest of the requests unread until the client reads
        t = conns[0].transport
        answer = len(error_response(403, ACCESS_DENIED, False))
        assert t.get_write_buffer_size() <= t.get_write_buffer_limits()[1] + answer, (
            t.get_write_buffer_size(), proxy.stats.denied)
        assert _held(conns[0]) < BOUND, _held(conns[0])
        # The client reads: every request gets its answer, in order.
        got = b""
        while got.count(b"HTTP/1.1 403 ") < n:
            data = await loop.sock_recv(c, 1 << 20)
            assert data
            got += data
        assert got.count(b"Access denied\r\n") == n and proxy.stats.denied == n
        c.close()
        srv.close()
        for conn in conns:
            conn.abort()
        await asyncio.sleep(0.05)
        assert not proxy._conns
    asyncio.run(run())


def _dns_query(ident: int, name: str) -> bytes:
    q = b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack("!6H", ident, 0x0100, 1, 0, 0, 0) + q + struct.pack("!2H", 1, 1)


def _big_dns_server(sock: socket.socket, records: int) -> None:
    """Answers each TCP query with `records` A records (a large answer), until closed."""
    while True:
        try:
            c, _ = sock.accept()
        except OSError:
            return
        with c:
            n = struct.unpack("!H", c.recv(2, socket.MSG_WAITALL))[0]
            q = c.recv(n, socket.MSG_WAITALL)
            rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + bytes((10, 9, 9, 9))
            a = struct.pack("!6H", *struct.unpack_from("!H", q), 0x8180, 1, records, 0, 0) \
                + q[12:] + rr * records
            c.sendall(struct.pack("!H", len(a)) + a)


def test_dns_over_tcp_answers_to_a_client_that_does_not_read_stay_bounded():
    """Pipelined DNS-over-TCP queries are asked upstream only as fast as the client
    reads the answers: a 30-byte query may bring a 64 KiB answer."""
    async def run() -> None:
        loop = asyncio.get_running_loop()
        dns = socket.socket()
        dns.bind(("127.0.0.1", 0))
        dns.listen(64)
        threading.Thread(target=_big_dns_server, args=(dns, 2000), daemon=True).start()
        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        ref = PolicyRef("CiliumNetworkPolicy", "t", "p", 1, ())
        entry = (L7Entry(frozenset({5}), None, ref, (DNSRule(match_pattern="*"),)),)
        engine = _Engine(0)
        engine.compiled.l7 = {(1, DIR_EGRESS, lst.getsockname()[1]): entry,
                              (1, DIR_EGRESS, dns.getsockname()[1]): entry}
        proxy = L7Proxy(engine, _Registry(), _Datapath())
        conns: list[ClientConnection] = []

        class Conn(ClientConnection):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                self.server = dns.getsockname()  # the datapath's part
                _small(transport.get_extra_info("socket"))  # the kernel holds little
                conns.append(self)
        srv = await loop.create_server(lambda: Conn(proxy, True), sock=lst)
        queries = 100
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
        c.setblocking(False)
        await loop.sock_connect(c, lst.getsockname())
        q = _dns_query(7, "big.example.com")
        await loop.sock_sendall(c, (struct.pack("!H", len(q)) + q) * queries)
        last = -1
        while proxy.stats.dns_queries != last:  # until the proxy stops asking
            last = proxy.stats.dns_queries
            await asyncio.sleep(0.3)
        assert conns and conns[0].state == DNS and conns[0].transport is not None
        t = conns[0].transport
        answer = 2 + len(q) + 2000 * 16
        assert t.get_write_buffer_size() <= t.get_write_buffer_limits()[1] + answer, (
            t.get_write_buffer_size(), proxy.stats.dns_queries)
        # The client reads: every query gets its answer.
        got = 0
        data = b""
        while got < queries:
            data += await loop.sock_recv(c, 1 << 20)
            while len(data) >= 2 and len(data) >= 2 + struct.unpack_from("!H", data)[0]:
                n = struct.unpack_from("!H", data)[0]
                assert data[2:4] == q[:2]
                data, got = data[2 + n:], got + 1
        assert proxy.stats.dns_queries == queries
        c.close()
        srv.close()
        dns.close()
        for conn in conns:
            conn.abort()
        await asyncio.sleep(0.05)
    asyncio.run(run())

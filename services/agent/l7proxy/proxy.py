"""The transparent HTTP/1.x proxy that enforces HTTP rules (Cilium's Envoy, in asyncio).

flow.c steers connections that an allow entry with HTTP rules lets in to the
listeners of this proxy (steering.py); the accepted socket's own address is the
original destination. Per request: the head is read and parsed, the client's
identity and the endpoint's port give the rules (rules.py), and the request is
either forwarded to the endpoint over a keep-alive connection of its own, with
its body streamed, or answered `403 Forbidden` with the body `Access denied`, as
Cilium's proxy answers. Requests on a connection are handled in order, so
pipelined requests get their answers in order; a denied request's body is read
and thrown away so the connection can go on.

Bad input ends with an answer and a close: 400 (not HTTP/1.x, malformed head or
framing), 431 (head over 60 KiB), 505 (another HTTP version), 408 (no complete
head within the idle timeout), 503 (the endpoint refused or closed before
answering); a server that closes mid-answer makes the proxy close the client's
connection (the client sees a cut answer, as it would without the proxy).
"""
from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..policy.compile import DIR_EGRESS, DIR_INGRESS, PolicyRef
from .http1 import (MAX_HEAD, TO_CLOSE, Head, HTTPError, parse_request, parse_response,
                    read_head, relay_body)
from .rules import decide
from .dnsproxy import DNSProxy, dns_sockets
from .steering import WEBB_UPSTREAM_MARK, Steering, listeners, transparent_upstream_socket

log = logging.getLogger(__name__)

REASONS = {400: "Bad Request", 403: "Forbidden", 408: "Request Timeout",
           431: "Request Header Fields Too Large", 501: "Not Implemented",
           503: "Service Unavailable", 505: "HTTP Version Not Supported"}
ACCESS_DENIED = b"Access denied\r\n"  # Cilium's body, CRLF included


@dataclass
class ProxyFlow:
    """One request or response the proxy handled, for an L7 flow."""

    time_ns: int
    family: int
    client: tuple[str, int]
    server: tuple[str, int]
    response: bool
    allowed: bool
    policies: tuple[PolicyRef, ...]
    request: Head | None            # None: nothing parsable came
    code: int = 0                   # responses
    response_head: Head | None = None
    latency_ns: int = 0
    error: str = ""                 # bad input, cut answers
    egress: bool = False            # the client's egress rules decided (else the server's ingress)


@dataclass
class ProxyStats:
    connections: int = 0
    active: int = 0
    requests: int = 0
    denied: int = 0
    dns_queries: int = 0
    dns_denied: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def _date() -> str:
    return email.utils.formatdate(usegmt=True)


def error_response(status: int, body: bytes, close: bool) -> bytes:
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            f"content-length: {len(body)}\r\ncontent-type: text/plain\r\n"
            f"date: {_date()}\r\nserver: webb\r\n" + ("connection: close\r\n" if close else "")
            + "\r\n")
    return head.encode("ascii") + body


class L7Proxy:
    def __init__(self, engine: Any, registry: Any, datapath: Any, port: int = 0,
                 idle_timeout: float = 60.0, stream_timeout: float = 300.0,
                 max_connections: int = 8192) -> None:
        self.engine = engine
        self.registry = registry
        self.datapath = datapath
        self.port = port
        self.egress_port = 0  # another listener: which one took a connection says whose rules apply
        self.idle_timeout = idle_timeout      # waiting for (the rest of) a request head
        self.stream_timeout = stream_timeout  # a request in flight: body and answer
        self.max_connections = max_connections
        self.steering = Steering()
        self.servers: list[asyncio.base_events.Server] = []
        self.stats = ProxyStats()
        self.on_flow: Callable[[ProxyFlow], None] | None = None
        self.dns = DNSProxy(engine, registry, datapath, self.stats)
        self._conns: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        dp = self.datapath

        def setup() -> tuple[list[socket.socket], list[socket.socket], list[socket.socket]]:
            self.steering.install(dp.netlink())
            ingress = listeners(self.port)
            try:
                for _ in range(20):
                    egress = listeners(0)
                    try:  # DNS on the egress listener's port number, UDP
                        return ingress, egress, dns_sockets(egress[0].getsockname()[1])
                    except OSError:
                        for s in egress:
                            s.close()
                raise OSError("no port free for the proxy's DNS sockets")
            except BaseException:
                for s in ingress:
                    s.close()
                raise
        ingress, egress, dns = await dp.in_netns(setup)
        self.dns.start(dns)
        self.port = ingress[0].getsockname()[1]
        self.egress_port = egress[0].getsockname()[1]
        for socks, is_egress in ((ingress, False), (egress, True)):
            for s in socks:
                self.servers.append(await asyncio.start_server(
                    functools.partial(self._handle, egress=is_egress), sock=s,
                    limit=MAX_HEAD + 1024))
        dp.set_proxy_port(self.port, self.egress_port)
        log.info("L7 proxy listening on 127.0.0.1/::1 ports %d (ingress rules) and %d (egress "
                 "rules) of the node's namespace", self.port, self.egress_port)

    async def stop(self) -> None:
        dp = self.datapath
        dp.set_proxy_port(0, 0)  # from now on policed connections drop, never pass
        for srv in self.servers:
            srv.close()
        await self.dns.stop()
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        self.servers.clear()
        try:
            await dp.in_netns(lambda: self.steering.remove(dp.netlink()))
        except Exception as e:
            log.warning("removing the proxy's routing: %s", e)

    # -- one client connection ---------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      egress: bool = False) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self.stats.connections += 1
        self.stats.active += 1
        conn = _Conn(self, reader, writer, egress)
        try:
            if len(self._conns) > self.max_connections:
                self.stats.error("overloaded")
                return  # refused: closed at once
            await conn.run()
        except asyncio.CancelledError:
            pass
        except Exception:
            self.stats.error("internal")
            log.exception("proxy connection failed")
        finally:
            self.stats.active -= 1
            self._conns.discard(task)
            conn.close()


class _Conn:
    """A client connection and, once a request is allowed, its connection upstream."""

    def __init__(self, proxy: L7Proxy, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, egress: bool = False) -> None:
        self.proxy = proxy
        self.egress = egress
        self.reader = reader
        self.writer = writer
        self.up_reader: asyncio.StreamReader | None = None
        self.up_writer: asyncio.StreamWriter | None = None
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.family = sock.family
        peer = writer.get_extra_info("peername")
        orig = writer.get_extra_info("sockname")
        self.client = (peer[0], peer[1])
        self.server = (orig[0], orig[1])  # the original destination
        self.loop = asyncio.get_running_loop()
        self.deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # The watchdog: one timer per connection rather than a timeout per read.
    def _arm(self, seconds: float) -> None:
        self.deadline = self.loop.time() + seconds
        t = self._timer
        if t is None or t.when() > self.deadline:
            if t is not None:
                t.cancel()
            self._timer = self.loop.call_at(self.deadline, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.deadline and self.loop.time() >= self.deadline:
            self.timed_out = True
            self.writer.transport.abort()
            if self.up_writer is not None:
                self.up_writer.transport.abort()
        elif self.deadline:
            self._timer = self.loop.call_at(self.deadline, self._check)

    timed_out = False

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.deadline = 0.0
        for w in (self.writer, self.up_writer):
            if w is not None:
                w.transport.abort() if w.transport.get_write_buffer_size() else w.close()

    def _flow(self, **kw: Any) -> None:
        cb = self.proxy.on_flow
        if cb is not None:
            try:
                cb(ProxyFlow(time.time_ns(), 4 if self.family == socket.AF_INET else 6,
                             self.client, self.server, egress=self.egress, **kw))
            except Exception:
                log.exception("reporting a proxy flow failed")

    def _entries(self) -> tuple[Any, int]:
        eng, reg = self.proxy.engine, self.proxy.registry
        local, remote = (self.client, self.server) if self.egress else (self.server, self.client)
        ep = reg.by_ip(local[0])
        if ep is None or not reg.is_local(ep):
            return (), 0  # nothing applies: denied (the datapath steered it, so it is policed)
        d = DIR_EGRESS if self.egress else DIR_INGRESS
        return (eng.compiled.l7.get((ep.id, d, self.server[1]), ()),
                eng.identity_of(remote[0]))

    async def _answer(self, status: int, body: bytes, head: Head | None, allowed: bool,
                      policies: tuple[PolicyRef, ...], error: str, t0: int,
                      close: bool = True) -> None:
        self.writer.write(error_response(status, body, close))
        await self.writer.drain()
        self._flow(response=True, allowed=allowed, policies=policies, request=head,
                   code=status, latency_ns=time.monotonic_ns() - t0, error=error)

    async def run(self) -> None:
        if self.egress and any(e.dns is not None for e in self._entries()[0]):
            return await self._run_dns()
        st = self.proxy.stats
        while True:
            self._arm(self.proxy.idle_timeout)
            t0 = time.monotonic_ns()
            try:
                raw = await read_head(self.reader)
                if raw is None:
                    return
                head = parse_request(raw)
            except HTTPError as e:
                if self.timed_out:
                    return
                st.error(f"request_{e.status}")
                self._flow(response=False, allowed=False, policies=(), request=None,
                           error=e.reason)
                await self._answer(e.status, e.reason.encode() + b"\r\n", None, False, (),
                                   e.reason, t0)
                return
            except (ConnectionError, asyncio.IncompleteReadError):
                if self.timed_out:
                    st.error("idle_timeout")
                return
            self._arm(self.proxy.stream_timeout)  # a slow server is not an idle client
            st.requests += 1
            entries, identity = self._entries()
            allowed, policies = decide(entries, identity, head)
            if not allowed:
                self._flow(response=False, allowed=False, policies=policies, request=head)
                st.denied += 1
                # A client waiting for `100 Continue` may never send its body: close.
                expects = head.body != 0 and (head.header("expect") or "").lower() == "100-continue"
                close = not head.keep_alive or expects
                await self._answer(403, ACCESS_DENIED, head, False, policies, "", t0, close)
                if close:
                    return
                try:  # the body goes nowhere; the connection goes on
                    await relay_body(head.body, self.reader, None)
                except (HTTPError, ConnectionError, asyncio.IncompleteReadError):
                    return
                continue
            if not await self._forward(head, policies, t0):
                return

    async def _run_dns(self) -> None:
        """DNS over TCP on a port with DNS rules: length-prefixed queries, answered in
        order (the DNS proxy decides each)."""
        dns = self.proxy.dns
        while True:
            self._arm(self.proxy.idle_timeout)
            try:
                n = struct.unpack("!H", await self.reader.readexactly(2))[0]
                query = await self.reader.readexactly(n)
            except (ConnectionError, asyncio.IncompleteReadError):
                return
            self._arm(self.proxy.stream_timeout)
            answer = await dns.handle(self.family, query, self.client, self.server, tcp=True)
            if answer is None:
                return  # not DNS, or no answer from the server: the client sees a close
            self.writer.write(struct.pack("!H", len(answer)) + answer)
            await self.writer.drain()

    async def _connect(self) -> bool:
        w = self.up_writer
        if w is not None and not w.is_closing() and not self.up_reader.at_eof():  # type: ignore[union-attr]
            return True
        if w is not None:
            w.close()
        dp = self.proxy.datapath
        fam, client = self.family, self.client[0]
        try:
            # From the client's address: the server sees the client.
            mark = 0 if self.egress else WEBB_UPSTREAM_MARK
            sock = await dp.in_netns(lambda: transparent_upstream_socket(fam, client, mark))
            await asyncio.wait_for(self.loop.sock_connect(sock, self.server), 10)
            self.up_reader, self.up_writer = await asyncio.open_connection(
                sock=sock, limit=MAX_HEAD + 1024)
        except (OSError, asyncio.TimeoutError) as e:
            self.proxy.stats.error("upstream_connect")
            log.debug("proxy: connecting to %s: %s", self.server, e)
            return False
        return True

    async def _forward(self, head: Head, policies: tuple[PolicyRef, ...], t0: int) -> bool:
        """Relays one allowed request and its answer; False: the connection ends."""
        st = self.proxy.stats
        if not await self._connect():
            self._flow(response=False, allowed=True, policies=policies, request=head)
            await self._answer(503, b"upstream connect error\r\n", head, True, policies,
                               "upstream connect error", t0)
            return False
        up_r, up_w = self.up_reader, self.up_writer
        assert up_r is not None and up_w is not None
        up_w.write(head.raw)
        # Reported once the request is on its way: its flow is built while the server works.
        self._flow(response=False, allowed=True, policies=policies, request=head)
        body_task = None
        if head.body:
            # Concurrently with the answer: `Expect: 100-continue`, early answers.
            body_task = asyncio.ensure_future(relay_body(head.body, self.reader, up_w))
        sent = False
        try:
            while True:
                raw = await read_head(up_r)
                if raw is None:
                    raise HTTPError(503, "upstream closed before answering")
                resp = parse_response(raw, head.start[0])
                code = int(resp.start[1])
                if 100 <= code < 200:
                    self.writer.write(raw)
                    sent = True
                    if code != 101:
                        continue  # 100 Continue and friends: the final answer follows
                break
            self._flow(response=True, allowed=True, policies=policies, request=head,
                       code=code, response_head=resp, latency_ns=time.monotonic_ns() - t0)
            if code == 101:  # the protocol switched: bytes both ways until either closes
                await self._splice(up_r, up_w)
                return False
            sent = True
            await relay_body(resp.body, up_r, self.writer, raw)
            if body_task is not None:
                await body_task
        except (HTTPError, ConnectionError, asyncio.IncompleteReadError) as e:
            if body_task is not None:
                body_task.cancel()
            if self.timed_out:
                st.error("stream_timeout")
                return False
            if isinstance(e, HTTPError) and not sent:
                st.error(f"response_{e.status}")
                await self._answer(e.status if e.status != 502 else 503,
                                   e.reason.encode() + b"\r\n", head, True, policies,
                                   e.reason, t0)
            else:
                st.error("cut_answer")
                self._flow(response=True, allowed=True, policies=policies, request=head,
                           code=0, latency_ns=time.monotonic_ns() - t0,
                           error=f"connection closed mid-answer: {e}")
            return False
        return head.keep_alive and resp.keep_alive and resp.body != TO_CLOSE

    async def _splice(self, up_r: asyncio.StreamReader, up_w: asyncio.StreamWriter) -> None:
        self.deadline = 0.0

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            finally:
                if w.can_write_eof():
                    w.write_eof()
        await asyncio.gather(pump(self.reader, up_w), pump(up_r, self.writer),
                             return_exceptions=True)

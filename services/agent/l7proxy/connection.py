"""One client connection of the L7 proxy and its connection upstream, as asyncio
protocol callbacks.

The hot path of a keep-alive connection is two callbacks and no task wake-up: the
client's bytes arrive (`data_received`), the head is parsed, decided and written
upstream at once; the server's answer arrives and is written to the client with the
first piece of its body. A stream reader/writer pair costs a future, a task step
and a drain per read, which was most of the proxy's time per request.

Bodies are streamed, never held: each piece is written on as it comes, as far as
its framing (http1.Body) says it belongs to the message. Buffers stay bounded by
flow control: a side whose send buffer is full (`pause_writing`) stops reading the
other side until it drains, and pipelined requests waiting behind the one in flight
stop the client's reads past PIPELINE_LIMIT bytes.

States of the client side: HEAD (waiting for a request head), BODY (a request body
coming: to the server, or to nowhere for a denied request), WAIT (the request is
upstream, its answer is awaited; more requests wait in the buffer), CONNECTING (the
connection upstream is being made), SPLICE (101 Switching Protocols: bytes both ways),
DNS (DNS over TCP on a port with DNS rules), CLOSED.
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..policy.compile import DIR_EGRESS, DIR_INGRESS, PolicyRef
from .http1 import MAX_HEAD, TO_CLOSE, Body, Head, HTTPError, find_head, parse_request, parse_response
from .rules import decide
from .steering import WEBB_UPSTREAM_MARK, connect_upstream

if TYPE_CHECKING:
    from .proxy import L7Proxy

log = logging.getLogger(__name__)

HEAD, BODY, WAIT, CONNECTING, SPLICE, DNS, CLOSED = range(7)
# Client bytes held while a request is in flight (pipelined requests behind it):
# past this the client's reads pause until the answer is through.
PIPELINE_LIMIT = MAX_HEAD + 4096
# Server bytes held when no request is in flight (nothing should come then).
UPSTREAM_LIMIT = 64 * 1024
# A connection closed with an answer still queued for a client that does not read
# is cut after this long.
LINGER = 10.0

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


def error_response(status: int, body: bytes, close: bool) -> bytes:
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            f"content-length: {len(body)}\r\ncontent-type: text/plain\r\n"
            f"date: {email.utils.formatdate(usegmt=True)}\r\nserver: webb\r\n"
            + ("connection: close\r\n" if close else "") + "\r\n")
    return head.encode("ascii") + body


class _Exchange:
    """The request in flight and what came back so far."""

    __slots__ = ("head", "policies", "t0", "req_done", "resp", "resp_body", "sent")

    def __init__(self, head: Head, policies: tuple[PolicyRef, ...], t0: int) -> None:
        self.head = head
        self.policies = policies
        self.t0 = t0
        self.req_done = False           # the request's body is all upstream
        self.resp: Head | None = None   # the final answer's head
        self.resp_body: Body | None = None
        self.sent = False               # something of the answer went to the client


class Upstream(asyncio.Protocol):
    """The proxy's connection to the original destination; it only hands events to
    its client side."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.conn._upstream_data(self, data)

    def eof_received(self) -> bool:
        return self.conn._upstream_eof(self)  # False: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.conn._upstream_lost(self, exc)

    def pause_writing(self) -> None:
        self.conn._upstream_full(True)

    def resume_writing(self) -> None:
        self.conn._upstream_full(False)


class ClientConnection(asyncio.Protocol):
    """A client connection the datapath steered to the proxy; its own address is the
    original destination."""

    def __init__(self, proxy: L7Proxy, egress: bool) -> None:
        self.proxy = proxy
        self.egress = egress
        self.state = HEAD
        self.transport: asyncio.Transport | None = None
        self.buf = b""               # client bytes not yet handled: buf[pos:]
        self.pos = 0
        self.scanned = 0             # where the next head search starts
        self.body: Body | None = None  # the request body coming (state BODY)
        self.to_server = False       # ... goes upstream (else: a denied request's, dropped)
        self.ex: _Exchange | None = None
        self.up: Upstream | None = None
        self.rbuf = b""              # server bytes not yet handled
        self.client_eof = False
        self.up_eof = False
        self.up_full = False         # the upstream send buffer is full
        self.client_full = False     # the client's send buffer is full
        self.reading = True          # the client's reads are on
        self.up_reading = True
        self.timed_out = False
        self.deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None  # connecting upstream, or a DNS query
        self._pumping = False
        self.family = socket.AF_INET
        self.client: tuple[str, int] = ("", 0)
        self.server: tuple[str, int] = ("", 0)
        self.loop = asyncio.get_running_loop()

    # -- the client's socket ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = t
        proxy = self.proxy
        st = proxy.stats
        st.connections += 1
        st.active += 1
        proxy._conns.add(self)
        sock = t.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.family = sock.family
        peer = t.get_extra_info("peername")
        orig = t.get_extra_info("sockname")
        if peer is None or orig is None:
            # Reset before the loop handed it over (uvloop then has no peer address):
            # nothing to serve, but the transport must still be closed, or its fd and
            # its place among max_connections stay taken for good.
            st.error("client_reset")
            t.abort()
            return
        self.client = (peer[0], peer[1])
        self.server = (orig[0], orig[1])  # the original destination
        if len(proxy._conns) > proxy.max_connections:
            st.error("overloaded")
            self._close()  # refused: closed at once
            return
        self._arm(proxy.idle_timeout)
        if self.egress and any(e.dns is not None for e in self._entries()[0]):
            self.state = DNS

    def data_received(self, data: bytes) -> None:
        pos = self.pos
        if pos < len(self.buf):
            self.buf = self.buf[pos:] + data
            self.scanned = max(0, self.scanned - pos)
        else:
            self.buf = data
            self.scanned = 0
        self.pos = 0
        try:
            self._pump()
        except Exception:
            self._internal_error()

    def eof_received(self) -> bool:
        self.client_eof = True
        try:
            self._pump()
        except Exception:
            self._internal_error()
        return True  # half-closed: an answer in flight still goes out

    def connection_lost(self, exc: Exception | None) -> None:
        st = self.proxy.stats
        if self.timed_out:
            st.error("idle_timeout" if self.state in (HEAD, DNS) else "stream_timeout")
        st.active -= 1
        self.proxy._conns.discard(self)
        self.state = CLOSED
        self.deadline = 0.0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
        up = self.up
        if up is not None and up.transport is not None and not up.closed:
            up.transport.abort()

    def pause_writing(self) -> None:
        self.client_full = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.client_full = False
        if self.state in (HEAD, DNS) and not self._pumping and (self.pos < len(self.buf)
                                                                 or self.client_eof):
            try:
                self._pump()  # requests that waited for the client to read
            except Exception:
                self._internal_error()
        else:
            self._update_reading()

    # -- the watchdog: one timer per connection, moved lazily ----------------------------
    def _arm(self, seconds: float) -> None:
        self.deadline = self.loop.time() + seconds
        t = self._timer
        if t is None or t.when() > self.deadline:
            if t is not None:
                t.cancel()
            self._timer = self.loop.call_at(self.deadline, self._check)

    def _check(self) -> None:
        self._timer = None
        if not self.deadline:
            return
        if self.loop.time() >= self.deadline:
            self.timed_out = True
            self.abort()
        else:
            self._timer = self.loop.call_at(self.deadline, self._check)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        up = self.up
        if up is not None and up.transport is not None:
            up.transport.abort()

    def _close(self) -> None:
        """Ends the connection: what is queued for the client still goes out (bounded
        by LINGER), the connection upstream is cut."""
        if self.state == CLOSED:
            return
        splice, self.state = self.state == SPLICE, CLOSED
        t = self.transport
        assert t is not None
        up = self.up
        if up is not None and up.transport is not None and not up.closed:
            if splice:
                up.transport.close()  # what the client sent last still goes out
            else:
                up.transport.abort()
        t.close()
        if t.get_write_buffer_size():
            self._arm(LINGER)
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.deadline = 0.0

    def _internal_error(self) -> None:
        """An unexpected error (a bug): the client is never left waiting. A request
        without any of its answer sent yet gets a 503 and its flow; else the
        connection is cut, as a server that fails mid-answer cuts it."""
        self.proxy.stats.error("internal")
        log.exception("proxy connection failed")
        ex, t = self.ex, self.transport
        try:
            if ex is not None:
                self.ex = None
                if not ex.sent and t is not None and not t.is_closing():
                    self._answer(503, b"internal error\r\n", ex.head, True, ex.policies,
                                 "internal error", ex.t0)
                    return
                self._flow(True, True, ex.policies, ex.head, 0, None,
                           time.monotonic_ns() - ex.t0, "internal error")
        except Exception:
            log.exception("proxy: answering after an internal error")
        self.abort()

    # -- flows ---------------------------------------------------------------------------
    def _flow(self, response: bool, allowed: bool, policies: tuple[PolicyRef, ...],
              request: Head | None, code: int = 0, response_head: Head | None = None,
              latency_ns: int = 0, error: str = "") -> None:
        cb = self.proxy.on_flow
        if cb is not None:
            try:
                cb(ProxyFlow(time.time_ns(), 4 if self.family == socket.AF_INET else 6,
                             self.client, self.server, response, allowed, policies, request,
                             code, response_head, latency_ns, error, self.egress))
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

    def _answer(self, status: int, body: bytes, head: Head | None, allowed: bool,
                policies: tuple[PolicyRef, ...], error: str, t0: int, close: bool = True) -> None:
        assert self.transport is not None
        self.transport.write(error_response(status, body, close))
        self._flow(True, allowed, policies, head, status, None, time.monotonic_ns() - t0, error)
        if close:
            self._close()

    # -- requests --------------------------------------------------------------------------
    def _pump(self) -> None:
        """Handles the client's bytes as far as the state allows."""
        self._pumping = True
        try:
            self._pump_client()
        finally:
            self._pumping = False
        self._update_reading()

    def _pump_client(self) -> None:
        while True:
            state = self.state
            if state == HEAD:
                # A client that does not read its answers gets no more of them: the
                # proxy's own (403, pipelined) would otherwise pile up ~7 times what
                # the requests took (resume_writing goes on).
                if self.client_full or not self._next_head():
                    break
            elif state == BODY:
                if not self._request_body():
                    break
            elif state == SPLICE:
                self._splice_client()
                break
            elif state == DNS:
                self._next_dns()
                break
            else:  # WAIT, CONNECTING: the bytes wait; CLOSED: they go nowhere
                break

    def _next_head(self) -> bool:
        buf, pos = self.buf, self.pos
        end = find_head(buf, pos, self.scanned)
        if end < 0:
            if len(buf) - pos > MAX_HEAD:
                self._bad_request(HTTPError(431, "head larger than 60 KiB"))
            elif self.client_eof:
                if len(buf) > pos:
                    self._bad_request(HTTPError(400, "connection closed inside a head"))
                else:
                    self._close()
            else:
                self.scanned = max(pos, len(buf) - 3)
            return False
        self.pos = end
        self.scanned = 0
        t0 = time.monotonic_ns()
        if end - pos > MAX_HEAD:
            self._bad_request(HTTPError(431, "head larger than 60 KiB"))
            return False
        try:
            head = parse_request(buf[pos:end] if pos or end < len(buf) else buf)
        except HTTPError as e:
            self._bad_request(e)
            return False
        self._request(head, t0)
        return True

    def _bad_request(self, e: HTTPError) -> None:
        st = self.proxy.stats
        st.error(f"request_{e.status}")
        self._flow(False, False, (), None, error=e.reason)
        self._answer(e.status, e.reason.encode() + b"\r\n", None, False, (), e.reason,
                     time.monotonic_ns())

    def _request(self, head: Head, t0: int) -> None:
        proxy = self.proxy
        st = proxy.stats
        self._arm(proxy.stream_timeout)  # a slow server is not an idle client
        st.requests += 1
        entries, identity = self._entries()
        allowed, policies = decide(entries, identity, head)
        if not allowed:
            self._flow(False, False, policies, head)
            st.denied += 1
            # A client waiting for `100 Continue` may never send its body: close.
            expects = head.body != 0 and (head.header("expect") or "").lower() == "100-continue"
            close = not head.keep_alive or expects
            self._answer(403, ACCESS_DENIED, head, False, policies, "", t0, close)
            if close:
                return
            if head.body:  # the body goes nowhere; the connection goes on
                self.body, self.to_server, self.state = Body(head.body), False, BODY
            else:
                self._arm(proxy.idle_timeout)
            return
        self.ex = _Exchange(head, policies, t0)
        up = self.up
        if up is None or up.closed or self.up_eof:
            self.state = CONNECTING
            self._task = asyncio.ensure_future(self._connect())
            return
        self._send_request()

    def _send_request(self) -> None:
        ex = self.ex
        up = self.up
        assert ex is not None and up is not None and up.transport is not None
        head = ex.head
        up.transport.write(head.raw)
        if head.body:
            self.body, self.to_server, self.state = Body(head.body), True, BODY
        else:
            ex.req_done = True
            self.state = WAIT
        # Reported once the request is on its way: its flow is built while the server works.
        self._flow(False, True, ex.policies, head)
        if self.rbuf:
            self._pump_response()

    def _request_body(self) -> bool:
        """A piece of the request body on its way (or dropped); True: the body ended."""
        body = self.body
        assert body is not None
        buf, pos = self.buf, self.pos
        if pos < len(buf):
            try:
                n = body.feed(buf, pos)
            except HTTPError as e:
                self.proxy.stats.error(f"request_body_{e.status}")
                self._request_cut(f"request body: {e.reason}")
                return False
            if n and self.to_server:
                up = self.up
                assert up is not None and up.transport is not None
                up.transport.write(buf[pos:pos + n] if pos or n < len(buf) else buf)
            self.pos = pos + n
        if not body.done:
            if self.client_eof:
                self.proxy.stats.error("cut_request")
                self._request_cut("the client closed inside a request body")
            return False
        self.body = None
        if not self.to_server:
            self.state = HEAD
            self._arm(self.proxy.idle_timeout)
            return True
        ex = self.ex
        assert ex is not None
        ex.req_done = True
        self.state = WAIT
        if ex.resp_body is not None and ex.resp_body.done:
            self._exchange_done()  # the answer came first (an early answer)
        return True

    def _request_cut(self, error: str) -> None:
        """The client's request can no longer be relayed: the connection ends."""
        ex = self.ex
        if self.to_server and ex is not None and not ex.sent:
            self._flow(True, True, ex.policies, ex.head, 0, None,
                       time.monotonic_ns() - ex.t0, error)
        self._close()

    async def _connect(self) -> None:
        proxy = self.proxy
        fam, client = self.family, self.client[0]
        if self.up is not None and self.up.transport is not None:
            self.up.transport.abort()
        self.up, self.rbuf, self.up_eof, self.up_full, self.up_reading = None, b"", False, False, True
        up = Upstream(self)
        try:
            # From the client's address: the server sees the client.
            mark = 0 if self.egress else WEBB_UPSTREAM_MARK
            sock = await connect_upstream(proxy.datapath, fam, client, self.server, mark,
                                          ports=proxy.upstream_ports, timeout=10)
            try:
                # The server's events count from its first one: a server that answers or
                # closes at once may do so before this task runs again (_upstream_*
                # keep them while CONNECTING).
                self.up = up
                await self.loop.create_connection(lambda: up, sock=sock)
                if up.closed:  # reset before the request could go out
                    raise ConnectionResetError("the connection was reset")
            except BaseException:
                self.up = None
                if up.transport is not None:
                    up.transport.abort()  # it owns the socket
                else:
                    sock.close()
                raise
        except asyncio.CancelledError:
            raise  # the client went away (connection_lost)
        except Exception as e:  # refused, timed out, reset; or anything unexpected
            self._task = None
            if self.state != CONNECTING:
                return
            proxy.stats.error("upstream_connect")
            if isinstance(e, OSError):
                log.debug("proxy: connecting to %s: %s", self.server, e)
            else:
                log.exception("proxy: connecting to %s", self.server)
            ex = self.ex
            assert ex is not None
            self._flow(False, True, ex.policies, ex.head)
            self._answer(503, b"upstream connect error\r\n", ex.head, True, ex.policies,
                         "upstream connect error", ex.t0)
            return
        self._task = None
        if self.state != CONNECTING:  # the client went away meanwhile
            up.transport.abort()  # type: ignore[union-attr]
            return
        try:
            self._send_request()
            if self.up_eof:  # the server closed before the request went out
                self._upstream_gone("")
            self._pump()
        except Exception:
            self._internal_error()

    # -- answers ---------------------------------------------------------------------------
    def _upstream_data(self, up: Upstream, data: bytes) -> None:
        if up is not self.up:
            return
        self.rbuf = self.rbuf + data if self.rbuf else data
        try:
            if self.state == SPLICE:
                self._splice_upstream()
            elif self.ex is not None and self.state != CONNECTING:  # else: _connect
                self._pump_response()
            self._update_reading()
        except Exception:
            self._internal_error()

    def _pump_response(self) -> None:
        try:
            self._answer_pieces()
        except HTTPError as e:  # malformed chunked framing from the server
            self._bad_answer(e)

    def _answer_pieces(self) -> None:
        ex = self.ex
        t = self.transport
        assert ex is not None and t is not None
        while self.rbuf and self.ex is ex:
            buf = self.rbuf
            if ex.resp_body is not None and ex.resp_body.done:
                return  # an early answer is through; the request body still goes up
            if ex.resp_body is None:
                end = find_head(buf, 0, 0)
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        self._bad_answer(HTTPError(431, "answer head larger than 60 KiB"))
                    return
                try:
                    resp = parse_response(buf[:end] if end < len(buf) else buf, ex.head.start[0])
                except HTTPError as e:
                    self._bad_answer(e)
                    return
                code = int(resp.start[1])
                if 100 <= code < 200:
                    t.write(resp.raw)
                    ex.sent = True
                    self.rbuf = buf[end:]
                    if code == 101:  # the protocol switched: bytes both ways until either closes
                        self._flow(True, True, ex.policies, ex.head, code, resp,
                                   time.monotonic_ns() - ex.t0)
                        self._start_splice()
                        return
                    continue  # 100 Continue and friends: the final answer follows
                ex.resp, ex.sent = resp, True
                body = ex.resp_body = Body(resp.body)
                n = body.feed(buf, end)
                # The head goes out with the first piece of the body: one send, one
                # wake-up of the client, for the common small answer.
                t.write(buf if end + n == len(buf) else buf[:end + n])
                self.rbuf = buf[end + n:]
                self._flow(True, True, ex.policies, ex.head, code, resp,
                           time.monotonic_ns() - ex.t0)
            else:
                body = ex.resp_body
                n = body.feed(buf, 0)
                t.write(buf if n == len(buf) else buf[:n])
                self.rbuf = buf[n:]
            if body.done:
                if ex.req_done:
                    self._exchange_done()
                return

    def _bad_answer(self, e: HTTPError) -> None:
        ex = self.ex
        assert ex is not None
        st = self.proxy.stats
        if ex.sent:  # the client has part of the answer: it sees it cut
            st.error("cut_answer")
            self._flow(True, True, ex.policies, ex.head, 0, None, time.monotonic_ns() - ex.t0,
                       f"connection closed mid-answer: {e.reason}")
            self.ex = None
            self._close()
            return
        st.error(f"response_{e.status}")
        self._answer(e.status if e.status != 502 else 503, e.reason.encode() + b"\r\n",
                     ex.head, True, ex.policies, e.reason, ex.t0)

    def _exchange_done(self) -> None:
        ex = self.ex
        assert ex is not None and ex.resp is not None
        self.ex = None
        resp = ex.resp
        if not (ex.head.keep_alive and resp.keep_alive and resp.body != TO_CLOSE):
            self._close()
            return
        self.state = HEAD
        self._arm(self.proxy.idle_timeout)
        if not self._pumping and (self.pos < len(self.buf) or self.client_eof):
            self._pump()  # pipelined requests, or the client's close

    def _upstream_eof(self, up: Upstream) -> bool:
        """The server's EOF; True: keep its connection half-open (a splice)."""
        if up is not self.up:
            return False
        self.up_eof = True
        try:
            if self.state == SPLICE:
                t = self.transport
                if t is not None and t.can_write_eof():
                    t.write_eof()
                if self.client_eof:
                    self._close()
                    return False
                return True
            self._upstream_gone("")
        except Exception:
            self._internal_error()
        return False

    def _upstream_lost(self, up: Upstream, exc: Exception | None) -> None:
        if up is not self.up:
            return
        self.up_eof = True
        try:
            if self.state == SPLICE:
                self._close()
                return
            self._upstream_gone(f": {exc}" if exc else "")
        except Exception:
            self._internal_error()

    def _upstream_gone(self, why: str) -> None:
        """The server closed: the end of an answer framed by the close, a cut answer,
        or (between requests) nothing."""
        ex = self.ex
        if ex is None or self.state in (CLOSED, CONNECTING):  # CONNECTING: _connect
            return
        st = self.proxy.stats
        body = ex.resp_body
        if body is None:
            self._bad_answer(HTTPError(503, "upstream closed before answering" if not self.rbuf
                                       else "upstream closed inside its answer's head"))
            return
        if body.eof():  # framed by the close: the whole answer is through
            if ex.req_done:
                self._exchange_done()
            else:
                self._close()
            return
        st.error("cut_answer")
        self._flow(True, True, ex.policies, ex.head, 0, None, time.monotonic_ns() - ex.t0,
                   f"connection closed mid-answer{why}: {body.wire} bytes of the body came")
        self.ex = None
        self._close()  # the client sees a cut answer, as it would without the proxy

    # -- flow control ----------------------------------------------------------------------
    def _upstream_full(self, full: bool) -> None:
        self.up_full = full
        self._update_reading()

    def _update_reading(self) -> None:
        t = self.transport
        if t is None or self.state == CLOSED:
            return
        state = self.state
        if state == SPLICE:
            pause = self.up_full
        else:
            # A client that does not read its answers gets no more of them; requests
            # waiting behind the one in flight are held up to PIPELINE_LIMIT.
            pause = (self.up_full
                     or (self.client_full and not (state == BODY and self.to_server))
                     or (state in (WAIT, CONNECTING, DNS)
                         and len(self.buf) - self.pos > PIPELINE_LIMIT))
        if pause == self.reading:
            self.reading = not pause
            if pause:
                t.pause_reading()
            else:
                t.resume_reading()
        up = self.up
        if up is None or up.transport is None or up.closed:
            return
        up_pause = self.client_full or (self.ex is None and self.state != SPLICE
                                        and len(self.rbuf) > UPSTREAM_LIMIT)
        if up_pause == self.up_reading:
            self.up_reading = not up_pause
            if up_pause:
                up.transport.pause_reading()
            else:
                up.transport.resume_reading()

    # -- 101 Switching Protocols: bytes both ways --------------------------------------------
    def _start_splice(self) -> None:
        self.state = SPLICE
        self.ex = None
        self.deadline = 0.0
        self._splice_upstream()
        self._splice_client()

    def _splice_client(self) -> None:
        up = self.up
        assert up is not None and up.transport is not None
        if self.pos < len(self.buf):
            up.transport.write(self.buf[self.pos:] if self.pos else self.buf)
        self.buf, self.pos = b"", 0
        if self.client_eof:
            if up.transport.can_write_eof() and not up.closed:
                up.transport.write_eof()
            if self.up_eof:
                self._close()

    def _splice_upstream(self) -> None:
        if self.rbuf:
            assert self.transport is not None
            self.transport.write(self.rbuf)
            self.rbuf = b""

    # -- DNS over TCP on a port with DNS rules --------------------------------------------------
    def _next_dns(self) -> None:
        """Length-prefixed queries, answered in order (the DNS proxy decides each)."""
        if self._task is not None or self.client_full:
            return  # one query at a time, and none while the client leaves answers unread
        buf, pos = self.buf, self.pos
        if len(buf) - pos >= 2:
            n = struct.unpack_from("!H", buf, pos)[0]
            if len(buf) - pos >= 2 + n:
                self.pos = pos + 2 + n
                self._arm(self.proxy.stream_timeout)
                self._task = asyncio.ensure_future(self._dns_query(buf[pos + 2:pos + 2 + n]))
                return
        if self.client_eof:
            self._close()

    async def _dns_query(self, query: bytes) -> None:
        try:
            answer = await self.proxy.dns.handle(self.family, query, self.client, self.server,
                                                 tcp=True)
        except Exception:
            log.exception("proxy: DNS over TCP failed")
            self.proxy.stats.error("internal")
            answer = None
        finally:
            self._task = None
        if self.state != DNS:
            return
        if answer is None:
            self._close()  # not DNS, or no answer from the server: the client sees a close
            return
        assert self.transport is not None
        self.transport.write(struct.pack("!H", len(answer)) + answer)
        self._arm(self.proxy.idle_timeout)
        self._pump()

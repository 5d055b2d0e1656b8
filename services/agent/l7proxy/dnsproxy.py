"""The DNS half of the proxy: queries to port 53 that `rules.dns` police (egress).

flow.c gives the client's datagrams to the proxy's UDP sockets (127.0.0.1 / ::1 on
the egress listener's port, IP_TRANSPARENT); IP_ORIGDSTADDR says where the query was
going. A query whose name one of the client's DNS rules selects (for that server's
identity) goes on to that server from the client's own address (transparent, as
Cilium's: flow.c gives the server's answer to the query's socket), and its answer
back to the client; any other gets REFUSED at once, as from Cilium's DNS proxy. Answers leave from the
original server's address and port (a transparent socket bound to it), so the client
sees its server answer. Before an allowed answer reaches the client, `on_answer`
(toFQDNs) may wait until the datapath allows the addresses in it, and `on_names` hands
it to the table that names flows (pipeline/l7/fqdn.py), as Cilium names flows from its
DNS proxy's answers. The passive L7 capture steps aside on proxied directions
(bpf/flow.c), so these answers are not learned twice from the client's interface.

Each query and each answer is an L7 flow (observation source "proxy"): the query
`dns-request` FORWARDED or DROPPED, the answer `dns-response` with its rcode.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable

from ..pipeline.l7.dns import DNSMessage, parse_dns
from ..policy.compile import DIR_EGRESS, L7Entry, PolicyRef
from ..policy.dnsmatch import matches
from .steering import (IP_TRANSPARENT, IPV6_TRANSPARENT, UPSTREAM_PORTS, connect_upstream,
                       netns_socket)

log = logging.getLogger(__name__)

IP_RECVORIGDSTADDR, IP_ORIGDSTADDR = 20, 20
IPV6_RECVORIGDSTADDR, IPV6_ORIGDSTADDR = 74, 74
RCODE_SERVFAIL, RCODE_REFUSED = 2, 5
MAX_DATAGRAM = 65535
UPSTREAM_TIMEOUT = 5.0   # a server that does not answer: the client's own retry decides
MAX_INFLIGHT = 4096      # queries being handled; more are dropped unanswered
# Queries waiting for their server at once, per agent (one socket each): more are
# answered SERVFAIL at once, as Cilium's --dnsproxy-concurrency-limit does.
MAX_UPSTREAM = 256
MAX_REPLY_SOCKETS = 256  # servers answered for at once (one socket each)


def dns_sockets(port: int) -> list[socket.socket]:
    """UDP sockets on 127.0.0.1 and ::1 (node's namespace, netlink thread) that flow.c
    assigns queries to; OSError if the port is taken for UDP."""
    out: list[socket.socket] = []
    try:
        for fam, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            s = socket.socket(fam, socket.SOCK_DGRAM)
            out.append(s)
            if fam == socket.AF_INET:
                s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                s.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
            else:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)
            s.bind((addr, port))
            s.setblocking(False)
    except BaseException:
        for s in out:
            s.close()
        raise
    return out


def reply_socket(family: int, addr: tuple[str, int]) -> socket.socket:
    """Sends answers from the original server's address and port (netlink thread)."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET:
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        s.bind(addr)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def orig_dst(family: int, ancdata: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
    """The original destination from IP_ORIGDSTADDR / IPV6_ORIGDSTADDR (a sockaddr)."""
    for level, kind, data in ancdata:
        if family == socket.AF_INET and level == socket.SOL_IP and kind == IP_ORIGDSTADDR \
                and len(data) >= 8:
            return socket.inet_ntop(socket.AF_INET, data[4:8]), struct.unpack("!H", data[2:4])[0]
        if family == socket.AF_INET6 and level == socket.IPPROTO_IPV6 \
                and kind == IPV6_ORIGDSTADDR and len(data) >= 24:
            return (socket.inet_ntop(socket.AF_INET6, data[8:24]),
                    struct.unpack("!H", data[2:4])[0])
    return None


def refused(query: bytes, rcode: int = RCODE_REFUSED) -> bytes:
    """The query sent back as a REFUSED (or other rcode) answer: its header with QR and
    the rcode, its question, nothing else (EDNS records dropped)."""
    ident, flags, qd = struct.unpack_from("!3H", query, 0)
    end = _question_end(query, qd)
    flags = (flags & 0x7900) | 0x8000 | 0x0080 | rcode  # QR, opcode, RD kept; RA
    return struct.pack("!6H", ident, flags, qd, 0, 0, 0) + query[12:end]


def _question_end(data: bytes, count: int) -> int:
    off = 12
    for _ in range(count):
        while True:
            n = data[off]
            if n & 0xC0 == 0xC0:
                off += 2
                break
            off += 1 + n
            if n == 0:
                break
        off += 4
    if off > len(data):
        raise ValueError("question cut")
    return off


def decide(entries: tuple[L7Entry, ...], identity: int,
           name: str) -> tuple[bool, tuple[PolicyRef, ...]]:
    """Cilium's merge: an applying rule without L7 rules allows every query, one with
    DNS rules the names they select."""
    applying = []
    for e in entries:
        if not e.covers(identity):
            continue
        applying.append(e.policy)
        if (e.dns is None and e.http is None) or (e.dns is not None and matches(e.dns, name)):
            return True, (e.policy,)
    return False, tuple(dict.fromkeys(applying))


class DNSFlow:
    """One query or answer the proxy handled, for an L7 flow (l7proxy/flows.py)."""

    __slots__ = ("time_ns", "family", "client", "server", "response", "allowed", "policies",
                 "message", "latency_ns", "tcp", "error")

    def __init__(self, family: int, client: tuple[str, int], server: tuple[str, int],
                 response: bool, allowed: bool, policies: tuple[PolicyRef, ...],
                 message: DNSMessage, latency_ns: int = 0, tcp: bool = False,
                 error: bool = False) -> None:
        self.tcp = tcp
        self.error = error  # allowed, but the proxy could not ask (verdict ERROR)
        self.time_ns = time.time_ns()
        self.family = family
        self.client, self.server = client, server
        self.response, self.allowed, self.policies = response, allowed, policies
        self.message = message
        self.latency_ns = latency_ns


class DNSProxy:
    def __init__(self, engine: Any, registry: Any, datapath: Any, stats: Any) -> None:
        self.engine = engine
        self.registry = registry
        self.datapath = datapath
        self.stats = stats
        self.on_flow: Callable[[DNSFlow], None] | None = None
        # toFQDNs: called with (client endpoint id, answer) before the answer is sent.
        self.on_answer: Callable[[int, DNSMessage], Awaitable[None]] | None = None
        # Names on flows: called with (answer, wall-clock ns) for every answer let
        # through, before the client has it (its next connection is named already).
        self.on_names: Callable[[DNSMessage, int], None] | None = None
        self._socks: list[socket.socket] = []
        self._replies: OrderedDict[tuple[int, str, int], socket.socket] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.max_upstream = MAX_UPSTREAM
        self.upstream_ports = UPSTREAM_PORTS  # source ports of its queries upstream
        self.upstream_active = 0  # queries waiting for their server now

    def start(self, socks: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        self._socks = socks
        for s in socks:
            loop.add_reader(s.fileno(), self._readable, s)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for s in self._socks:
            loop.remove_reader(s.fileno())
            s.close()
        self._socks = []
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for s in self._replies.values():
            s.close()
        self._replies.clear()

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(64):  # bounded: other work gets its turn
            try:
                data, anc, _flags, addr = sock.recvmsg(MAX_DATAGRAM, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("dns proxy: %s", e)
                return
            dst = orig_dst(sock.family, anc)
            if dst is None:
                self.stats.error("dns_no_destination")
                continue
            if len(self._tasks) >= MAX_INFLIGHT:
                self.stats.error("dns_overloaded")
                continue
            t = asyncio.ensure_future(self._query(sock.family, data, (addr[0], addr[1]), dst))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    def _flow(self, f: DNSFlow) -> None:
        if self.on_flow is not None:
            try:
                self.on_flow(f)
            except Exception:
                log.exception("reporting a DNS proxy flow failed")

    async def _reply_socket(self, family: int, server: tuple[str, int]) -> socket.socket:
        key = (family, server[0], server[1])
        s = self._replies.get(key)
        if s is not None:
            self._replies.move_to_end(key)
            return s
        s = await netns_socket(self.datapath, lambda: reply_socket(family, server))
        old = self._replies.get(key)  # made meanwhile by another query
        if old is not None:
            s.close()
            return old
        self._replies[key] = s
        if len(self._replies) > MAX_REPLY_SOCKETS:
            self._replies.popitem(last=False)[1].close()
        return s

    async def _send(self, family: int, server: tuple[str, int], client: tuple[str, int],
                    data: bytes) -> None:
        try:
            s = await self._reply_socket(family, server)
            s.sendto(data, client)
        except OSError as e:
            self.stats.error("dns_reply")
            log.debug("dns proxy: answering %s from %s: %s", client, server, e)

    async def _query(self, family: int, data: bytes, client: tuple[str, int],
                     server: tuple[str, int]) -> None:
        answer = await self.handle(family, data, client, server, tcp=False)
        if answer is not None:
            await self._send(family, server, client, answer)

    async def handle(self, family: int, data: bytes, client: tuple[str, int],
                     server: tuple[str, int], tcp: bool) -> bytes | None:
        """One query (without TCP's length prefix): the answer for the client (REFUSED,
        or the server's), None for none. Reports both as flows."""
        t0 = time.monotonic_ns()
        fam = 4 if family == socket.AF_INET else 6
        msg = parse_dns(data)
        if msg is None or msg.is_response:
            self.stats.error("dns_bad_query")  # not DNS: dropped, as Cilium's proxy does
            return None
        self.stats.dns_queries += 1
        reg, eng = self.registry, self.engine
        ep = reg.by_ip(client[0])
        entries: tuple[L7Entry, ...] = ()
        if ep is not None and reg.is_local(ep):
            table = eng.compiled.l7 if tcp else eng.compiled.l7_udp
            entries = table.get((ep.id, DIR_EGRESS, server[1]), ())
        allowed, policies = decide(entries, eng.identity_of(server[0]), msg.query)
        if allowed and self.upstream_active >= self.max_upstream:
            # Full: SERVFAIL at once (the client may retry), never one more socket.
            return self._answer_error(fam, client, server, policies, msg, data, t0, tcp)
        self._flow(DNSFlow(fam, client, server, False, allowed, policies, msg, tcp=tcp))
        if not allowed:
            self.stats.dns_denied += 1
            try:
                answer = refused(data)
            except (ValueError, IndexError, struct.error):
                self.stats.error("dns_bad_query")
                return None
            got = parse_dns(answer)
            if got is not None:
                self._flow(DNSFlow(fam, client, server, True, False, policies, got,
                                   time.monotonic_ns() - t0, tcp=tcp))
            return answer
        self.upstream_active += 1
        try:
            answer = await self._upstream(family, client, server, data, tcp)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            self.stats.error("dns_upstream")
            log.debug("dns proxy: %s from %s: %s", msg.query, server, e)
            return None
        finally:
            self.upstream_active -= 1
        got = parse_dns(answer)
        if got is not None and self.on_answer is not None and ep is not None and not got.rcode:
            try:
                await self.on_answer(ep.id, got)
            except Exception:
                # toFQDNs could not take the addresses: the client may not reach them,
                # but the answer still goes (never more than the policy allows).
                log.exception("learning the addresses of %s failed", got.query)
        if got is not None:
            flow = DNSFlow(fam, client, server, True, True, policies, got,
                           time.monotonic_ns() - t0, tcp=tcp)
            if self.on_names is not None and not got.rcode and got.ips:
                try:
                    self.on_names(got, flow.time_ns)
                except Exception:
                    log.exception("naming the addresses of %s failed", got.query)
            self._flow(flow)
        return answer

    def _answer_error(self, fam: int, client: tuple[str, int], server: tuple[str, int],
                      policies: tuple[PolicyRef, ...], msg: DNSMessage, data: bytes, t0: int,
                      tcp: bool) -> bytes | None:
        """Too many queries upstream: the query is an ERROR flow, its answer SERVFAIL."""
        self.stats.error("dns_concurrency_limit")
        self._flow(DNSFlow(fam, client, server, False, True, policies, msg, tcp=tcp,
                           error=True))
        try:
            answer = refused(data, RCODE_SERVFAIL)
        except (ValueError, IndexError, struct.error):
            return None
        got = parse_dns(answer)
        if got is not None:
            self._flow(DNSFlow(fam, client, server, True, True, policies, got,
                               time.monotonic_ns() - t0, tcp=tcp, error=True))
        return answer

    async def _upstream(self, family: int, client: tuple[str, int], server: tuple[str, int],
                        data: bytes, tcp: bool) -> bytes:
        """The server's answer to data (same id), asked from the client's address (as
        Cilium's transparent DNS proxy: the server and its policy see the pod), from a
        port of its own (steering.UPSTREAM_PORTS); flow.c gives the answer to this
        socket where it comes back towards the client (upstream_answer, proxy_assign)."""
        loop = asyncio.get_running_loop()
        kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
        deadline = loop.time() + UPSTREAM_TIMEOUT
        up = await connect_upstream(self.datapath, family, client[0], server, 0, kind,
                                    self.upstream_ports, UPSTREAM_TIMEOUT)
        try:
            if tcp:
                await loop.sock_sendall(up, struct.pack("!H", len(data)) + data)
                r, w = await asyncio.open_connection(sock=up)
                try:
                    n = struct.unpack("!H", await asyncio.wait_for(
                        r.readexactly(2), max(deadline - loop.time(), 0)))[0]
                    answer = await asyncio.wait_for(r.readexactly(n),
                                                    max(deadline - loop.time(), 0))
                    # The whole answer is read: the connection ends with a reset
                    # (SO_LINGER 0), leaving no TIME_WAIT. With one connection per
                    # query, a FIN from the proxy would leave a socket in TIME_WAIT for
                    # 60 s per query in the node's namespace (60,000 at 1,000 queries/s),
                    # each blocking its 4-tuple against a server without TCP timestamps.
                    # Letting the server close first would hold the socket, and a place
                    # of --dnsproxy-concurrency-limit, for the server's idle timeout.
                    up.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                finally:
                    w.close()
                if answer[:2] != data[:2]:
                    raise ValueError("answer with another id")
                return answer
            await loop.sock_sendall(up, data)
            while True:  # the answer with the query's id; anything else is ignored
                answer = await asyncio.wait_for(loop.sock_recv(up, MAX_DATAGRAM),
                                                max(deadline - loop.time(), 0))
                if len(answer) >= 2 and answer[:2] == data[:2]:
                    return answer
        finally:
            up.close()

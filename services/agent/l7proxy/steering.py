"""What makes the node deliver steered packets to the proxy (see bpf/flow.c, to_proxy).

Checked on kernel 6.18 (docs/policy.md, "L7 policy"): a packet that flow.c sends back
into the endpoint's interface with WEBB_PROXY_MARK, and gave a socket with
bpf_sk_assign, reaches that socket only if

- the node routes it locally: `ip rule fwmark WEBB_PROXY_MARK lookup TABLE` and a
  `local 0.0.0.0/0 dev lo` (and `::/0`) route in TABLE;
- the listener has IP_TRANSPARENT (else its SYN-ACK, from the endpoint's address,
  has no route);
- TCP and UDP early demux are off in the node's namespace (`net.ipv4.tcp_early_demux=0`,
  `udp_early_demux=0` for the DNS proxy's queries from a client's address):
  otherwise a packet of a proxied connection entering the node (from a pod or
  another node) finds the proxy's socket by its addresses before routing, and the
  forwarding path drops a packet that already has a socket, so the handshake never
  completes. Without early demux every packet is routed, reaches the endpoint's
  interface and is steered there.

All of it is done from the agent's netlink thread, which lives in the node's
namespace: sockets stay in the namespace they were made in.
"""
from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import random
import socket
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

WEBB_PROXY_MARK = 0x77650001     # bpf/flow.c
WEBB_UPSTREAM_MARK = 0x77650002  # the proxy's connections to endpoints (SO_MARK)
ROUTE_TABLE = 30565              # "wE": a table of its own, not one a CNI is likely to use
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
EARLY_DEMUX = "/proc/sys/net/ipv4/tcp_early_demux"
# The same for the DNS proxy's UDP sockets asking from a client's address: a server's
# answer would find the connected socket before routing, and the forwarding path drops it.
UDP_EARLY_DEMUX = "/proc/sys/net/ipv4/udp_early_demux"


def _ignore_exists(fn: Any, *args: Any, **kw: Any) -> None:
    try:
        fn(*args, **kw)
    except Exception as e:
        if getattr(e, "code", None) != errno.EEXIST:
            raise


class Steering:
    """Routing and sysctl of the node's namespace for the proxy; undone by remove()."""

    def __init__(self, table: int = ROUTE_TABLE) -> None:
        self.table = table
        self._early_demux: dict[str, str] = {}

    def install(self, ipr: Any) -> None:
        """Netlink thread. Idempotent: an agent restarted after a crash finds its rules."""
        lo = ipr.link_lookup(ifname="lo")[0]
        for family, dst in ((socket.AF_INET, "0.0.0.0/0"), (socket.AF_INET6, "::/0")):
            _ignore_exists(ipr.rule, "add", table=self.table, fwmark=WEBB_PROXY_MARK,
                           family=family, priority=100)
            _ignore_exists(ipr.route, "add", dst=dst, type="local", table=self.table, oif=lo,
                           family=family, scope=254)  # host scope, as `ip route` gives local
        for path in (EARLY_DEMUX, UDP_EARLY_DEMUX):
            with open(path) as f:
                self._early_demux[path] = was = f.read().strip()
            if was != "0":
                with open(path, "w") as f:
                    f.write("0")

    def remove(self, ipr: Any) -> None:
        lo = ipr.link_lookup(ifname="lo")
        for family, dst in ((socket.AF_INET, "0.0.0.0/0"), (socket.AF_INET6, "::/0")):
            for fn, kw in ((ipr.rule, dict(table=self.table, fwmark=WEBB_PROXY_MARK,
                                           family=family, priority=100)),
                           (ipr.route, dict(dst=dst, type="local", table=self.table,
                                            oif=lo[0] if lo else 0, family=family,
                                            scope=254))):
                try:
                    fn("del", **kw)
                except Exception as e:
                    log.debug("removing proxy routing: %s", e)
        for path, was in self._early_demux.items():
            if was != "0":
                with open(path, "w") as f:
                    f.write(was)


def listeners(port: int = 0) -> list[socket.socket]:
    """IP_TRANSPARENT listeners on 127.0.0.1 and ::1, one port (flow.c looks them up
    by these addresses). Netlink thread: they live in the node's namespace."""
    for _ in range(20):
        s4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s4.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        s4.bind(("127.0.0.1", port))
        got = s4.getsockname()[1]
        s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s6.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        try:
            s6.bind(("::1", got))
        except OSError:
            s4.close()
            s6.close()
            if port:
                raise
            continue  # the port is taken for IPv6: another one
        for s in (s4, s6):
            s.listen(1024)
            s.setblocking(False)
        return [s4, s6]
    raise OSError("no port free for the proxy on both 127.0.0.1 and ::1")


# Source ports of the proxy's upstream connections (from the client's address): below
# the default ephemeral range (32768-60999) that the pods' own connections take theirs from, so
# that the proxy's connection from the client's address never has the 4-tuple of one
# the client opens itself (flow.c would take the one's answers for the other's). These
# sockets live in the node's namespace, so the range also stays clear of the ports node
# services listen on there: above the kubelet's and kube-proxy's (10248-10259), below
# NodePorts (30000-32767). --l7-proxy-upstream-ports picks another.
#
# The proxy picks the port itself: the kernel cannot pick one below the namespace's
# ip_local_port_range. IP_LOCAL_PORT_RANGE (with IP_BIND_ADDRESS_NO_PORT, a port chosen at
# connect() per 4-tuple) only narrows that range: on a node with the default 32768-60999, a
# per-socket 10260-29999 is ignored and the port comes from the pods' range (checked on
# kernel 6.18).
UPSTREAM_PORTS = (10260, 29999)
# Sockets made for one connection whose 4-tuple was taken (connect() EADDRNOTAVAIL).
CONNECT_TRIES = 8


def port_order(ports: tuple[int, int] = UPSTREAM_PORTS) -> Iterator[int]:
    """The ports of the range, each once per turn, from a random one on in steps of a
    prime: the ports one connection tries, in an order another does not share."""
    lo, hi = ports
    n = hi - lo + 1
    step = 7919 if n % 7919 else 1
    start = random.randrange(n)
    return (lo + (start + i * step) % n for i in itertools.count())


def transparent_upstream_socket(family: int, client_ip: str, mark: int = 0,
                                kind: int = socket.SOCK_STREAM,
                                order: Iterator[int] | None = None) -> socket.socket:
    """A socket for the proxy's connection to the original destination, from the
    client's own address (IP_TRANSPARENT; netlink thread, the node's namespace), so
    the server sees the client; flow.c gives the server's answers to this socket.
    Bound to the next port of `order` (port_order()) that bind() takes.

    Egress (mark 0): the destination's ingress policy applies to it as to the
    client's own connection. Ingress (WEBB_UPSTREAM_MARK): the proxy decided, the
    server's interface neither checks nor steers it again.

    TCP sockets have SO_REUSEADDR: bind() then takes a port beside sockets of it in
    TIME_WAIT (to any destination) and beside the proxy's other connections from that
    port, and connect() refuses only a 4-tuple in use (EADDRNOTAVAIL, connect_upstream
    tries another port); a TIME_WAIT of the same 4-tuple is taken over when the server
    uses TCP timestamps (the kernel does so for a bound port). Without it, bind() fails
    while any socket of the port is in TIME_WAIT, 60 s: ~330 new connections a second
    from one client used the whole range. It also lets a node service with SO_REUSEADDR
    (Go servers set it) bind and listen on a port such a connection holds. A listener
    keeps its port: bind() refuses it still. UDP sockets do without: two UDP sockets
    with SO_REUSEADDR share a port and could connect to the same server, and the answer
    of the one would go to the other."""
    if order is None:
        order = port_order()
    s = socket.socket(family, kind)
    try:
        if mark:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        if family == socket.AF_INET:
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _, port in zip(range(64), order):
            try:
                s.bind((client_ip, port))
                break
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
        else:
            raise OSError(errno.EADDRINUSE, "no source port free for the upstream connection")
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


async def connect_upstream(datapath: Any, family: int, client_ip: str,
                           server: tuple[str, int], mark: int = 0,
                           kind: int = socket.SOCK_STREAM,
                           ports: tuple[int, int] = UPSTREAM_PORTS,
                           timeout: float = 10.0) -> socket.socket:
    """A transparent_upstream_socket connected to server (timeout: the connect()'s).
    A port whose 4-tuple is taken (another of the proxy's connections to the same
    server from that port, or its TIME_WAIT without timestamps) fails at once with
    EADDRNOTAVAIL: the next socket tries the next port."""
    loop = asyncio.get_running_loop()
    order = port_order(ports)
    for _ in range(CONNECT_TRIES):
        sock = await netns_socket(datapath, lambda: transparent_upstream_socket(
            family, client_ip, mark, kind, order))
        try:
            await asyncio.wait_for(loop.sock_connect(sock, server), timeout)
            return sock
        except OSError as e:
            sock.close()
            if e.errno != errno.EADDRNOTAVAIL:
                raise
        except BaseException:
            sock.close()
            raise
    raise OSError(errno.EADDRNOTAVAIL, f"no source port free for a connection to {server}")


async def netns_socket(datapath: Any, make: Callable[[], socket.socket]) -> socket.socket:
    """make() run in the netlink thread (the node's namespace). If the caller is
    cancelled meanwhile (its client went away), the thread still finishes make(), and
    the socket it made is closed when it comes: nothing else holds it, and it would
    stay open until the garbage collector found it."""
    fut = asyncio.ensure_future(datapath.in_netns(make))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        fut.add_done_callback(_close_made)
        raise


def _close_made(fut: asyncio.Future[socket.socket]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()

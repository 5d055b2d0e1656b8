"""The transparent HTTP/1.x proxy that enforces HTTP rules (Cilium's Envoy, in asyncio).

flow.c steers connections that an allow entry with HTTP rules lets in to the
listeners of this proxy (steering.py); the accepted socket's own address is the
original destination. Per request: the head is read and parsed, the client's
identity and the endpoint's port give the rules (rules.py), and the request is
either forwarded to the endpoint over a keep-alive connection of its own, with
its body streamed, or answered `403 Forbidden` with the body `Access denied`, as
Cilium's proxy answers. Requests on a connection are handled in order, so
pipelined requests get their answers in order; a denied request's body is read
and thrown away so the connection can go on. The connections themselves are
protocol callbacks (connection.py): no task or future per request.

Bad input ends with an answer and a close: 400 (not HTTP/1.x, malformed head or
framing), 431 (head over 60 KiB), 505 (another HTTP version), 503 (the endpoint
refused or closed before answering); a client that stalls without a complete head
is closed after the idle timeout; a server that closes mid-answer makes the proxy
close the client's connection (the client sees a cut answer, as it would without
the proxy).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

from .connection import ACCESS_DENIED, ClientConnection, ProxyFlow, error_response
from .dnsproxy import DNSProxy, dns_sockets
from .steering import UPSTREAM_PORTS, Steering, listeners

log = logging.getLogger(__name__)

__all__ = ["ACCESS_DENIED", "L7Proxy", "ProxyFlow", "ProxyStats", "error_response"]


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


class L7Proxy:
    def __init__(self, engine: Any, registry: Any, datapath: Any, port: int = 0,
                 idle_timeout: float = 60.0, stream_timeout: float = 300.0,
                 max_connections: int = 8192,
                 upstream_ports: tuple[int, int] = UPSTREAM_PORTS) -> None:
        self.engine = engine
        self.registry = registry
        self.datapath = datapath
        self.port = port
        self.egress_port = 0  # another listener: which one took a connection says whose rules apply
        self.idle_timeout = idle_timeout      # waiting for (the rest of) a request head
        self.stream_timeout = stream_timeout  # a request in flight: body and answer
        self.max_connections = max_connections
        self.upstream_ports = upstream_ports  # source ports of connections from clients' addresses
        self.steering = Steering()
        self.servers: list[asyncio.base_events.Server] = []
        self.stats = ProxyStats()
        self.on_flow: Callable[[ProxyFlow], None] | None = None
        self.dns = DNSProxy(engine, registry, datapath, self.stats)
        self.dns.upstream_ports = upstream_ports
        self._conns: set[ClientConnection] = set()

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
        loop = asyncio.get_running_loop()
        for socks, is_egress in ((ingress, False), (egress, True)):
            for s in socks:
                self.servers.append(await loop.create_server(
                    functools.partial(ClientConnection, self, is_egress), sock=s))
        dp.set_proxy_port(self.port, self.egress_port)
        log.info("L7 proxy listening on 127.0.0.1/::1 ports %d (ingress rules) and %d (egress "
                 "rules) of the node's namespace", self.port, self.egress_port)

    async def stop(self) -> None:
        dp = self.datapath
        dp.set_proxy_port(0, 0)  # from now on policed connections drop, never pass
        for srv in self.servers:
            srv.close()
        await self.dns.stop()
        for c in list(self._conns):
            c.abort()
        for srv in self.servers:
            await srv.wait_closed()
        self.servers.clear()
        try:
            await dp.in_netns(lambda: self.steering.remove(dp.netlink()))
        except Exception as e:
            log.warning("removing the proxy's routing: %s", e)

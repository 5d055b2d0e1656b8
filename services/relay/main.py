"""webb-relay: one observer.Observer API (:4245) over every agent of the cluster."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from dataclasses import dataclass, field

import webb
from webb.durations import duration_arg as duration

from .discovery import DEFAULT_PEER_PORT, PeerServiceWatcher, add_static, normalize_address
from .fanout import FlowsOptions
from .observer import RelayObserver
from .pool import PeerPool, PoolOptions
from .server import start_server, track_health
from .tls import TLSConfigError, agent_tls, server_credentials

log = logging.getLogger("webb-relay")

VERSION = f"{webb.__version__}+webb-relay"

@dataclass
class RelayConfig:
    listen_address: str = ":4245"
    peers: list[str] = field(default_factory=list)
    peer_service: str = ""
    peer_port: int = DEFAULT_PEER_PORT
    flows: FlowsOptions = field(default_factory=FlowsOptions)
    dial_timeout: float = 5.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    agent_tls_ca: str = ""
    agent_tls_cert: str = ""
    agent_tls_key: str = ""
    agent_tls_server_name: str = ""


def parse_args(argv: list[str] | None = None) -> RelayConfig:
    p = argparse.ArgumentParser(
        prog="webb-relay",
        description="Serve Hubble's observer.Observer API for the whole cluster: discover the "
                    "agents, fan every request out to them and merge their flows in time order.",
        epilog="example: webb-relay --peer-service 127.0.0.1:4244   or   "
               "webb-relay --peers 10.0.0.1:4244,10.0.0.2:4244")
    p.add_argument("--listen-address", default=":4245",
                   help="gRPC address to serve on (default :4245)")
    p.add_argument("--peers", action="append", default=[], metavar="HOST:PORT,...",
                   help="static list of agent addresses (repeatable, comma-separated)")
    p.add_argument("--peer-service", default="", metavar="HOST:PORT",
                   help="address of a peer.Peer service (an agent) announcing the agents")
    p.add_argument("--peer-port", type=int, default=DEFAULT_PEER_PORT,
                   help="port for announced addresses that have none (default 4244)")
    p.add_argument("--sort-buffer-len-max", type=int, default=100, metavar="N",
                   help="flows buffered per request for sorting (default 100, as Hubble)")
    p.add_argument("--sort-buffer-drain-timeout", type=duration, default=1.0, metavar="DURATION",
                   help="longest a flow waits in the sorting buffer (default 1s, as Hubble)")
    p.add_argument("--error-aggregation-window", type=duration, default=10.0, metavar="DURATION",
                   help="equal node errors within this window become one NODE_ERROR "
                        "(default 10s, as Hubble)")
    p.add_argument("--queue-size", type=int, default=4096, metavar="N",
                   help="responses buffered per agent per request, plus the batch being "
                        "received (default 4096)")
    p.add_argument("--slow-client-timeout", type=duration, default=1.0, metavar="DURATION",
                   help="a following client that stalls this long loses flows, reported as a "
                        "LostEvent (default 1s)")
    p.add_argument("--dial-timeout", type=duration, default=5.0, metavar="DURATION",
                   help="timeout of calls to agents and of connection attempts (default 5s)")
    p.add_argument("--reconnect-backoff-min", type=duration, default=1.0, metavar="DURATION",
                   help="first delay before reconnecting to an agent (default 1s)")
    p.add_argument("--reconnect-backoff-max", type=duration, default=10.0, metavar="DURATION",
                   help="longest delay between reconnection attempts (default 10s)")
    p.add_argument("--node-name", default=socket.gethostname(),
                   help="name the relay gives itself in node status events (default: host name)")
    g = p.add_argument_group("TLS to clients (plaintext unless --tls-cert/--tls-key)")
    g.add_argument("--tls-cert", default="", help="server certificate (PEM)")
    g.add_argument("--tls-key", default="", help="server private key (PEM)")
    g.add_argument("--tls-client-ca", default="",
                   help="require client certificates signed by this CA (mTLS)")
    g = p.add_argument_group("TLS to agents (plaintext unless --agent-tls-ca)")
    g.add_argument("--agent-tls-ca", default="", help="CA that signed the agents' certificates")
    g.add_argument("--agent-tls-cert", default="", help="client certificate for mTLS (PEM)")
    g.add_argument("--agent-tls-key", default="", help="client private key for mTLS (PEM)")
    g.add_argument("--agent-tls-server-name", default="",
                   help="name to verify in the agents' certificates (default: the one "
                        "announced by the peer service, else the address's host)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    a = p.parse_args(argv)
    peers = [x.strip() for item in a.peers for x in item.split(",") if x.strip()]
    if not peers and not a.peer_service:
        p.error("give --peers and/or --peer-service")
    try:
        for addr in peers + ([a.peer_service] if a.peer_service else []):
            normalize_address(addr, a.peer_port)
    except ValueError as e:
        p.error(str(e))
    if a.sort_buffer_len_max < 1:
        p.error("--sort-buffer-len-max must be at least 1")
    if a.queue_size < 1:
        p.error("--queue-size must be at least 1")
    for name in ("sort_buffer_drain_timeout", "error_aggregation_window", "dial_timeout",
                 "reconnect_backoff_min", "reconnect_backoff_max"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if a.reconnect_backoff_max < a.reconnect_backoff_min:
        p.error("--reconnect-backoff-max must not be below --reconnect-backoff-min")
    logging.basicConfig(level=a.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    flows = FlowsOptions(
        sort_buffer_len=a.sort_buffer_len_max, sort_window=a.sort_buffer_drain_timeout,
        error_window=a.error_aggregation_window, queue_size=a.queue_size,
        lag_timeout=a.slow_client_timeout, rejoin_min=a.reconnect_backoff_min,
        rejoin_max=a.reconnect_backoff_max, relay_name=a.node_name)
    return RelayConfig(
        listen_address=a.listen_address, peers=peers, peer_service=a.peer_service,
        peer_port=a.peer_port, flows=flows, dial_timeout=a.dial_timeout,
        tls_cert=a.tls_cert, tls_key=a.tls_key, tls_client_ca=a.tls_client_ca,
        agent_tls_ca=a.agent_tls_ca, agent_tls_cert=a.agent_tls_cert,
        agent_tls_key=a.agent_tls_key, agent_tls_server_name=a.agent_tls_server_name)


class Relay:
    """Discovery, pool, observer and server, started and stopped together."""

    def __init__(self, cfg: RelayConfig) -> None:
        self.cfg = cfg
        self.server_creds = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        tls = agent_tls(cfg.agent_tls_ca, cfg.agent_tls_cert, cfg.agent_tls_key,
                        cfg.agent_tls_server_name)
        self.pool = PeerPool(PoolOptions(tls=tls, dial_timeout=cfg.dial_timeout,
                                         backoff_min=cfg.flows.rejoin_min,
                                         backoff_max=cfg.flows.rejoin_max))
        self.observer = RelayObserver(self.pool, cfg.flows, VERSION, cfg.dial_timeout)
        self.watcher: PeerServiceWatcher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.server = None
        self.port = 0

    async def start(self) -> None:
        cfg = self.cfg
        add_static(self.pool, cfg.peers, cfg.peer_port)
        if cfg.peer_service:
            self.watcher = PeerServiceWatcher(self.pool, cfg.peer_service, cfg.peer_port)
            self._tasks.append(asyncio.create_task(self.watcher.run(), name="peer service"))
        self.server, health_srv, self.port = await start_server(
            self.observer, cfg.listen_address, self.server_creds)
        watcher = self.watcher
        self._tasks.append(asyncio.create_task(
            track_health(health_srv, self.pool, lambda: watcher is None or watcher.connected),
            name="health"))
        log.info("relay serving on %s (%s) with %s", cfg.listen_address,
                 "TLS" if self.server_creds else "plaintext",
                 ", ".join(filter(None, [f"peers {','.join(cfg.peers)}" if cfg.peers else "",
                                         f"peer service {cfg.peer_service}" if cfg.peer_service
                                         else ""])))

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=0.5)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pool.close()


async def _run(cfg: RelayConfig) -> None:
    relay = Relay(cfg)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await relay.start()
    try:
        await stop.wait()
    finally:
        await relay.stop()


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    try:
        asyncio.run(_run(cfg))
    except (TLSConfigError, OSError) as e:  # start-up errors: one clear line, non-zero exit
        log.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    main()

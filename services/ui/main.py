"""`webb-ui`: the service map and flows in the browser (Hubble UI for webb)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

import grpc
import uvicorn

from webb.gc_tune import freeze_and_raise

from . import live
from .app import create_app
from .relay import RelayClient
from .settings import Settings

DEFAULT_SERVER = os.environ.get("WEBB_UI_SERVER") or os.environ.get("FLOWS_API_ADDR") or "127.0.0.1:4245"


def split_address(addr: str, default_port: int) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr or "0.0.0.0", default_port
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="webb-ui", description="Service map and live flows in the browser, read from a "
        "Hubble-compatible relay (webb-relay or hubble-relay) or a single agent.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--listen-address", default=":12000", metavar="HOST:PORT",
                   help="HTTP address of the UI")
    p.add_argument("--server", default=DEFAULT_SERVER, metavar="HOST:PORT",
                   help="relay (or agent) gRPC address; env WEBB_UI_SERVER or FLOWS_API_ADDR")
    p.add_argument("--tls-ca", default="", help="CA certificate (PEM): use TLS to the relay")
    p.add_argument("--tls-server-name", default="", help="server name to verify on the relay's certificate")
    p.add_argument("--history", type=int, default=d.history,
                   help="flows read from the relay's history when a view opens")
    p.add_argument("--flows-window", type=int, default=d.flows_window,
                   help="recent flows kept in memory per view")
    p.add_argument("--table-rows", type=int, default=d.table_rows,
                   help="rows the browser's flows table keeps")
    p.add_argument("--max-views", type=int, default=d.max_views,
                   help="distinct filter sets served at once (each is one relay stream)")
    p.add_argument("--max-cards", type=int, default=d.max_cards, help="cards per map")
    p.add_argument("--max-arrows", type=int, default=d.max_arrows, help="arrows per map")
    p.add_argument("--map-ttl", type=float, default=d.map_ttl, metavar="SECONDS",
                   help="cards and arrows go away this long after their last flow")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def settings_from(a: argparse.Namespace) -> Settings:
    return Settings(server=a.server, history=a.history, flows_window=a.flows_window,
                    table_rows=a.table_rows, max_views=a.max_views, max_cards=a.max_cards,
                    max_arrows=a.max_arrows, map_ttl=a.map_ttl, tls_ca=a.tls_ca,
                    tls_server_name=a.tls_server_name)


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: Any) -> None:
        live.stop_all()
        super().handle_exit(sig, frame)


async def serve(settings: Settings, host: str, port: int, log_level: str) -> None:
    creds = None
    if settings.tls_ca:
        with open(settings.tls_ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    relay = RelayClient(settings.server, settings.poll_interval, credentials=creds,
                        server_name=settings.tls_server_name)
    app = create_app(settings, relay)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            lifespan="on", timeout_graceful_shutdown=2)
    freeze_and_raise("WEBB_UI_GC")  # built: out of the collector's sight (webb/gc_tune.py)
    await _Server(config).serve()


def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, a.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        host, port = split_address(a.listen_address, 12000)
    except ValueError:
        print(f"webb-ui: invalid --listen-address {a.listen_address!r}", file=sys.stderr)
        sys.exit(2)
    settings = settings_from(a)
    logging.getLogger("webb.ui").info("webb-ui on http://%s:%d, relay %s", host, port, settings.server)
    try:
        asyncio.run(serve(settings, host, port, a.log_level))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

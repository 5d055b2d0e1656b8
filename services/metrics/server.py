"""HTTP: /metrics (Prometheus text, or OpenMetrics when enabled and asked for) and /healthz.

Runs on the same event loop as the flow stream: a scrape reads the series while
no flow is being counted, without locks.
"""
from __future__ import annotations

import json
import time
from typing import Callable

from aiohttp import web
from prometheus_client import exposition
from prometheus_client.registry import CollectorRegistry

from .series import CounterVec, HistogramVec


def parse_listen_address(addr: str) -> tuple[str | None, int]:
    """":9965" -> (None, 9965) (all interfaces); "127.0.0.1:9965"; "[::1]:9965"."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {addr!r} (want HOST:PORT or :PORT)")
    host = host.strip("[]")
    return (host or None), int(port)


class MetricsServer:
    def __init__(self, registry: CollectorRegistry, openmetrics: bool,
                 health: Callable[[], tuple[bool, dict]],
                 requests: CounterVec, duration: HistogramVec) -> None:
        self.registry = registry
        self.openmetrics = openmetrics
        self.health = health
        self.requests = requests
        self.duration = duration
        self.runner: web.AppRunner | None = None
        self.port = 0
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/", self.index)
        self.app = app

    async def metrics(self, request: web.Request) -> web.Response:
        start = time.perf_counter()
        if self.openmetrics:
            encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
        else:
            encoder, content_type = exposition.generate_latest, exposition.CONTENT_TYPE_LATEST
        try:
            body = encoder(self.registry)
            code = 200
        except Exception as e:  # a collector failed: say so, as promhttp does
            body, code, content_type = f"error gathering metrics: {e}\n".encode(), 500, "text/plain"
        self.requests.inc((str(code),))
        self.duration.observe((str(code),), time.perf_counter() - start)
        resp = web.Response(body=body, status=code)
        resp.headers["Content-Type"] = content_type
        return resp

    async def healthz(self, request: web.Request) -> web.Response:
        ok, detail = self.health()
        return web.Response(text=json.dumps(detail) + "\n", status=200 if ok else 503,
                            content_type="application/json")

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text="webb-metrics: Hubble metrics at /metrics, health at /healthz\n")

    async def start(self, host: str | None, port: int) -> None:
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

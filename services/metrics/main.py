"""webb-metrics: Hubble's Prometheus metrics (:9965) from the flows of the relay or one agent.

    webb-metrics --server 127.0.0.1:4245 --enable-openmetrics \\
        --metrics 'dns:query;ignoreAAAA,drop,tcp,flow,port-distribution,icmp,httpV2:exemplars=true;labelsContext=source_ip,source_namespace,source_workload,destination_ip,destination_namespace,destination_workload,traffic_direction'
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from dataclasses import dataclass, field

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR
from prometheus_client.registry import CollectorRegistry

import webb
from webb.durations import duration_arg as duration

from .config import MetricSpec, load_config_file, parse_metrics
from .endpoint_events import EndpointEvents
from .errors import ConfigError
from .flow_source import FlowSource, FlowSourceConfig
from .handlers import PLUGINS
from .pipeline import Pipeline
from .presets import PRESETS
from .self_metrics import ExporterCollector, http_handler_metrics
from .series import SeriesStore
from .series_gc import SeriesGC
from .server import MetricsServer, parse_listen_address

log = logging.getLogger("webb-metrics")

VERSION = f"{webb.__version__}+webb-metrics"
@dataclass
class Config:
    server: str = "localhost:4245"
    listen_address: str = ":9965"
    specs: list[MetricSpec] = field(default_factory=list)
    openmetrics: bool = False
    grace: float = 60.0
    idle_timeout: float = 600.0
    overlap: float = 2.0
    endpoint_events: bool = True


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise UsageError(message)


def parse_args(argv: list[str] | None = None) -> Config:
    p = _Parser(
        prog="webb-metrics",
        description="Serve Hubble's Prometheus metrics, counted from the flows of the relay "
                    "(or of one agent), on :9965/metrics.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="metrics: " + ", ".join(sorted(PLUGINS)) + "\n"
               "example: webb-metrics --server 127.0.0.1:4245 --enable-openmetrics --metrics "
               "'dns:query;ignoreAAAA,drop,tcp,flow,port-distribution,icmp,httpV2:exemplars=true;"
               "labelsContext=source_ip,source_namespace,source_workload,destination_ip,"
               "destination_namespace,destination_workload,traffic_direction'")
    p.add_argument("--server", default="localhost:4245", metavar="HOST:PORT",
                   help="observer API to follow: the relay (default localhost:4245) or one agent "
                        "(e.g. 127.0.0.1:4244, unix:///var/run/webb/hubble.sock)")
    p.add_argument("--listen-address", default=":9965", metavar="HOST:PORT",
                   help="HTTP address of /metrics and /healthz (default :9965)")
    p.add_argument("--metrics", action="append", default=[], metavar="SPEC",
                   help="metrics to enable, Hubble's syntax: name[:opt[=value][;opt...]], "
                        "separated by commas or spaces (repeatable)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="",
                   help="add a named option set: 'recommended' (Hubble's recommended metrics) or "
                        "'dashboards' (what webb's Grafana dashboards need; the demo uses it)")
    p.add_argument("--metrics-config", default="", metavar="FILE",
                   help="Hubble's metrics config file (YAML/JSON: metrics with contextOptions, "
                        "includeFilters, excludeFilters)")
    p.add_argument("--enable-openmetrics", action="store_true",
                   help="serve OpenMetrics (with exemplars) to clients that ask for it")
    p.add_argument("--series-grace-period", type=duration, default=60.0, metavar="DURATION",
                   help="remove the series of a deleted pod this long after it went "
                        "(default 1m, as Hubble)")
    p.add_argument("--endpoint-idle-timeout", type=duration, default=600.0, metavar="DURATION",
                   help="an endpoint in no flow for this long counts as gone (default 10m; 0 = never)")
    p.add_argument("--reconnect-overlap", type=duration, default=2.0, metavar="DURATION",
                   help="on reconnect, replay flows from this long before the newest counted one "
                        "and skip those already counted (default 2s)")
    p.add_argument("--no-endpoint-events", action="store_true",
                   help="do not follow the source's agent events for pod deletions")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=VERSION)
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        parse_listen_address(a.listen_address)
    except ValueError as e:
        raise UsageError(f"--listen-address: {e}") from None
    if not a.server:
        raise UsageError("--server must not be empty")
    specs = parse_metrics(list(PRESETS.get(a.preset, ())) + a.metrics, PLUGINS)
    if a.metrics_config:
        specs += load_config_file(a.metrics_config, PLUGINS)
        names = [s.name for s in specs]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ConfigError(f"metric '{dup}' enabled both in --metrics and --metrics-config")
    return Config(server=a.server, listen_address=a.listen_address, specs=specs,
                  openmetrics=a.enable_openmetrics, grace=a.series_grace_period,
                  idle_timeout=a.endpoint_idle_timeout, overlap=a.reconnect_overlap,
                  endpoint_events=not a.no_endpoint_events)


class Exporter:
    """Everything wired together: source -> pipeline -> series <- HTTP."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pipeline = Pipeline(cfg.specs)  # raises ConfigError
        self.gc: SeriesGC | None = None
        if self.pipeline.binds:
            self.gc = SeriesGC(self.pipeline.store, grace=cfg.grace, idle_timeout=cfg.idle_timeout)
            self.pipeline.set_gc(self.gc)
        self.start_ns = time.time_ns()
        self.source = FlowSource(FlowSourceConfig(cfg.server, overlap_s=cfg.overlap,
                                                  start_ns=self.start_ns),
                                 self.pipeline.process_encoded, self.pipeline.lost_events,
                                 encoded=True)
        self.events: EndpointEvents | None = None
        if self.gc is not None and cfg.endpoint_events:
            self.events = EndpointEvents(cfg.server, self.gc, start_ns=self.start_ns)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.pipeline.store)
        own = SeriesStore()
        requests, latency = http_handler_metrics(own)
        self.registry.register(own)
        self.registry.register(ExporterCollector(self.source, self.pipeline, self.gc))
        for c in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(c)
        self.server = MetricsServer(self.registry, cfg.openmetrics, self.health, requests, latency)
        self.tasks: list[asyncio.Task] = []

    def health(self) -> tuple[bool, dict]:
        s = self.source.stats
        dead = [t.get_name() for t in self.tasks if t.done()
                and not (t.get_name() == "endpoint-events" and t.exception() is None)]
        detail = {"status": "ok" if not dead else "failed", "version": VERSION,
                  "server": self.cfg.server, "connected": s.connected,
                  "flows": s.flows, "last_error": s.last_error, "stream": s.mode, "shed": s.shed}
        if dead:
            detail["failed_tasks"] = dead
        return not dead, detail

    async def start(self) -> None:
        host, port = parse_listen_address(self.cfg.listen_address)
        await self.server.start(host, port)
        self.tasks.append(asyncio.create_task(self.source.run(), name="flow-source"))
        if self.gc is not None:
            self.tasks.append(asyncio.create_task(self.gc.run(), name="series-gc"))
        if self.events is not None:
            self.tasks.append(asyncio.create_task(self.events.run(), name="endpoint-events"))
        shown = host or "0.0.0.0"
        log.info("serving metrics on http://%s:%d/metrics (source %s)", shown, self.server.port,
                 self.cfg.server)
        for name, status in self.pipeline.status():
            log.info("metric %s: %s", name, status or "-")

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.stop()


async def _serve(cfg: Config) -> int:
    exporter = Exporter(cfg)
    try:
        await exporter.start()
    except OSError as e:
        print(f"webb-metrics: cannot listen on {cfg.listen_address}: {e.strerror or e}",
              file=sys.stderr)
        await exporter.server.stop()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    crashed = asyncio.create_task(_first_crash(exporter.tasks))
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({crashed, waiter}, return_when=asyncio.FIRST_COMPLETED)
    rc = 0
    if crashed.done() and crashed.result() is not None:
        log.error("task %s failed: %r", crashed.result().get_name(), crashed.result().exception())
        rc = 1
    crashed.cancel()
    waiter.cancel()
    await exporter.stop()
    return rc


async def _first_crash(tasks: list[asyncio.Task]) -> asyncio.Task | None:
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                return t
    await asyncio.Event().wait()  # every task ended cleanly (endpoint events may): keep serving
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        Pipeline(cfg.specs)  # validate every handler's options before anything starts
    except (UsageError, ConfigError) as e:
        print(f"webb-metrics: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(cfg))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())

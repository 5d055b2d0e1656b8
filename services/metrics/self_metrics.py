"""The exporter's own metrics: its input, its series, its HTTP handler.

``hubble_metrics_http_handler_*`` are Hubble's names for the /metrics handler;
the rest are webb's (``webb_metrics_*``). Process and Python metrics come from
prometheus_client's collectors (process_cpu_seconds_total, process_resident_memory_bytes...).
"""
from __future__ import annotations

from typing import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .api import NAMESPACE
from .flow_source import FlowSource
from .pipeline import Pipeline
from .series import SeriesStore
from .series_gc import SeriesGC


def http_handler_metrics(store: SeriesStore):
    requests = store.counter(f"{NAMESPACE}_metrics_http_handler_requests_total",
                             "A counter for requests to Hubble metrics handler.", ["code"])
    duration = store.histogram(f"{NAMESPACE}_metrics_http_handler_request_duration_seconds",
                               "A histogram of latencies of Hubble metrics handler.", ["code"])
    return requests, duration


class ExporterCollector(Collector):
    def __init__(self, source: FlowSource, pipeline: Pipeline, gc: SeriesGC | None) -> None:
        self.source = source
        self.pipeline = pipeline
        self.gc = gc

    def collect(self) -> Iterator[Metric]:
        s = self.source.stats
        up = GaugeMetricFamily("webb_metrics_source_up",
                               "1 while the GetFlows stream to the source is open", labels=["server"])
        up.add_metric([self.source.config.target], 1.0 if s.connected else 0.0)
        yield up
        yield CounterMetricFamily("webb_metrics_source_reconnects_total",
                                  "GetFlows streams reopened after the source went away",
                                  value=s.reconnects)
        flows = CounterMetricFamily("webb_metrics_flows_received_total",
                                    "Flows read from the source, by what became of them",
                                    labels=["outcome"])
        flows.add_metric(["counted"], s.flows)
        flows.add_metric(["duplicate"], s.duplicates)
        flows.add_metric(["before_replay_point"], s.too_old)
        flows.add_metric(["shed"], s.shed)  # also in hubble_lost_events_total
        yield flows
        yield CounterMetricFamily("webb_metrics_handler_errors_total",
                                  "Flows a metric handler failed on", value=self.pipeline.errors)
        yield GaugeMetricFamily("webb_metrics_last_flow_timestamp_seconds",
                                "Time of the newest flow counted", value=s.last_flow_ns / 1e9)
        series = GaugeMetricFamily("webb_metrics_series", "Series per metric family",
                                   labels=["metric"])
        for vec in self.pipeline.store.vecs:
            series.add_metric([vec.name], len(vec))
        yield series
        if self.gc is not None:
            yield CounterMetricFamily("webb_metrics_series_removed_total",
                                      "Series removed because their endpoints are gone",
                                      value=self.gc.removed)
            yield GaugeMetricFamily("webb_metrics_tracked_endpoints",
                                    "Endpoints the series garbage collector tracks",
                                    value=len(self.gc.last_seen))

    def describe(self) -> Iterator[Metric]:
        return iter(())

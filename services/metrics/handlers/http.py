"""http and httpV2: HTTP requests and their latency, from L7 flows.

httpV2 (use this one) counts each response flow once:
  hubble_http_requests_total{method,protocol,status,reporter}
  hubble_http_request_duration_seconds{method,reporter}   (histogram)
with the context labels from the request's point of view (a response flows from
server to client, so source and destination are swapped back).

http (deprecated in Hubble, kept for old dashboards) counts requests and responses:
  hubble_http_requests_total{method,protocol,reporter}
  hubble_http_responses_total{method,protocol,status,reporter}
  hubble_http_request_duration_seconds{method,reporter}

reporter is "client" for egress flows, "server" for ingress, else "unknown".
Option exemplars=true attaches the flow's trace id (label traceID) as an OpenMetrics
exemplar (serve with --enable-openmetrics).
"""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb

from ..api import NAMESPACE, Handler
from ..errors import ConfigError
from ..series import SeriesStore, exemplar

_REPORTER = {fpb.EGRESS: "client", fpb.INGRESS: "server"}


class _HTTPBase(Handler):
    handler_options = {"exemplars": "true: attach trace ids as exemplars (needs OpenMetrics)"}

    def init(self, store: SeriesStore) -> None:
        value = self.option("exemplars")
        if value is not None and value.lower() not in ("true", "false"):
            raise ConfigError(f"metric '{self.name}': exemplars must be true or false, got {value!r}")
        self.exemplars = (value or "").lower() == "true"
        self.register(store)

    def register(self, store: SeriesStore) -> None:
        raise NotImplementedError

    def status(self) -> str:
        return f"{self.context.status()},exemplars={'true' if self.exemplars else 'false'}"

    def _exemplar(self, flow: fpb.Flow, value: float):
        if not self.exemplars:
            return None
        tid = flow.trace_context.parent.trace_id
        return exemplar({"traceID": tid}, value) if tid else None

    @staticmethod
    def _http(flow: fpb.Flow) -> fpb.HTTP | None:
        if not flow.HasField("l7") or flow.l7.WhichOneof("record") != "http":
            return None
        return flow.l7.http


class HTTPV2Handler(_HTTPBase):
    name = "httpV2"
    conflicts = ("http",)

    def register(self, store: SeriesStore) -> None:
        ctx = self.context.label_names()
        self.requests = store.counter(f"{NAMESPACE}_http_requests_total", "Count of HTTP requests",
                                      [*ctx, "method", "protocol", "status", "reporter"])
        self.duration = store.histogram(f"{NAMESPACE}_http_request_duration_seconds",
                                        "Quantiles of HTTP request duration in seconds",
                                        [*ctx, "method", "reporter"])
        self.vecs += [self.requests, self.duration]

    def process(self, flow: fpb.Flow) -> None:
        http = self._http(flow)
        if http is None or flow.l7.type != fpb.RESPONSE:
            return
        ctx, bound = self.context.values(flow, invert=True)
        reporter = _REPORTER.get(flow.traffic_direction, "unknown")
        latency = flow.l7.latency_ns / 1e9
        self.requests.inc_with_exemplar((*ctx, http.method, http.protocol, str(http.code), reporter),
                                        bound, self._exemplar(flow, 1.0))
        self.duration.observe((*ctx, http.method, reporter), latency, bound,
                              self._exemplar(flow, latency))


class HTTPHandler(_HTTPBase):
    name = "http"
    conflicts = ("httpV2",)

    def register(self, store: SeriesStore) -> None:
        ctx = self.context.label_names()
        self.requests = store.counter(f"{NAMESPACE}_http_requests_total", "Count of HTTP requests",
                                      [*ctx, "method", "protocol", "reporter"])
        self.responses = store.counter(f"{NAMESPACE}_http_responses_total", "Count of HTTP responses",
                                       [*ctx, "method", "protocol", "status", "reporter"])
        self.duration = store.histogram(f"{NAMESPACE}_http_request_duration_seconds",
                                        "Quantiles of HTTP request duration in seconds",
                                        [*ctx, "method", "reporter"])
        self.vecs += [self.requests, self.responses, self.duration]

    def process(self, flow: fpb.Flow) -> None:
        http = self._http(flow)
        if http is None:
            return
        kind = flow.l7.type
        if kind not in (fpb.REQUEST, fpb.RESPONSE):
            return
        ctx, bound = self.context.values(flow)
        reporter = _REPORTER.get(flow.traffic_direction, "unknown")
        if kind == fpb.REQUEST:
            self.requests.inc_with_exemplar((*ctx, http.method, http.protocol, reporter), bound,
                                            self._exemplar(flow, 1.0))
            return
        latency = flow.l7.latency_ns / 1e9
        self.responses.inc_with_exemplar((*ctx, http.method, http.protocol, str(http.code), reporter),
                                         bound, self._exemplar(flow, 1.0))
        self.duration.observe((*ctx, http.method, reporter), latency, bound,
                              self._exemplar(flow, latency))

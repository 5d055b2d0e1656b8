"""The enabled handlers, built from metric specs, and the per-flow loop over them."""
from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

from webb.api.flow import flow_pb2 as fpb
from webb.filters import FilterError, build_filter

from .api import ContextCache, Handler
from .config import MetricSpec
from .errors import ConfigError
from .handlers import PLUGINS
from .lost_events import LostEvents
from .series import SeriesStore

log = logging.getLogger(__name__)


class FilteredHandler:
    """A handler that only sees flows passing its include/exclude filters."""

    def __init__(self, handler: Handler, match: Callable[[fpb.Flow], bool]) -> None:
        self.handler = handler
        self.match = match
        self.name = handler.name

    def process(self, flow: fpb.Flow) -> None:
        if self.match(flow):
            self.handler.process(flow)


def build_handlers(specs: Sequence[MetricSpec], store: SeriesStore,
                   contexts: ContextCache | None = None) -> list[Handler]:
    if not specs:
        raise ConfigError("no metrics enabled (e.g. --metrics flow,drop,tcp)")
    names = {s.name for s in specs}
    contexts = contexts or ContextCache()
    handlers = []
    for spec in specs:
        cls = PLUGINS.get(spec.name)
        if cls is None:
            raise ConfigError(f"metric '{spec.name}' does not exist")
        for other in cls.conflicts:
            if other in names:
                raise ConfigError(f"plugin {spec.name} conflicts with plugin {other}")
        handlers.append(cls(spec.options, store, contexts))
    return handlers


class Pipeline:
    """Turns flows and lost-event notices into metric updates."""

    def __init__(self, specs: Sequence[MetricSpec], store: SeriesStore | None = None) -> None:
        self.store = store or SeriesStore()
        self.contexts = ContextCache()
        self.handlers = build_handlers(specs, self.store, self.contexts)
        self.lost = LostEvents(self.store)
        steps: list = []
        for spec, h in zip(specs, self.handlers):
            if spec.include or spec.exclude:
                try:
                    match = build_filter(spec.include, spec.exclude)
                except FilterError as e:
                    raise ConfigError(f"metric '{spec.name}': bad filter: {e}") from None
                steps.append(FilteredHandler(h, match))
            else:
                steps.append(h)
        self._steps = [s.process for s in steps]
        self.binds = any(c.binds for c in self.contexts.all())
        self.on_flow: Callable[[fpb.Flow], None] | None = None  # e.g. endpoint activity
        self.flows = 0
        self.errors = 0
        self._last_error_log = 0.0

    def process(self, flow: fpb.Flow) -> None:
        self.flows += 1
        if self.on_flow is not None:
            self.on_flow(flow)
        for step in self._steps:
            try:
                step(flow)
            except Exception:  # one bad flow must not stop the stream
                self.errors += 1
                now = time.monotonic()
                if now - self._last_error_log > 10:
                    self._last_error_log = now
                    log.exception("handler failed on a flow (counted in webb_metrics_handler_errors_total)")

    def process_batch(self, flows: Sequence[fpb.Flow]) -> None:
        for flow in flows:
            self.process(flow)

    def lost_events(self, event: fpb.LostEvent) -> None:
        self.lost.add(event)

    def status(self) -> list[tuple[str, str]]:
        return [(h.name, h.status()) for h in self.handlers]

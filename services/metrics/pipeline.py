"""The enabled handlers, built from metric specs, and the loop that counts flows with them.

Two ways to count, with the same result:

- ``process(flow)``: every handler on every decoded flow.
- ``process_encoded(raws)``, what the exporter runs on its stream: each encoded flow is
  reduced to its digest (``digest.py``: the bytes of what the handlers read); the
  flows of a batch are counted per distinct digest; what the handlers do for a digest
  (its ``Effects``: counter increments, histogram observations, endpoints touched) is
  recorded once, by running them on the digest decoded as a flow, and remembered for
  later batches once it came in two (up to ``MEMO_SIZE`` digests; one-offs, such as
  an HTTP response with its own latency, would only crowd out the rest), then applied
  once per distinct digest with the number of flows that had it. Call-graph traffic
  repeats a few thousand digests; the handlers then run for a few flows in a hundred.

Where the digests hardly repeat (every flow new), recording costs more than it saves:
then the batches go through ``process`` until ``RETRY_BATCHES`` later. A metric with
include/exclude filters reads fields the digest leaves out: then ``process`` always.
"""
from __future__ import annotations

import collections
import logging
import time
from typing import Callable, Sequence

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.filters import FilterError, build_filter

from .api import ContextCache, Handler
from .config import MetricSpec
from .digest import make_digest
from .errors import ConfigError
from .handlers import PLUGINS
from .lost_events import LostEvents
from .series import EACH, SCALED, SeriesStore
from .series_gc import SeriesGC

# Digests whose effects are remembered (a few kB each); full: forgotten all at once,
# refilled by the flows still coming.
MEMO_SIZE = 20_000
# Longer digests (an HTTP URL of a proxied head may be 60 KiB) are recorded each time, never
# remembered: MEMO_SIZE of them would hold gigabytes.
MEMO_KEY_MAX = 2048
# A batch with more than this share of new digests makes the next RETRY_BATCHES
# batches go flow by flow.
NEW_SHARE_MAX = 0.5
RETRY_BATCHES = 64

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


class Effects:
    """What the handlers do for one digest: recorded series updates, the number of
    handlers that failed, the endpoints the series GC marks alive."""

    __slots__ = ("updates", "errors", "touched", "reusable")

    def __init__(self, updates: list, errors: int, touched: tuple[str, ...]) -> None:
        self.updates = updates
        self.errors = errors
        self.touched = touched
        # an exemplar carries the time it was taken: only for the flows at hand
        self.reusable = all(u[0] == SCALED or (u[0] == EACH and u[2][3] is None) for u in updates)

    def apply(self, n: int) -> None:
        """As if n flows with this digest were counted one by one."""
        for kind, fn, args in self.updates:
            if kind == SCALED:
                key, bound, amount = args
                fn(key, bound, amount * n)
            elif kind == EACH:
                for _ in range(n):
                    fn(*args)
            else:
                fn(*args)


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
        self.gc: SeriesGC | None = None
        self.flows = 0
        self.errors = 0
        self._last_error_log = 0.0
        # counting by digest (process_encoded)
        filtered = any(s.include or s.exclude for s in specs)
        self._digest = None if filtered else make_digest()
        self._vecs = [v for h in self.handlers for v in h.vecs]
        self._memo: dict[bytes, Effects] = {}
        self._once: set[bytes] = set()  # digests seen in one batch only, so far
        self._flow_by_flow = 0  # batches left to count flow by flow
        self.digest_stats = {"batches": 0, "flow_by_flow": 0, "distinct": 0, "recorded": 0}

    def set_gc(self, gc: SeriesGC) -> None:
        """Every flow marks its endpoints alive in ``gc``."""
        self.gc = gc
        self.on_flow = gc.touch

    def process(self, flow: fpb.Flow) -> None:
        self.flows += 1
        if self.on_flow is not None:
            self.on_flow(flow)
        for step in self._steps:
            try:
                step(flow)
            except Exception:  # one bad flow must not stop the stream
                self.errors += 1
                self._log_failure()

    def _log_failure(self) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            log.exception("handler failed on a flow (counted in webb_metrics_handler_errors_total)")

    def process_batch(self, flows: Sequence[fpb.Flow]) -> None:
        for flow in flows:
            self.process(flow)

    def process_encoded(self, raws: Sequence[bytes]) -> None:
        """Counts encoded GetFlowsResponses that each carry a flow."""
        stats = self.digest_stats
        stats["batches"] += 1
        digest = self._digest
        if digest is None or self._flow_by_flow or (self.on_flow is not None and self.gc is None):
            if self._flow_by_flow:
                self._flow_by_flow -= 1
            stats["flow_by_flow"] += 1
            parse = opb.GetFlowsResponse.FromString
            self.process_batch([parse(r).flow for r in raws])
            return
        self.flows += len(raws)
        memo, once = self._memo, self._once
        gc = self.gc
        recorded = 0
        counts = collections.Counter(map(digest, raws))  # first-seen order: series appear as flow by flow
        for key, n in counts.items():
            eff = memo.get(key)
            if eff is None:
                recorded += 1
                eff = self._record(key)
                if eff.reusable and len(key) <= MEMO_KEY_MAX:
                    if key in once:
                        if len(memo) >= MEMO_SIZE:
                            memo.clear()
                        memo[key] = eff
                    else:
                        if len(once) >= MEMO_SIZE:
                            once.clear()
                        once.add(key)
            if gc is not None and eff.touched:
                gc.touch_keys(eff.touched)
            if eff.errors:
                self.errors += eff.errors * n
            eff.apply(n)
        stats["distinct"] += len(counts)
        stats["recorded"] += recorded
        if recorded > NEW_SHARE_MAX * len(raws):
            self._flow_by_flow = RETRY_BATCHES

    def _record(self, key: bytes) -> Effects:
        """Runs the handlers on the flow a digest stands for, recording their updates."""
        flow = fpb.Flow.FromString(key)
        sink: list = []
        vecs = self._vecs
        errors = 0
        for v in vecs:
            v.sink = sink
        try:
            for step in self._steps:
                try:
                    step(flow)
                except Exception:  # one bad flow must not stop the stream
                    errors += 1  # counted per flow when applied
                    self._log_failure()
        finally:
            for v in vecs:
                v.sink = None
        touched = SeriesGC.endpoint_keys(flow) if self.gc is not None else ()
        return Effects(sink, errors, touched)

    def lost_events(self, event: fpb.LostEvent) -> None:
        self.lost.add(event)

    def status(self) -> list[tuple[str, str]]:
        return [(h.name, h.status()) for h in self.handlers]

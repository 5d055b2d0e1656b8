"""Metric families kept as plain dicts of label tuples, exported on scrape.

prometheus_client's own Counter/Histogram take a lock and validate labels on every
``labels()`` call; the exporter does that work once per new series instead and
counts with a dict update, all on the event loop (the HTTP scrape runs there too,
so nothing is shared between threads). Families look exactly like Hubble's (Go
client): no ``_created`` series, counter exemplars and per-bucket histogram
exemplars in OpenMetrics.

Each series remembers the endpoints it is bound to (see context.py) so that the
garbage collector can remove the series of endpoints that are gone.
"""
from __future__ import annotations

import time
from bisect import bisect_left
from typing import Iterable, Iterator, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

Key = tuple[str, ...]
NO_BINDING: tuple[str, ...] = ()

# What a recorded update (Vec.sink) does when n flows made it: the amount times n
# (counters), the update n times (histograms), or once (an exemplar: the last wins).
SCALED, EACH, ONCE = 0, 1, 2

# Go client's prometheus.DefBuckets, which Hubble's histograms use.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def exemplar(labels: dict[str, str], value: float) -> Exemplar:
    return Exemplar(labels, value, time.time())


class Vec:
    """One metric family: label names, series by label values, their endpoint bindings."""

    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.bindings: dict[Key, tuple[str, ...]] = {}
        # While the pipeline records what a flow does (pipeline.Effects), updates go
        # here instead of into the series.
        self.sink: list | None = None

    def _check(self, key: Key) -> None:
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(key)} label values for {self.labelnames}")

    def __len__(self) -> int:
        raise NotImplementedError

    def remove(self, key: Key) -> None:
        self.bindings.pop(key, None)

    def collect(self) -> Metric:
        raise NotImplementedError


class CounterVec(Vec):
    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str]) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        super().__init__(name, help, labelnames)
        self.values: dict[Key, float] = {}
        self.exemplars: dict[Key, Exemplar] = {}

    def __len__(self) -> int:
        return len(self.values)

    def inc(self, key: Key, bound: tuple[str, ...] = NO_BINDING, amount: float = 1.0) -> None:
        if self.sink is not None:
            self._check(key)
            self.sink.append((SCALED, self.inc, (key, bound, amount)))
            return
        values = self.values
        v = values.get(key)
        if v is None:
            self._check(key)
            if bound:
                self.bindings[key] = bound
            values[key] = amount
        else:
            values[key] = v + amount

    def inc_with_exemplar(self, key: Key, bound: tuple[str, ...], ex: Exemplar | None,
                          amount: float = 1.0) -> None:
        self.inc(key, bound, amount)
        if ex is not None:
            if self.sink is not None:
                self.sink.append((ONCE, self._set_exemplar, (key, ex)))
            else:
                self.exemplars[key] = ex

    def _set_exemplar(self, key: Key, ex: Exemplar) -> None:
        self.exemplars[key] = ex

    def get(self, key: Key) -> float | None:
        return self.values.get(key)

    def remove(self, key: Key) -> None:
        super().remove(key)
        self.values.pop(key, None)
        self.exemplars.pop(key, None)

    def collect(self) -> Metric:
        fam = CounterMetricFamily(self.name, self.help, labels=self.labelnames)
        ex = self.exemplars
        for key, value in self.values.items():
            fam.add_metric(key, value, exemplar=ex.get(key))
        return fam


class HistogramVec(Vec):
    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str],
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        super().__init__(name, help, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._le = [_fmt_le(b) for b in self.buckets] + ["+Inf"]
        # key -> [count per bucket (not cumulative; last is +Inf) ..., sum]
        self.data: dict[Key, list[float]] = {}
        self.exemplars: dict[Key, dict[int, Exemplar]] = {}

    def __len__(self) -> int:
        return len(self.data)

    def observe(self, key: Key, value: float, bound: tuple[str, ...] = NO_BINDING,
                ex: Exemplar | None = None) -> None:
        if self.sink is not None:
            self._check(key)
            self.sink.append((EACH, self.observe, (key, value, bound, ex)))
            return
        row = self.data.get(key)
        if row is None:
            self._check(key)
            row = self.data[key] = [0.0] * (len(self.buckets) + 2)
            if bound:
                self.bindings[key] = bound
        i = bisect_left(self.buckets, value)
        row[i] += 1
        row[-1] += value
        if ex is not None:
            self.exemplars.setdefault(key, {})[i] = ex

    def count(self, key: Key) -> float:
        row = self.data.get(key)
        return sum(row[:-1]) if row else 0.0

    def remove(self, key: Key) -> None:
        super().remove(key)
        self.data.pop(key, None)
        self.exemplars.pop(key, None)

    def collect(self) -> Metric:
        fam = HistogramMetricFamily(self.name, self.help, labels=self.labelnames)
        les = self._le
        for key, row in self.data.items():
            exs = self.exemplars.get(key, {})
            acc = 0.0
            buckets: list = []
            for i, le in enumerate(les):
                acc += row[i]
                ex = exs.get(i)
                buckets.append((le, acc, ex) if ex is not None else (le, acc))
            fam.add_metric(key, buckets, row[-1])
        return fam


def _fmt_le(b: float) -> str:
    """Bucket bounds as the Go client writes them: 1 not 1.0, 0.005."""
    b = float(b)
    return str(int(b)) if b.is_integer() else repr(b)


class SeriesStore(Collector):
    """All flow metric families; a prometheus_client collector."""

    def __init__(self) -> None:
        self.vecs: list[Vec] = []
        self._names: set[str] = set()

    def add(self, vec: Vec) -> Vec:
        if vec.name in self._names:
            raise ValueError(f"metric {vec.name} registered twice")
        self._names.add(vec.name)
        self.vecs.append(vec)
        return vec

    def counter(self, name: str, help: str, labelnames: Sequence[str]) -> CounterVec:
        v = CounterVec(name, help, labelnames)
        self.add(v)
        return v

    def histogram(self, name: str, help: str, labelnames: Sequence[str],
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> HistogramVec:
        v = HistogramVec(name, help, labelnames, buckets)
        self.add(v)
        return v

    def series_count(self) -> int:
        return sum(len(v) for v in self.vecs)

    def bound_vecs(self) -> Iterable[Vec]:
        return (v for v in self.vecs if v.bindings)

    def collect(self) -> Iterator[Metric]:
        for vec in self.vecs:
            yield vec.collect()

    def describe(self) -> Iterator[Metric]:
        return iter(())

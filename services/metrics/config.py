"""Which metrics to enable, from Hubble's option syntax or Hubble's metrics config file.

Option syntax (Hubble's --hubble-metrics / Helm hubble.metrics.enabled):

    metric[:option[;option...]]  separated by commas or spaces
    option = key[=value]

    dns:query;ignoreAAAA,drop,tcp,flow,port-distribution,icmp,httpV2:exemplars=true;labelsContext=source_ip,source_namespace,destination_ip

A comma also separates the values of labelsContext, as in Hubble's own examples;
a comma-separated word that is not a metric name continues the labelsContext
before it (``\\,`` is accepted too, as in Helm values).

Config file (YAML or JSON), Hubble's dynamic metrics format, which also takes
per-metric flow filters (FlowFilter fields, Hubble semantics):

    metrics:
    - name: flow
      contextOptions:
      - {name: sourceContext, values: [workload-name, reserved-identity]}
      includeFilters: [{source_pod: ["bookinfo/"]}]
      excludeFilters: []
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable

import yaml
from google.protobuf import json_format

from webb.api.flow import flow_pb2 as fpb

from .errors import ConfigError

LIST_OPTIONS = {"labelscontext"}  # options whose value is a comma-separated list

_UNESCAPED_COMMA = re.compile(r"(?<!\\),")


@dataclass
class MetricSpec:
    name: str
    options: dict[str, str] = field(default_factory=dict)
    include: list[fpb.FlowFilter] = field(default_factory=list)
    exclude: list[fpb.FlowFilter] = field(default_factory=list)

    def describe(self) -> str:
        opts = ";".join(k if v == "" else f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}:{opts}" if opts else self.name


def _add_options(spec: MetricSpec, text: str) -> None:
    for option in text.split(";"):
        option = option.strip()
        if not option:
            continue
        key, sep, value = option.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"metric '{spec.name}': option {option!r} has no name")
        if any(k.lower() == key.lower() for k in spec.options):
            raise ConfigError(f"metric '{spec.name}': option '{key}' given twice")
        spec.options[key] = value.strip() if sep else ""


def _last_option(spec: MetricSpec) -> str | None:
    return next(reversed(spec.options), None) if spec.options else None


def parse_metrics(texts: Iterable[str], known: Collection[str]) -> list[MetricSpec]:
    """Parses --metrics values. ``known`` are the metric names that exist."""
    specs: list[MetricSpec] = []
    for text in texts:
        for item in text.split():
            current: MetricSpec | None = None
            for token in _UNESCAPED_COMMA.split(item):
                token = token.replace("\\,", ",")
                if not token:
                    continue
                name, sep, rest = token.partition(":")
                if name in known:
                    current = MetricSpec(name)
                    specs.append(current)
                    if sep:
                        _add_options(current, rest)
                    continue
                last = _last_option(current) if current else None
                if current is not None and last is not None and last.lower() in LIST_OPTIONS \
                        and ":" not in token and "=" not in token.partition(";")[0]:
                    head, _, more = token.partition(";")
                    current.options[last] += "," + head.strip()
                    _add_options(current, more)
                    continue
                hint = f" (metrics: {', '.join(sorted(known))})"
                raise ConfigError(f"metric '{name}' does not exist{hint}")
    return _checked(specs)


def _checked(specs: list[MetricSpec]) -> list[MetricSpec]:
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise ConfigError(f"metric '{s.name}' enabled twice")
        seen.add(s.name)
    return specs


def _filters(name: str, what: str, items: Any) -> list[fpb.FlowFilter]:
    if items in (None, []):
        return []
    if not isinstance(items, list):
        raise ConfigError(f"metric '{name}': {what} must be a list of flow filters")
    out = []
    for item in items:
        try:
            out.append(json_format.ParseDict(item, fpb.FlowFilter()))
        except (json_format.ParseError, TypeError, AttributeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"metric '{name}': bad {what} entry {item!r}: {first}") from None
    return out


def load_config_file(path: str | Path, known: Collection[str]) -> list[MetricSpec]:
    """Parses Hubble's metrics config (YAML or JSON)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read metrics config {p}: {e.strerror}") from None
    try:
        doc = yaml.safe_load(text) if p.suffix != ".json" else json.loads(text)
    except (yaml.YAMLError, ValueError) as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"metrics config {p}: {first}") from None
    metrics = (doc or {}).get("metrics") if isinstance(doc, dict) else None
    if metrics is None:
        raise ConfigError(f"metrics config {p}: no 'metrics' list")
    if not isinstance(metrics, list):
        raise ConfigError(f"metrics config {p}: 'metrics' must be a list")
    specs = []
    for m in metrics:
        if not isinstance(m, dict) or not m.get("name"):
            raise ConfigError(f"metrics config {p}: every metric needs a name")
        name = str(m["name"])
        if name not in known:
            raise ConfigError(f"metric '{name}' does not exist (metrics: {', '.join(sorted(known))})")
        spec = MetricSpec(name)
        for opt in m.get("contextOptions") or []:
            if not isinstance(opt, dict) or not opt.get("name"):
                raise ConfigError(f"metric '{name}': every contextOptions entry needs a name")
            values = [str(v) for v in (opt.get("values") or []) if str(v) != ""]
            key = str(opt["name"])
            sep = "," if key.lower() in LIST_OPTIONS else "|"
            if any(k.lower() == key.lower() for k in spec.options):
                raise ConfigError(f"metric '{name}': option '{key}' given twice")
            spec.options[key] = sep.join(values)
        spec.include = _filters(name, "includeFilters", m.get("includeFilters"))
        spec.exclude = _filters(name, "excludeFilters", m.get("excludeFilters"))
        specs.append(spec)
    return _checked(specs)

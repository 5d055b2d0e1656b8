"""Label selectors with Cilium's semantics, matched against security labels.

Security labels are strings `source:key=value` (`k8s:app=reviews`, `reserved:world`).
A selector key may name a source (`k8s:app`) or not (`app`, or `any:app`): without
one it matches the key from any source. matchExpressions take Kubernetes'
operators In, NotIn, Exists and DoesNotExist.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from webb.labels import SOURCE_ANY as ANY, LabelSet, parse_select_label

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

NAMESPACE_KEY = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
CLUSTER_KEY = "io.cilium.k8s.policy.cluster"


def split_key(key: str) -> tuple[str, str]:
    """`k8s:app` -> ("k8s", "app"); `app` -> ("any", "app") (webb.labels.parse_select_label)."""
    source, name, _ = parse_select_label(key)
    return source, name


@dataclass(frozen=True)
class Requirement:
    source: str
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: LabelSet) -> bool:
        vals = labels.values(self.source, self.key)
        if self.operator == "In":
            return any(v in self.values for v in vals)
        if self.operator == "NotIn":
            return not any(v in self.values for v in vals)
        if self.operator == "Exists":
            return bool(vals)
        return not vals  # DoesNotExist

    def text(self) -> str:
        key = self.key if self.source == ANY else f"{self.source}:{self.key}"
        if self.operator == "In" and len(self.values) == 1:
            return f"{key}={next(iter(self.values))}"
        if self.operator in ("Exists", "DoesNotExist"):
            return f"{'!' if self.operator == 'DoesNotExist' else ''}{key}"
        return f"{key} {self.operator.lower()} ({','.join(sorted(self.values))})"


@dataclass(frozen=True)
class Selector:
    """All requirements must hold; no requirement selects everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: LabelSet) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def has_key(self, key: str) -> bool:
        return any(r.key == key for r in self.requirements)

    def has_source(self, source: str) -> bool:
        return any(r.source == source for r in self.requirements)

    def and_(self, *reqs: Requirement) -> "Selector":
        return Selector(self.requirements + tuple(reqs))

    def text(self) -> str:
        return ", ".join(r.text() for r in self.requirements) or "(all)"


WILDCARD = Selector()


def in_namespace(namespace: str) -> Requirement:
    return Requirement("k8s", NAMESPACE_KEY, "In", frozenset((namespace,)))


def parse_selector(raw: object, path: str, error: type[Exception]) -> Selector:
    """A LabelSelector mapping (matchLabels, matchExpressions); errors name `path`."""
    if raw is None:
        return WILDCARD
    if not isinstance(raw, Mapping):
        raise error(f"{path}: must be a label selector (matchLabels, matchExpressions)")
    unknown = set(raw) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise error(f"{path}.{sorted(unknown)[0]}: unknown field (a label selector has "
                    "matchLabels and matchExpressions)")
    reqs: list[Requirement] = []
    ml = raw.get("matchLabels") or {}
    if not isinstance(ml, Mapping):
        raise error(f"{path}.matchLabels: must be a mapping of label keys to values")
    for k, v in ml.items():
        if not isinstance(k, str) or not k:
            raise error(f"{path}.matchLabels: invalid key {k!r}")
        if v is None:
            v = ""
        if not isinstance(v, (str, int, float, bool)):
            raise error(f"{path}.matchLabels.{k}: value must be a string")
        source, name = split_key(k)
        if not name:
            raise error(f"{path}.matchLabels: invalid key {k!r}")
        reqs.append(Requirement(source, name, "In", frozenset((_text(v),))))
    me = raw.get("matchExpressions") or []
    if not isinstance(me, list):
        raise error(f"{path}.matchExpressions: must be a list")
    for i, expr in enumerate(me):
        p = f"{path}.matchExpressions[{i}]"
        if not isinstance(expr, Mapping):
            raise error(f"{p}: must be a mapping with key, operator and values")
        unknown = set(expr) - {"key", "operator", "values"}
        if unknown:
            raise error(f"{p}.{sorted(unknown)[0]}: unknown field")
        key = expr.get("key")
        if not isinstance(key, str) or not key:
            raise error(f"{p}.key: required string")
        op = expr.get("operator")
        if op not in OPERATORS:
            raise error(f"{p}.operator: {op!r} is not one of {', '.join(OPERATORS)}")
        values = expr.get("values") or []
        if not isinstance(values, list):
            raise error(f"{p}.values: must be a list")
        if op in ("In", "NotIn") and not values:
            raise error(f"{p}.values: must not be empty for operator {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise error(f"{p}.values: must be empty for operator {op}")
        source, name = split_key(key)
        reqs.append(Requirement(source, name, op, frozenset(_text(v) for v in values)))
    return Selector(tuple(reqs))


def _text(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def namespace_labels(namespace: str, labels: Mapping[str, str]) -> list[str]:
    """The labels by which namespaceSelectors see a pod's namespace.

    Every namespace has kubernetes.io/metadata.name, as in Kubernetes."""
    merged = {"kubernetes.io/metadata.name": namespace, **labels}
    return [f"k8s:{NAMESPACE_LABELS_PREFIX}{k}={v}" for k, v in sorted(merged.items())]

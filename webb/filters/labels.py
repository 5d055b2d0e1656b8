"""source_label / destination_label / node_labels: Kubernetes label selectors
over Cilium labels.

Flow labels are Cilium label strings ``source:key=value`` (e.g.
"k8s:app=frontend", "reserved:host"). Selector keys may carry a source prefix
with a colon ("k8s:app=frontend", "k8s:io.kubernetes.pod.namespace in (a,b)",
"!reserved:world"); a key without one matches labels of any source. When
several labels share a key (different sources) a source-less key compares
the first of them in the flow's list (Cilium leaves that order unspecified). The keys of "cidr"
labels also match broader prefixes ("cidr:10.0.0.0/8" selects a label
"cidr:10.1.2.3/32"). Each entry is one selector; entries OR together.
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache

from webb.filters import label_selector as ls
from webb.filters._common import FilterFunc, values
from webb.filters.errors import FilterError

SOURCE_ANY = "any"
SOURCE_UNSPEC = "unspec"
SOURCE_RESERVED = "reserved"
SOURCE_CIDR = "cidr"


# --- Cilium labels --------------------------------------------------------------


def parse_label(text: str, delim: str = ":") -> tuple[str, str, str]:
    """(source, key, value) of a Cilium label string, like Cilium's parseLabel."""
    src, rest = "", text
    if text.startswith("$"):
        src, rest = SOURCE_RESERVED, text[1:]
    elif delim in text:
        src, _, rest = text.partition(delim)
    elif delim != "." and text.startswith(SOURCE_RESERVED + "."):
        src, rest = SOURCE_RESERVED, text[len(SOURCE_RESERVED) + 1:]
    key, eq, value = rest.partition("=")
    if eq and key == "" and src == SOURCE_RESERVED:
        key, value = value, ""
    return (src or SOURCE_UNSPEC), key, value


def _cidr_of(key: str):
    try:
        net = ipaddress.ip_network(key.replace("-", ":"), strict=False)
    except ValueError:
        return None
    return net


class _LabelSet:
    """A flow's labels indexed for selector lookups."""

    __slots__ = ("by_key", "by_source_key", "cidrs")

    def __init__(self, raw: tuple[str, ...]):
        self.by_key: dict[str, str] = {}
        self.by_source_key: dict[tuple[str, str], str] = {}
        self.cidrs: list[tuple[object, str]] = []
        for text in raw:
            src, key, value = parse_label(text)
            self.by_key.setdefault(key, value)
            self.by_source_key.setdefault((src, key), value)
            if src == SOURCE_CIDR:
                net = _cidr_of(key)
                if net is not None:
                    self.cidrs.append((net, value))


@lru_cache(maxsize=1 << 14)
def _label_set(raw: tuple[str, ...]) -> _LabelSet:
    return _LabelSet(raw)


# --- selectors -------------------------------------------------------------------


def translate_selector(selector: str) -> str:
    """Rewrite colon source prefixes into the dotted form a k8s selector key
    allows, adding "any." to keys without a source: "k8s:app=a,env" becomes
    "k8s.app=a,any.env". Mirrors Hubble's translateSelector."""
    out: list[str] = []
    i, n = 0, len(selector)
    while i < n:
        while i < n and (selector[i].isspace() or selector[i] == "!"):
            out.append(selector[i])
            i += 1
        j = i
        while j < n and not (selector[j].isspace() or selector[j] in "=!,"):
            j += 1
        key = selector[i:j]
        if ":" not in key:
            key = SOURCE_ANY + ":" + key
        out.append(key.replace(":", ".", 1))
        i = j
        depth = 0
        while i < n:
            c = selector[i]
            i += 1
            out.append(c)
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            elif c == "," and depth == 0:
                break
    return "".join(out)


def _lookup_fn(dotted_key: str):
    """A function LabelSet -> (found, value) for a translated selector key."""
    src, key, _ = parse_label(dotted_key, ".")
    if src == SOURCE_UNSPEC:
        src = SOURCE_ANY
    if src == SOURCE_ANY:
        def lookup(labels: _LabelSet):
            value = labels.by_key.get(key)
            return (False, "") if value is None else (True, value)
        return lookup

    skey = (src, key)
    wanted_net = _cidr_of(key) if src == SOURCE_CIDR else None
    if wanted_net is None:
        def lookup(labels: _LabelSet):
            value = labels.by_source_key.get(skey)
            return (False, "") if value is None else (True, value)
        return lookup

    def lookup_cidr(labels: _LabelSet):
        value = labels.by_source_key.get(skey)
        if value is not None:
            return True, value
        for net, val in labels.cidrs:
            if (net.version == wanted_net.version and net.prefixlen >= wanted_net.prefixlen
                    and net.network_address in wanted_net):
                return True, val
        return False, ""
    return lookup_cidr


def _requirement_fn(req: ls.Requirement):
    lookup = _lookup_fn(req.key)
    op, vals, number = req.op, req.values, req.number
    if op == ls.EXISTS:
        return lambda labels: lookup(labels)[0]
    if op == ls.NOT_EXISTS:
        return lambda labels: not lookup(labels)[0]
    if op in (ls.EQUALS, ls.IN):
        def match_in(labels):
            found, value = lookup(labels)
            return found and value in vals
        return match_in
    if op in (ls.NOT_EQUALS, ls.NOT_IN):
        def match_not_in(labels):
            found, value = lookup(labels)
            return not found or value not in vals
        return match_not_in
    greater = op == ls.GREATER

    def match_compare(labels):
        found, value = lookup(labels)
        if not found:
            return False
        parsed = ls.parse_int64(value)
        if parsed is None:
            return False
        return parsed > number if greater else parsed < number
    return match_compare


def compile_selector(selector: str):
    """A predicate over a _LabelSet for one Hubble label selector string.
    Raises label_selector.SelectorError."""
    reqs = tuple(_requirement_fn(r) for r in ls.parse(translate_selector(selector)))
    if not reqs:
        return lambda labels: True
    if len(reqs) == 1:
        return reqs[0]

    def match_all(labels):
        for r in reqs:
            if not r(labels):
                return False
        return True
    return match_all


def _compile_all(selectors: list[str], field: str) -> tuple:
    compiled = []
    for s in selectors:
        try:
            compiled.append(compile_selector(s))
        except ls.SelectorError as exc:
            raise FilterError(f"invalid {field} filter: {s!r}: {exc}") from None
    return tuple(compiled)


def _by_endpoint_labels(selectors: tuple, side: str) -> FilterFunc:
    def by_labels(flow) -> bool:
        labels = _label_set(tuple(getattr(flow, side).labels))
        for s in selectors:
            if s(labels):
                return True
        return False
    return by_labels


def _by_node_labels(selectors: tuple) -> FilterFunc:
    def by_node_labels(flow) -> bool:
        labels = _label_set(tuple(flow.node_labels))
        for s in selectors:
            if s(labels):
                return True
        return False
    return by_node_labels


def build(ff) -> list[FilterFunc]:
    fs = []
    for field, side in (("source_label", "source"), ("destination_label", "destination")):
        selectors = values(ff, field)
        if selectors:
            fs.append(_by_endpoint_labels(_compile_all(selectors, field), side))
    selectors = values(ff, "node_labels")
    if selectors:
        fs.append(_by_node_labels(_compile_all(selectors, "node_labels")))
    return fs

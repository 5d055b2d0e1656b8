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

from functools import lru_cache

from webb.filters import label_selector as ls
from webb.filters._common import FilterFunc, values
from webb.filters.errors import FilterError
from webb.labels import SOURCE_ANY, SOURCE_CIDR, LabelSet, cidr_of, parse_select_label


@lru_cache(maxsize=1 << 14)
def _label_set(raw: tuple[str, ...]) -> LabelSet:
    return LabelSet(raw)


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
    src, key, _ = parse_select_label(dotted_key, ".")
    if src == SOURCE_ANY:
        def lookup(labels: LabelSet):
            value = labels.first.get(key)
            return (False, "") if value is None else (True, value)
        return lookup

    skey = (src, key)
    wanted_net = cidr_of(key) if src == SOURCE_CIDR else None
    if wanted_net is None:
        def lookup(labels: LabelSet):
            value = labels.by_source_key.get(skey)
            return (False, "") if value is None else (True, value)
        return lookup

    def lookup_cidr(labels: LabelSet):
        value = labels.by_source_key.get(skey)
        if value is not None:
            return True, value
        for net, val in labels.cidrs():
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
    """A predicate over a LabelSet for one Hubble label selector string.
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

"""The UI's filter language and its translation into Hubble FlowFilters.

A view is a namespace (or all namespaces) plus a list of filter terms:

    [!][from:|to:|either:]kind=value

    namespace=bookinfo            either side in namespace bookinfo
    from:pod=bookinfo/reviews-    source pod name starts with reviews- in bookinfo
    to:label=k8s:app=ratings      destination labels match a Kubernetes selector
    !verdict=FORWARDED            leave out forwarded flows
    either:ip=10.0.0.0/8          source or destination address in the CIDR
    to:port=9080  protocol=tcp  http-status=5+  identity=world  ...

Semantics, like the hubble CLI's repeated flags: terms of the same kind and
direction are alternatives (OR); different kinds AND together; a negated term
removes every flow it matches. ``either`` (also spelled ``both``) means source
OR destination.

The result is a whitelist and a blacklist of ``flow.FlowFilter`` exactly as the
relay applies them (fields within one FlowFilter AND, FlowFilters in a list OR,
whitelist minus blacklist): ANDs of "either" terms are expanded into a
disjunction (one FlowFilter per combination), and two constraints on the same
FlowFilter field are intersected here because the proto can only OR them.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from webb.api.flow import flow_pb2 as fpb
from webb.filters import FilterError, build_filter

# Cilium's reserved identities (numbers fixed across clusters).
RESERVED_IDENTITIES: dict[str, int] = {
    "host": 1, "world": 2, "unmanaged": 3, "health": 4, "init": 5,
    "remote-node": 6, "kube-apiserver": 7, "ingress": 8,
}
DIRECTIONS = ("from", "to", "either")
MAX_ALTERNATIVES = 64


class QueryError(ValueError):
    """A filter term the UI cannot turn into FlowFilters (HTTP 400)."""


@dataclass(frozen=True)
class Kind:
    name: str
    fields: tuple[str, str] | str  # (source field, destination field) or one field
    parse: Callable[[str], object]  # user text -> FlowFilter list element
    hint: str = ""  # what a value looks like, for the page's help

    @property
    def directional(self) -> bool:
        return isinstance(self.fields, tuple)


def _verdict(v: str) -> int:
    try:
        return fpb.Verdict.Value(v.strip().upper())
    except ValueError:
        names = ", ".join(n.lower() for n in fpb.Verdict.keys() if n != "VERDICT_UNKNOWN")
        raise QueryError(f"unknown verdict {v!r} (one of {names})") from None


def _namespace(v: str) -> str:
    v = v.strip().strip("/")
    if not v or "/" in v:
        raise QueryError(f"invalid namespace {v!r}")
    return v + "/"


def _pod(v: str) -> str:
    v = v.strip()
    if not v or v == "/":
        raise QueryError("a pod filter needs [namespace/]name-prefix")
    return v


def _identity(v: str) -> int:
    v = v.strip().lower()
    if v.startswith("reserved:"):
        v = v[len("reserved:"):]
    if v in RESERVED_IDENTITIES:
        return RESERVED_IDENTITIES[v]
    try:
        n = int(v)
    except ValueError:
        raise QueryError(f"identity must be a number or one of {', '.join(RESERVED_IDENTITIES)}") from None
    if not 0 <= n < 2**32:
        raise QueryError(f"identity {n} out of range")
    return n


def _ip(v: str) -> str:
    v = v.strip()
    try:
        if "/" in v:
            ipaddress.ip_network(v, strict=False)
        else:
            ipaddress.ip_address(v)
    except ValueError:
        raise QueryError(f"invalid IP address or CIDR {v!r}") from None
    return v


def _port(v: str) -> str:
    try:
        n = int(v.strip())
    except ValueError:
        raise QueryError(f"invalid port {v!r}") from None
    if not 0 <= n <= 65535:
        raise QueryError(f"port {n} out of range")
    return str(n)


def _protocol(v: str) -> str:
    return v.strip().lower()


def _workload(v: str) -> fpb.Workload:
    v = v.strip()
    kind, _, name = v.rpartition("/")
    if not name:
        raise QueryError("a workload filter needs [kind/]name")
    return fpb.Workload(name=name, kind=kind)


def _text(v: str) -> str:
    v = v.strip()
    if not v:
        raise QueryError("empty filter value")
    return v


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("namespace", ("source_pod", "destination_pod"), _namespace),
    Kind("pod", ("source_pod", "destination_pod"), _pod, "ns/prefix"),
    Kind("label", ("source_label", "destination_label"), _text,
         "selector, e.g. k8s:app=reviews,version=v2"),
    Kind("identity", ("source_identity", "destination_identity"), _identity,
         "number or world/host/…"),
    Kind("ip", ("source_ip", "destination_ip"), _ip, "address or CIDR"),
    Kind("port", ("source_port", "destination_port"), _port),
    Kind("workload", ("source_workload", "destination_workload"), _workload, "[kind/]name"),
    Kind("verdict", "verdict", _verdict),
    Kind("protocol", "protocol", _protocol),
    Kind("http-status", "http_status_code", _text, "200, 5+"),
    Kind("http-method", "http_method", _text),
    Kind("http-path", "http_path", _text),
    Kind("dns", "dns_query", _text),
    Kind("node", "node_name", _text),
)}
ALIASES = {"ns": "namespace", "status": "http-status", "cidr": "ip", "proto": "protocol",
           "method": "http-method", "path": "http-path", "labels": "label"}

# The term syntax, [!][direction:]kind=value. This module is its one definition: the
# page's terms.js builds its parser, splitter and help from grammar() (GET
# /api/filters/grammar), so the patterns below are written in the subset of regular
# expressions Python and JavaScript read alike (no named groups, no \Z).
NEGATE, DIRECTION_SEP, VALUE_SEP = "!", ":", "="
DIRECTION_ALIASES = {"both": "either"}
TERM_PATTERN = r"^\s*(!)?\s*(?:([^:=]*):)?([^=]*)=([\s\S]*)$"
_TERM_RE = re.compile(TERM_PATTERN)


def _split_pattern() -> str:
    """Whitespace that starts a new term: what follows is [!][direction:]kind= (so
    spaces inside a value, as in "app in (a, b)", stay). Case-insensitive."""
    words = sorted({*KINDS, *ALIASES, *DIRECTIONS, *DIRECTION_ALIASES})
    assert all(re.fullmatch(r"[a-z-]+", w) for w in words), "names must need no escaping"
    dirs = sorted({*DIRECTIONS, *DIRECTION_ALIASES})
    kinds = sorted({*KINDS, *ALIASES})
    return (r"\s+(?=!?\s*(?:(?:" + "|".join(dirs) + r"):)?(?:" + "|".join(kinds) + r")=)")


SPLIT_PATTERN = _split_pattern()


def grammar() -> dict[str, object]:
    """The term syntax as data, for the page."""
    return {
        "syntax": f"[{NEGATE}][{'|'.join(d + DIRECTION_SEP for d in DIRECTIONS)}]kind{VALUE_SEP}value",
        "negate": NEGATE, "direction_sep": DIRECTION_SEP, "value_sep": VALUE_SEP,
        "term_pattern": TERM_PATTERN, "split_pattern": SPLIT_PATTERN,
        "directions": list(DIRECTIONS), "default_direction": "either",
        "direction_aliases": DIRECTION_ALIASES,
        "kinds": [{"name": k.name, "directional": k.directional, "hint": k.hint}
                  for k in KINDS.values()],
        "aliases": ALIASES,
    }


@dataclass(frozen=True)
class Term:
    """One parsed filter term."""

    kind: str
    value: str
    direction: str = "either"  # from | to | either (ignored for non-directional kinds)
    negate: bool = False

    def __str__(self) -> str:
        d = (self.direction + DIRECTION_SEP
             if KINDS[self.kind].directional and self.direction != "either" else "")
        return f"{NEGATE if self.negate else ''}{d}{self.kind}{VALUE_SEP}{self.value}"


def parse_term(text: str) -> Term:
    m = _TERM_RE.match(text.strip())
    if m is None:
        raise QueryError(f"filter {text!r}: expected {grammar()['syntax']}")
    negate_mark, d, kind_name, value = m.groups()
    direction = "either"
    if d is not None:
        d = d.strip().lower()
        d = DIRECTION_ALIASES.get(d, d)
        if d not in DIRECTIONS:
            raise QueryError(f"filter {text!r}: direction must be from, to or either")
        direction = d
    kind_name = ALIASES.get(kind_name.strip().lower(), kind_name.strip().lower())
    kind = KINDS.get(kind_name)
    if kind is None:
        raise QueryError(f"filter {text!r}: unknown kind {kind_name!r} (one of {', '.join(KINDS)})")
    if not kind.directional and direction != "either":
        raise QueryError(f"filter {text!r}: {kind_name} filters have no direction")
    kind.parse(value)  # validates
    value = value.strip()
    if kind_name == "verdict":
        value = value.upper()
    elif kind_name in ("protocol", "http-method"):
        value = value.lower() if kind_name == "protocol" else value.upper()
    return Term(kind_name, value, direction, bool(negate_mark))


# --- intersection of two OR-lists on the same FlowFilter field -------------------

def _pod_and(a: str, b: str) -> str | None:
    from webb.filters.k8s import parse_namespaced_name

    (na, pa), (nb, pb) = parse_namespaced_name(a), parse_namespaced_name(b)
    if na != nb:
        return None
    if pa.startswith(pb):
        return f"{na}/{pa}"
    if pb.startswith(pa):
        return f"{nb}/{pb}"
    return None


def _label_and(a: str, b: str) -> str | None:
    return a if a == b else f"{a},{b}"


def _ip_and(a: str, b: str) -> str | None:
    na, nb = ipaddress.ip_network(a, strict=False), ipaddress.ip_network(b, strict=False)
    if na.version != nb.version:
        return None
    if na.subnet_of(nb):  # type: ignore[arg-type]
        return a
    if nb.subnet_of(na):  # type: ignore[arg-type]
        return b
    return None


def _status_and(a: str, b: str) -> str | None:
    pa, pb = a.rstrip("+"), b.rstrip("+")
    if pa.startswith(pb):
        return a
    if pb.startswith(pa):
        return b
    return None


def _equal_and(a: object, b: object) -> object | None:
    return a if a == b else None


_AND: dict[str, Callable] = {
    "source_pod": _pod_and, "destination_pod": _pod_and,
    "source_label": _label_and, "destination_label": _label_and,
    "source_ip": _ip_and, "destination_ip": _ip_and,
    "http_status_code": _status_and,
}

Conj = dict[str, tuple]  # FlowFilter field -> alternatives (OR)


def _key(v: object) -> object:
    return (v.kind, v.name) if isinstance(v, fpb.Workload) else v


def _and_field(field: str, a: tuple, b: tuple) -> tuple:
    op = _AND.get(field, _equal_and)
    out: dict[object, object] = {}
    for x in a:
        for y in b:
            r = op(x, y)
            if r is not None:
                out.setdefault(_key(r), r)
    return tuple(out.values())


def _and(c: Conj, d: Conj) -> Conj | None:
    out = dict(c)
    for field, vals in d.items():
        if field in out:
            both = _and_field(field, out[field], vals)
            if not both:
                return None
            out[field] = both
        else:
            out[field] = vals
    return out


def _flow_filter(c: Conj) -> fpb.FlowFilter:
    ff = fpb.FlowFilter()
    for field, vals in sorted(c.items()):
        getattr(ff, field).extend(vals)
    return ff


@dataclass(frozen=True)
class Query:
    """A view: namespace + filter terms, in canonical order (the view's key)."""

    namespace: str = ""
    terms: tuple[Term, ...] = ()

    @property
    def key(self) -> str:
        return self.namespace + "|" + "&".join(str(t) for t in self.terms)

    def all_terms(self) -> list[Term]:
        ns = [Term("namespace", self.namespace)] if self.namespace else []
        return ns + list(self.terms)

    def flow_filters(self) -> tuple[list[fpb.FlowFilter], list[fpb.FlowFilter]] | None:
        """(whitelist, blacklist), or None when the terms can never match."""
        positive = [t for t in self.all_terms() if not t.negate]
        negative = [t for t in self.all_terms() if t.negate]
        # group positive terms: same kind and direction -> one OR-list
        groups: dict[tuple[str, str], list[object]] = {}
        for t in positive:
            vals = groups.setdefault((t.kind, t.direction), [])
            v = KINDS[t.kind].parse(t.value)
            if all(_key(v) != _key(x) for x in vals):
                vals.append(v)
        dnf: list[Conj] = [{}]
        for (kind_name, direction), vals in groups.items():
            kind = KINDS[kind_name]
            alts: list[Conj]
            if not kind.directional:
                alts = [{kind.fields: tuple(vals)}]  # type: ignore[dict-item]
            else:
                src, dst = kind.fields  # type: ignore[misc]
                alts = {"from": [{src: tuple(vals)}], "to": [{dst: tuple(vals)}],
                        "either": [{src: tuple(vals)}, {dst: tuple(vals)}]}[direction]
            nxt: list[Conj] = []
            for c in dnf:
                for a in alts:
                    r = _and(c, a)
                    if r is not None and r not in nxt:
                        nxt.append(r)
            dnf = nxt
            if not dnf:
                return None
            if len(dnf) > MAX_ALTERNATIVES:
                raise QueryError(f"too many 'either' filters: more than {MAX_ALTERNATIVES} "
                                 "FlowFilters; use from:/to: for some")
        whitelist = [_flow_filter(c) for c in dnf if c]
        blacklist: list[fpb.FlowFilter] = []
        for t in negative:
            kind = KINDS[t.kind]
            v = kind.parse(t.value)
            if not kind.directional:
                fields: Sequence[str] = (kind.fields,)  # type: ignore[assignment]
            else:
                src, dst = kind.fields  # type: ignore[misc]
                fields = {"from": (src,), "to": (dst,), "either": (src, dst)}[t.direction]
            for f in fields:
                ff = _flow_filter({f: (v,)})
                if ff not in blacklist:
                    blacklist.append(ff)
        try:
            build_filter(whitelist, blacklist)
        except FilterError as e:
            raise QueryError(str(e)) from None
        return whitelist, blacklist


def build_query(namespace: str | None, filters: Iterable[str]) -> Query:
    """Parses the URL's namespace and filter parameters into a canonical Query."""
    ns = (namespace or "").strip()
    if ns:
        _namespace(ns)
    terms: list[Term] = []
    for text in filters:
        if text and text.strip():
            t = parse_term(text)
            if t not in terms:
                terms.append(t)
    q = Query(ns, tuple(sorted(terms, key=str)))
    q.flow_filters()  # raises QueryError on terms the relay would reject
    return q

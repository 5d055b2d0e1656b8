"""Cilium labels (`source:key=value`), parsed and indexed in one place for the agent's
policy engine, Hubble's flow filters and the UI.

The syntax is Cilium's (pkg/labels parseLabel): `k8s:app=reviews`, `reserved:host`,
`$host` (short for reserved), `cidr:10.0.0.0/8`. Hubble and Cilium agree on it; what
differs is the source a text without one gets, so callers say which they mean:

- a *label* (on an endpoint, an identity, a flow) without a source is `unspec`
  (Cilium's ParseLabel): ``parse_label(text)``;
- a *selector key* (a policy's matchLabels/matchExpressions, Hubble's
  `--label`/`--from-label` filters) without a source, or with `unspec`, selects that
  key from any source (Cilium's parseSelectLabel; Hubble's translateSelector adds
  `any.`): ``parse_select_label(text)``.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable

SOURCE_ANY = "any"
SOURCE_UNSPEC = "unspec"
SOURCE_RESERVED = "reserved"
SOURCE_CIDR = "cidr"
SOURCE_K8S = "k8s"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_source(text: str, delim: str = ":") -> tuple[str, str]:
    """(source or "", the rest), like Cilium's parseSource."""
    if text.startswith("$"):
        return SOURCE_RESERVED, text[1:]
    if delim in text:
        src, _, rest = text.partition(delim)
        return src, rest
    # "reserved.host" names a reserved label even with ":" as the delimiter.
    if delim != "." and text.startswith(SOURCE_RESERVED + "."):
        return SOURCE_RESERVED, text[len(SOURCE_RESERVED) + 1:]
    return "", text


def parse_label(text: str, default_source: str = SOURCE_UNSPEC,
                delim: str = ":") -> tuple[str, str, str]:
    """(source, key, value) of a label string; `default_source` when it names none."""
    src, rest = parse_source(text, delim)
    key, eq, value = rest.partition("=")
    if eq and key == "" and src == SOURCE_RESERVED:  # "reserved:=host" is reserved:host
        key, value = value, ""
    return (src or default_source), key, value


def parse_select_label(text: str, delim: str = ":") -> tuple[str, str, str]:
    """(source, key, value) of a selector key: no source, or `unspec`, means any."""
    src, key, value = parse_label(text, SOURCE_ANY, delim)
    return (SOURCE_ANY if src == SOURCE_UNSPEC else src), key, value


def cidr_of(key: str) -> Network | None:
    """The network of a cidr label's key ("10.0.0.0/8"; IPv6 may write ":" as "-")."""
    try:
        return ipaddress.ip_network(key.replace("-", ":"), strict=False)
    except ValueError:
        return None


class LabelSet:
    """Labels indexed for selector lookups.

    Several labels may share a key with different sources: `first` answers with the
    first of them in the given order (how Hubble's filters compare a source-less key),
    `values` with all of them (how the policy engine matches one)."""

    __slots__ = ("labels", "first", "by_key", "by_source_key", "_cidrs")

    def __init__(self, labels: Iterable[str]) -> None:
        self.labels = tuple(labels)
        self.first: dict[str, str] = {}
        self.by_key: dict[str, list[tuple[str, str]]] = {}
        self.by_source_key: dict[tuple[str, str], str] = {}
        self._cidrs: list[tuple[Network, str]] | None = None
        for text in self.labels:
            src, key, value = parse_label(text)
            self.first.setdefault(key, value)
            self.by_key.setdefault(key, []).append((src, value))
            self.by_source_key.setdefault((src, key), value)

    def get(self, source: str, key: str) -> str | None:
        """The value of `key` from `source` (any source: the first), None if absent."""
        if source == SOURCE_ANY:
            return self.first.get(key)
        return self.by_source_key.get((source, key))

    def values(self, source: str, key: str) -> list[str]:
        """Every value of `key` from `source` (or from any source)."""
        return [v for s, v in self.by_key.get(key, ()) if source == SOURCE_ANY or s == source]

    def cidrs(self) -> list[tuple[Network, str]]:
        """(network, value) of the cidr labels, parsed on first use."""
        if self._cidrs is None:
            out = []
            for (src, key), value in self.by_source_key.items():
                if src == SOURCE_CIDR:
                    net = cidr_of(key)
                    if net is not None:
                        out.append((net, value))
            self._cidrs = out
        return self._cidrs

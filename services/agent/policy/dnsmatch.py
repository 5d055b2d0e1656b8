"""DNS names against `matchName` / `matchPattern` (rules.dns and toFQDNs), as Cilium.

Names are compared lowercased in their fully qualified form ("api.github.com.").
matchPattern: `*` stands for any run of DNS characters inside one label
(`*.cilium.io` matches `docs.cilium.io`, not `a.b.cilium.io` nor `cilium.io`);
a leading `**.` for one or more whole labels; `*` alone for every name. The
pattern becomes an RE2 expression (webb/regex.py), matched against the whole name.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable

from webb.regex import compile_re2

from .model import DNSRule

DNS_CHARS = "[-a-zA-Z0-9_]"


def fqdn(name: str) -> str:
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


def pattern_regex(pattern: str) -> str:
    p = pattern.strip().lower()
    if p == "*":
        return f"(?:{DNS_CHARS}+[.])+"
    p = fqdn(p)
    prefix = ""
    if p.startswith("**."):
        prefix, p = f"(?:{DNS_CHARS}+[.])+", p[3:]
    return prefix + p.replace("*", DNS_CHARS + "*").replace(".", "[.]")


@lru_cache(maxsize=1024)
def _compiled(rules: tuple[DNSRule, ...]) -> tuple[frozenset[str], Any]:
    names = frozenset(fqdn(r.match_name) for r in rules if r.match_name)
    patterns = [pattern_regex(r.match_pattern) for r in rules if r.match_pattern]
    rx = compile_re2("|".join(f"(?:{p})" for p in patterns), "DNS pattern") if patterns else None
    return names, rx


def matches(rules: Iterable[DNSRule], name: str) -> bool:
    """Whether one of rules selects name (any case, with or without the final dot)."""
    names, rx = _compiled(tuple(rules))
    n = fqdn(name)
    return n in names or (rx is not None and rx.fullmatch(n) is not None)

"""Glob-like FQDN and node-name patterns, compiled to one anchored regex.

FQDN pattern: trimmed, lower-cased, at most one trailing dot dropped; then
letters a-z, digits, "-", "_" and "." match themselves and "*" matches any run
of ``[-.0-9a-z]``. Anything else is an error.

Node-name pattern: ``[cluster-pattern/]node-pattern``, each an FQDN pattern;
an empty element matches any name; without a slash any cluster matches.
"""
from __future__ import annotations

from typing import Any

from webb.filters.errors import FilterError
from webb.regex import RegexError, compile_re2

# a DNS name (lower case, underscores allowed)
_ANY_NAME = r"(?:[-0-9_a-z]+(?:\.[-0-9_a-z]+)*)"
_LITERAL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


class PatternError(ValueError):
    pass


def _canonical(pattern: str) -> str:
    pattern = pattern.strip()
    if pattern.endswith("."):
        pattern = pattern[:-1]
    return pattern.lower()


def fqdn_pattern_regex(pattern: str) -> str:
    pattern = _canonical(pattern)
    if not pattern:
        raise PatternError("empty pattern")
    if pattern.endswith("."):
        raise PatternError("multiple trailing dots in pattern")
    out = []
    for ch in pattern:
        if ch == ".":
            out.append(r"\.")
        elif ch == "*":
            out.append(r"[-.0-9a-z]*")
        elif ch in _LITERAL:
            out.append(ch)
        else:
            raise PatternError(f"{ch!r}: invalid character in pattern")
    return "".join(out)


def node_name_pattern_regex(pattern: str) -> str:
    if pattern == "":
        raise PatternError("empty pattern")
    parts = pattern.split("/")
    if len(parts) == 1:
        cluster, node = "", parts[0]
    elif len(parts) == 2:
        cluster, node = parts
    else:
        raise PatternError("too many slashes in pattern")
    cluster_re = fqdn_pattern_regex(cluster) if cluster else _ANY_NAME
    node_re = fqdn_pattern_regex(node) if node else _ANY_NAME
    return cluster_re + "/" + node_re


def _compile(patterns: list[str], to_regex, field: str) -> Any:
    alternatives = []
    for p in patterns:
        try:
            alternatives.append(to_regex(p))
        except PatternError as exc:
            raise FilterError(f"invalid {field} filter: {p!r}: {exc}") from None
    # Many patterns make one alternation: RE2 matches it in one linear pass.
    try:
        return compile_re2("(?:" + "|".join(alternatives) + ")", f"invalid {field} filter")
    except RegexError as exc:  # e.g. too many patterns for RE2's memory bound
        raise FilterError(str(exc)) from None


def compile_fqdn_patterns(patterns: list[str], field: str) -> Any:
    """A compiled regex; use ``.fullmatch``."""
    return _compile(patterns, fqdn_pattern_regex, field)


def compile_node_name_patterns(patterns: list[str], field: str) -> Any:
    """A compiled regex for ``cluster/node`` strings; use ``.fullmatch``."""
    return _compile(patterns, node_name_pattern_regex, field)

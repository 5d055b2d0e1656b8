"""A request against the HTTP rules of a policed port, with Cilium's semantics.

The port's entries come from every allow rule that covers it (policy/compile.py
L7Entry): an entry applies if it covers the client's identity; a request passes if
an applying entry has no HTTP rules (a rule without L7 rules allows every request
of its peers) or one of its HTTP rules matches. An HTTP rule matches when each field
it gives matches: method, path and host are RE2 patterns matched against the whole
value (path: the request target as sent, query included; host: the Host header as
sent), headers must be present, or present with exactly the value given.
"""
from __future__ import annotations

from typing import Any, Iterable

from webb.regex import compile_re2

from ..policy.compile import L7Entry, PolicyRef
from ..policy.model import HTTPRule
from .http1 import Head

_COMPILED: dict[str, Any] = {}


def _pattern(p: str) -> Any:
    c = _COMPILED.get(p)
    if c is None:
        # Validated when the policy was applied; compiled once per pattern.
        c = _COMPILED[p] = compile_re2(p, "HTTP rule")
    return c


def rule_matches(rule: HTTPRule, head: Head) -> bool:
    method, target, _ = head.start
    if rule.method and _pattern(rule.method).fullmatch(method) is None:
        return False
    if rule.path and _pattern(rule.path).fullmatch(target) is None:
        return False
    if rule.host and _pattern(rule.host).fullmatch(head.header("host") or "") is None:
        return False
    for h in rule.headers:
        want = h.name.lower()
        values = [v for k, v in head.headers if k.lower() == want]
        if not values or (h.value is not None and h.value not in values):
            return False
    return True


# Decisions that depend only on (entries, identity, method, target, host): the same
# requests repeat, and RE2 through its Python wrapper costs microseconds per pattern.
# Keyed by the identity of the entries tuple (a recompile makes new ones; the tuple is
# kept in the value, so a reused id never gives a stale answer).
_DECIDED: dict[tuple[Any, ...], tuple[Any, tuple[bool, tuple[PolicyRef, ...]]]] = {}
_DECIDED_MAX = 4096


def decide(entries: tuple[L7Entry, ...], identity: int,
           head: Head) -> tuple[bool, tuple[PolicyRef, ...]]:
    """(allowed, the policies that decided): the allowing policy, or every policy that
    governs the port for this identity when none allowed."""
    key = (id(entries), identity, head.start[0], head.start[1], head.header("host"))
    got = _DECIDED.get(key)
    if got is not None and got[0] is entries:
        return got[1]
    result = _decide(entries, identity, head)
    if not any(r.headers for e in entries if e.http for r in e.http):  # else per request
        if len(_DECIDED) >= _DECIDED_MAX:
            _DECIDED.clear()
        _DECIDED[key] = (entries, result)
    return result


def _decide(entries: Iterable[L7Entry], identity: int,
            head: Head) -> tuple[bool, tuple[PolicyRef, ...]]:
    applying = []
    for e in entries:
        if not e.covers(identity):
            continue
        applying.append(e.policy)
        if e.http is None or any(rule_matches(r, head) for r in e.http):
            return True, (e.policy,)
    return False, tuple(dict.fromkeys(applying))

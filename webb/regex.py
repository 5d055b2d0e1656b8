"""Regular expressions from clients and policies, with Go's syntax and RE2's
linear-time matching (PyPI google-re2).

Hubble and Cilium compile every user pattern (filters, HTTP policy rules, FQDN
patterns) with Go's regexp package, which is RE2: no backreferences or
lookaround, and matching time linear in the input. Python's ``re`` accepts more
and backtracks, so a pattern such as ``(a+)+$`` from any client could stall a
service; this module is the one place such patterns are compiled.
"""
from __future__ import annotations

from typing import Any

import re2

_OPTIONS = re2.Options()
# RE2 logs every rejected pattern to stderr through absl; the caller reports it.
_OPTIONS.log_errors = False
# Bounds the compiled program's memory like Go's default (a huge pattern is an
# error, not an allocation).
_OPTIONS.max_mem = 8 << 20


class RegexError(ValueError):
    """A pattern RE2 (and so Go) rejects."""


def compile_re2(pattern: str, what: str = "regular expression") -> Any:
    """The compiled pattern; RegexError names `what` and RE2's reason."""
    try:
        return re2.compile(pattern, options=_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(f"{what}: invalid regular expression {pattern!r}: {reason}") from None
    except (TypeError, OverflowError) as exc:
        raise RegexError(f"{what}: invalid regular expression {pattern!r}: {exc}") from None

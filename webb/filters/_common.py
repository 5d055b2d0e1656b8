"""Small helpers shared by the per-field filter modules.

Every filter module exposes ``build(ff) -> list[FilterFunc]``: one predicate
per FlowFilter field it understands that is set (non-empty). ``filters.py``
ANDs them together. Predicates take a ``flow_pb2.Flow`` and return a bool;
they must not parse anything per call.
"""
from __future__ import annotations

from typing import Any, Callable

from webb.regex import RegexError, compile_re2

FilterFunc = Callable[[Any], bool]

# monitor API message type for L7 access-log records ("l7" events).
MESSAGE_TYPE_ACCESS_LOG = 129


def values(ff: Any, name: str) -> list:
    """The list held by a repeated FlowFilter field, or [] if the field does
    not exist in this proto version. Empty means "not set" (as on the wire)."""
    field = getattr(ff, name, None)
    if field is None:
        return []
    return list(field)


def compile_go_regexp(pattern: str, what: str) -> Any:
    """Compile a user regular expression as Go's regexp package does (RE2 syntax,
    linear-time matching: webb.regex). Raises FilterError naming ``what`` and the
    reason when Go would reject the pattern."""
    from webb.filters.errors import FilterError

    try:
        return compile_re2(pattern, what)
    except RegexError as exc:
        raise FilterError(str(exc)) from None

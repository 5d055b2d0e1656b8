"""Small helpers shared by the per-field filter modules.

Every filter module exposes ``build(ff) -> list[FilterFunc]``: one predicate
per FlowFilter field it understands that is set (non-empty). ``filters.py``
ANDs them together. Predicates take a ``flow_pb2.Flow`` and return a bool;
they must not parse anything per call.
"""
from __future__ import annotations

import re
from typing import Any, Callable

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


def compile_go_regexp(pattern: str, what: str) -> re.Pattern:
    """Compile a user regular expression written for Go's RE2 syntax.

    Python's ``re`` is used as-is except for ``\\z`` (RE2: end of text), which
    Python spells ``\\Z``. Raises FilterError with a message naming ``what``.
    """
    from webb.filters.errors import FilterError

    try:
        return re.compile(_translate_go_escapes(pattern))
    except (re.error, OverflowError, RecursionError) as exc:
        raise FilterError(f"{what}: invalid regular expression {pattern!r}: {exc}") from None


def _translate_go_escapes(pattern: str) -> str:
    if "\\z" not in pattern:
        return pattern
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            pair = pattern[i:i + 2]
            out.append("\\Z" if pair == "\\z" else pair)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)

"""reply: the flow's is_reply value is one of the given booleans.

A flow whose is_reply is unknown (unset) does not match -- except DROPPED
flows, which Hubble treats as is_reply=false for compatibility with clients
of the deprecated ``reply`` field.
"""
from __future__ import annotations

from webb.filters._common import FilterFunc, values

_DROPPED = 2  # flow.Verdict.DROPPED


def build(ff) -> list[FilterFunc]:
    wanted = frozenset(bool(v) for v in values(ff, "reply"))
    if not wanted:
        return []

    def by_reply(flow) -> bool:
        if flow.HasField("is_reply"):
            return flow.is_reply.value in wanted
        return flow.verdict == _DROPPED and False in wanted

    return [by_reply]

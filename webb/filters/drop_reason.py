"""drop_reason_desc: a DROPPED flow whose drop reason is one of those given.

Flows with any other verdict never match.
"""
from __future__ import annotations

from webb.filters._common import FilterFunc, values

_DROPPED = 2  # flow.Verdict.DROPPED


def build(ff) -> list[FilterFunc]:
    wanted = frozenset(values(ff, "drop_reason_desc"))
    if not wanted:
        return []

    def by_drop_reason(flow) -> bool:
        return flow.verdict == _DROPPED and flow.drop_reason_desc in wanted

    return [by_drop_reason]

"""verdict: the flow's verdict is one of the given verdicts."""
from __future__ import annotations

from webb.filters._common import FilterFunc, values


def build(ff) -> list[FilterFunc]:
    wanted = frozenset(values(ff, "verdict"))
    if not wanted:
        return []

    def by_verdict(flow) -> bool:
        return flow.verdict in wanted

    return [by_verdict]

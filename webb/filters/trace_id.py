"""trace_id: the flow's trace_context.parent.trace_id is one of those given."""
from __future__ import annotations

from webb.filters._common import FilterFunc, values


def build(ff) -> list[FilterFunc]:
    wanted = frozenset(values(ff, "trace_id"))
    if not wanted:
        return []

    def by_trace_id(flow) -> bool:
        return flow.trace_context.parent.trace_id in wanted

    return [by_trace_id]

"""ip_trace_id: the flow's IP-option trace id is one of those given."""
from __future__ import annotations

from webb.filters._common import FilterFunc, values


def build(ff) -> list[FilterFunc]:
    wanted = frozenset(values(ff, "ip_trace_id"))
    if not wanted:
        return []

    def by_ip_trace_id(flow) -> bool:
        return flow.HasField("ip_trace_id") and flow.ip_trace_id.trace_id in wanted

    return [by_ip_trace_id]

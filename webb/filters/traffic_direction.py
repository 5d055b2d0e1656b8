"""traffic_direction: the flow's direction is one of those given."""
from __future__ import annotations

from webb.filters._common import FilterFunc, values


def build(ff) -> list[FilterFunc]:
    wanted = frozenset(values(ff, "traffic_direction"))
    if not wanted:
        return []

    def by_direction(flow) -> bool:
        return flow.traffic_direction in wanted

    return [by_direction]

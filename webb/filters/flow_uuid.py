"""uuid: the flow's uuid equals one of the given strings."""
from __future__ import annotations

from webb.filters._common import FilterFunc, values


def build(ff) -> list[FilterFunc]:
    wanted = frozenset(values(ff, "uuid"))
    if not wanted:
        return []

    def by_uuid(flow) -> bool:
        return flow.uuid in wanted

    return [by_uuid]

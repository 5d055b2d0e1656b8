"""encrypted: the flow's IP.encrypted flag is one of the given booleans."""
from __future__ import annotations

from webb.filters._common import FilterFunc, values


def build(ff) -> list[FilterFunc]:
    wanted = frozenset(bool(v) for v in values(ff, "encrypted"))
    if not wanted:
        return []

    def by_encrypted(flow) -> bool:
        return flow.IP.encrypted in wanted

    return [by_encrypted]

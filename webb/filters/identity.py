"""source_identity / destination_identity: endpoint security identity."""
from __future__ import annotations

from webb.filters._common import FilterFunc, values


def _by_identity(wanted: frozenset, side: str) -> FilterFunc:
    def by_identity(flow) -> bool:
        return flow.HasField(side) and getattr(flow, side).identity in wanted

    return by_identity


def build(ff) -> list[FilterFunc]:
    fs = []
    for field, side in (("source_identity", "source"), ("destination_identity", "destination")):
        wanted = frozenset(values(ff, field))
        if wanted:
            fs.append(_by_identity(wanted, side))
    return fs

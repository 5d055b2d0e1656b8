"""source_cluster_name / destination_cluster_name: exact endpoint cluster."""
from __future__ import annotations

from webb.filters._common import FilterFunc, values
from webb.filters.errors import FilterError


def _by_cluster(wanted: frozenset, side: str) -> FilterFunc:
    def by_cluster_name(flow) -> bool:
        return getattr(flow, side).cluster_name in wanted

    return by_cluster_name


def build(ff) -> list[FilterFunc]:
    fs = []
    for field, side in (("source_cluster_name", "source"),
                        ("destination_cluster_name", "destination")):
        names = values(ff, field)
        if not names:
            continue
        if "" in names:
            raise FilterError(f"invalid {field} filter: name must not be empty")
        fs.append(_by_cluster(frozenset(names), side))
    return fs

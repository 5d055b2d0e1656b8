"""source_workload / destination_workload: one of the endpoint's workloads
matches one Workload filter; an empty name or kind in the filter matches any."""
from __future__ import annotations

from webb.filters._common import FilterFunc, values


def _by_workload(specs: tuple, side: str) -> FilterFunc:
    def by_workload(flow) -> bool:
        for w in getattr(flow, side).workloads:
            name, kind = w.name, w.kind
            for want_name, want_kind in specs:
                if (not want_name or want_name == name) and (not want_kind or want_kind == kind):
                    return True
        return False

    return by_workload


def build(ff) -> list[FilterFunc]:
    fs = []
    for field, side in (("source_workload", "source"), ("destination_workload", "destination")):
        specs = tuple((w.name, w.kind) for w in values(ff, field))
        if specs:
            fs.append(_by_workload(specs, side))
    return fs

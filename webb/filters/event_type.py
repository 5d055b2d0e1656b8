"""event_type: the flow's Cilium event type matches one EventTypeFilter.

An EventTypeFilter with type 0 matches any type; its sub_type is compared
only when match_sub_type is set (0 is a valid sub type). A flow without an
event_type never matches.
"""
from __future__ import annotations

from webb.filters._common import FilterFunc, values


def build(ff) -> list[FilterFunc]:
    specs = tuple(
        (et.type, bool(et.match_sub_type), et.sub_type) for et in values(ff, "event_type")
    )
    if not specs:
        return []

    def by_event_type(flow) -> bool:
        if not flow.HasField("event_type"):
            return False
        ev = flow.event_type
        ev_type, ev_sub = ev.type, ev.sub_type
        for typ, match_sub, sub in specs:
            if typ != 0 and typ != ev_type:
                continue
            if match_sub and sub != ev_sub:
                continue
            return True
        return False

    return [by_event_type]

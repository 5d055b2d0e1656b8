"""interface: the flow was observed on an interface matching one filter.

A filter's index 0 and empty name are wildcards. Flows without interface
information never match.
"""
from __future__ import annotations

from webb.filters._common import FilterFunc, values


def build(ff) -> list[FilterFunc]:
    specs = tuple((i.index, i.name) for i in values(ff, "interface"))
    if not specs:
        return []

    def by_interface(flow) -> bool:
        if not flow.HasField("interface"):
            return False
        iface = flow.interface
        index, name = iface.index, iface.name
        for want_index, want_name in specs:
            if want_index and want_index != index:
                continue
            if want_name and want_name != name:
                continue
            return True
        return False

    return [by_interface]

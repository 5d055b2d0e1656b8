"""ip_version: the flow's IP version is one of those given.

A flow without an IP header has version IP_NOT_USED (0), as in Hubble.
"""
from __future__ import annotations

from webb.filters._common import FilterFunc, values


def build(ff) -> list[FilterFunc]:
    wanted = frozenset(values(ff, "ip_version"))
    if not wanted:
        return []

    def by_ip_version(flow) -> bool:
        return flow.IP.ipVersion in wanted

    return [by_ip_version]

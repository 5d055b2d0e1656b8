"""tcp_flags: the flow's TCP flags include every flag set in at least one of
the given TCPFlags (a filter with SYN matches SYN and SYN|ACK). TCP flows
without flags never match."""
from __future__ import annotations

from webb.filters._common import FilterFunc, values

_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


def build(ff) -> list[FilterFunc]:
    wanted = tuple(
        tuple(name for name in _FLAG_NAMES if getattr(flags, name)) for flags in values(ff, "tcp_flags")
    )
    if not wanted:
        return []

    def by_tcp_flags(flow) -> bool:
        l4 = flow.l4
        if not l4.HasField("TCP"):
            return False
        tcp = l4.TCP
        if not tcp.HasField("flags"):
            return False
        flags = tcp.flags
        for names in wanted:
            for name in names:
                if not getattr(flags, name):
                    break
            else:
                return True
        return False

    return [by_tcp_flags]

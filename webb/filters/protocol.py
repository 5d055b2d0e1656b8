"""protocol: L4 (tcp, udp, sctp, icmp, icmpv4, icmpv6, vrrp, igmp) or L7
(http, dns, kafka) protocol names, case-insensitive. "icmp" means either
ICMPv4 or ICMPv6."""
from __future__ import annotations

from webb.filters._common import FilterFunc, values
from webb.filters.errors import FilterError

# protocol name -> (Flow sub-message, fields of it any of which must be set)
_L4 = {
    "tcp": ("TCP",),
    "udp": ("UDP",),
    "sctp": ("SCTP",),
    "icmp": ("ICMPv4", "ICMPv6"),
    "icmpv4": ("ICMPv4",),
    "icmpv6": ("ICMPv6",),
    "vrrp": ("VRRP",),
    "igmp": ("IGMP",),
}
_L7 = {
    "http": ("http",),
    "dns": ("dns",),
    "kafka": ("kafka",),
}


def _known_fields(message_cls, names) -> tuple[str, ...]:
    known = message_cls.DESCRIPTOR.fields_by_name
    return tuple(n for n in names if n in known)


def build(ff) -> list[FilterFunc]:
    entries = values(ff, "protocol")
    if not entries:
        return []
    from webb.api.flow import flow_pb2

    l4, l7 = [], []
    for entry in entries:
        name = entry.lower()
        if name in _L4:
            l4.extend(_known_fields(flow_pb2.Layer4, _L4[name]))
        elif name in _L7:
            l7.extend(_known_fields(flow_pb2.Layer7, _L7[name]))
        else:
            raise FilterError(f"invalid protocol filter: unknown protocol: {entry!r}")
    l4_fields = tuple(dict.fromkeys(l4))
    l7_fields = tuple(dict.fromkeys(l7))

    def by_protocol(flow) -> bool:
        if l4_fields:
            has = flow.l4.HasField
            for f in l4_fields:
                if has(f):
                    return True
        if l7_fields:
            has = flow.l7.HasField
            for f in l7_fields:
                if has(f):
                    return True
        return False

    return [by_protocol]

"""source_port / destination_port: decimal port numbers (0-65535).

Only TCP, UDP and SCTP flows have ports; other flows never match.
"""
from __future__ import annotations

import re

from webb.filters._common import FilterFunc, values
from webb.filters.errors import FilterError

_DIGITS = re.compile(r"[0-9]+")
_L4_WITH_PORTS = ("TCP", "UDP", "SCTP")


def parse_port(text: str, field: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise FilterError(f"invalid {field} filter: invalid port {text!r}: not a decimal number")
    port = int(text)
    if port > 0xFFFF:
        raise FilterError(f"invalid {field} filter: invalid port {text!r}: out of range")
    return port


def _by_port(wanted: frozenset, attr: str) -> FilterFunc:
    def by_port(flow) -> bool:
        l4 = flow.l4
        for proto in _L4_WITH_PORTS:
            if l4.HasField(proto):
                return getattr(getattr(l4, proto), attr) in wanted
        return False

    return by_port


def build(ff) -> list[FilterFunc]:
    fs = []
    for field, attr in (("source_port", "source_port"), ("destination_port", "destination_port")):
        entries = values(ff, field)
        if entries:
            fs.append(_by_port(frozenset(parse_port(p, field) for p in entries), attr))
    return fs

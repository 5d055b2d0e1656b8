"""source_ip / destination_ip / source_ip_xlated: exact address or CIDR.

As in Hubble, an entry containing "/" is a CIDR prefix (host bits may be set);
anything else must be a valid IP address and is compared to the flow's
address *as a string*. Flows without the address never match.
"""
from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

from webb.filters._common import FilterFunc, values
from webb.filters.errors import FilterError

_BITS = re.compile(r"0|[1-9][0-9]{0,2}")

# (filter field, attribute of flow.IP)
_FIELDS = (
    ("source_ip", "source"),
    ("destination_ip", "destination"),
    ("source_ip_xlated", "source_xlated"),
)


def _parse_prefix(text: str):
    addr, _, bits = text.partition("/")
    if "%" in addr or not _BITS.fullmatch(bits):
        raise ValueError(text)
    ip = ipaddress.ip_address(addr)
    if int(bits) > ip.max_prefixlen:
        raise ValueError(text)
    net = ipaddress.ip_network(f"{ip}/{bits}", strict=False)
    return net.version, int(net.network_address), int(net.netmask)


@lru_cache(maxsize=1 << 16)
def _parse_addr(text: str):
    """(version, integer) of a flow address, or None if it does not parse."""
    if "%" in text:  # zoned addresses are never inside a prefix
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.version, int(ip)


def compile_ips(entries: list[str], field: str) -> tuple[frozenset, tuple]:
    exact, prefixes = set(), []
    for entry in entries:
        if "/" in entry:
            try:
                prefixes.append(_parse_prefix(entry))
            except ValueError:
                raise FilterError(f"invalid {field} filter: invalid CIDR in filter: {entry!r}") from None
        else:
            try:
                ipaddress.ip_address(entry)
            except ValueError:
                raise FilterError(
                    f"invalid {field} filter: invalid IP address in filter: {entry!r}") from None
            exact.add(entry)
    return frozenset(exact), tuple(prefixes)


def _by_ip(exact: frozenset, prefixes: tuple, attr: str) -> FilterFunc:
    def by_ip(flow) -> bool:
        addr = getattr(flow.IP, attr)
        if not addr:
            return False
        if addr in exact:
            return True
        if prefixes:
            parsed = _parse_addr(addr)
            if parsed is not None:
                version, value = parsed
                for p_version, p_net, p_mask in prefixes:
                    if p_version == version and value & p_mask == p_net:
                        return True
        return False

    return by_ip


def build(ff) -> list[FilterFunc]:
    fs = []
    for field, attr in _FIELDS:
        entries = values(ff, field)
        if entries:
            exact, prefixes = compile_ips(entries, field)
            fs.append(_by_ip(exact, prefixes, attr))
    return fs

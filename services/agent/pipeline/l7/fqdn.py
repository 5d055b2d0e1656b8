"""Names learnt from DNS answers, for flows to (and from) the answered addresses.

An answer maps its addresses to the query name (and the CNAMEs on the way) for
its TTL. A flow gets a name when the name was valid at the flow's own time, so a
flow read long after it happened is named as it was then: entries are kept past
their expiry for `keep_expired_ns` (bounded in total by `max_ips`).
Addresses are keyed as the datapath writes them: 16 bytes, IPv4 in the first 4.
"""
from __future__ import annotations

import ipaddress
from collections import OrderedDict

from ..flow_wire import F, ld

# (name, valid from, valid until) in wall-clock ns
Entry = tuple[str, int, int]


def packed16(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed.ljust(16, b"\0")


class FQDNCache:
    def __init__(self, max_ips: int = 65536, max_names_per_ip: int = 16,
                 keep_expired_ns: int = 3600 * 10**9) -> None:
        self.max_ips = max_ips
        self.max_names = max_names_per_ip
        self.keep_expired_ns = keep_expired_ns
        self._by_ip: OrderedDict[bytes, list[Entry]] = OrderedDict()
        self.evicted = 0
        self.active = False  # anything learnt yet: flows skip the lookups until then

    def __len__(self) -> int:
        return len(self._by_ip)

    def learn(self, names: list[str], ips: list[str], ttl_s: int, now_ns: int) -> None:
        self.active = True
        until = now_ns + max(ttl_s, 0) * 10**9
        clean = [n.rstrip(".").lower() for n in names if n and n != "."]
        for ip in ips:
            try:
                k = packed16(ip)
            except ValueError:
                continue
            entries = self._by_ip.get(k)
            if entries is None:
                if len(self._by_ip) >= self.max_ips:
                    self._by_ip.popitem(last=False)
                    self.evicted += 1
                entries = self._by_ip[k] = []
            else:
                self._by_ip.move_to_end(k)
                horizon = now_ns - self.keep_expired_ns
                entries[:] = [e for e in entries if e[2] >= horizon]
            for name in clean:
                entries.append((name, now_ns, until))
            del entries[:-self.max_names]

    def names(self, addr16: bytes, at_ns: int) -> list[str]:
        """Names valid for the address at that time, each once, newest first."""
        entries = self._by_ip.get(addr16)
        if not entries:
            return []
        out: list[str] = []
        for name, start, end in reversed(entries):
            if start <= at_ns <= end and name not in out:
                out.append(name)
        return out

    def fields(self, saddr16: bytes, daddr16: bytes, at_ns: int) -> bytes:
        """flow.Flow source_names and destination_names, encoded."""
        out = b""
        for field, addr in ((F.source_names, saddr16), (F.destination_names, daddr16)):
            for name in self.names(addr, at_ns):
                raw = name.encode()
                out += ld(field, raw)
        return out


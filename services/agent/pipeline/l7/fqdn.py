"""Names on flows: the DNS answers the L7 visibility saw (stores/dns_answers.py), read
for flows to (and from) the answered addresses.

A flow gets a name when the name was valid at the flow's own time, so a flow read
long after it happened is named as it was then: answers are kept past their expiry
for `keep_expired_ns` (bounded in total by `max_ips`, least recently answered address
evicted first, and `max_names_per_ip`). Addresses are keyed as the datapath writes
them: 16 bytes, IPv4 in the first 4.
"""
from __future__ import annotations

import ipaddress

from ...stores.dns_answers import DNSAnswers
from ..flow_wire import F, ld


def packed16(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed.ljust(16, b"\0")


class FQDNCache(DNSAnswers[bytes]):
    def __init__(self, max_ips: int = 65536, max_names_per_ip: int = 16,
                 keep_expired_ns: int = 3600 * 10**9) -> None:
        super().__init__(packed16, keep_expired_ns=keep_expired_ns, max_addresses=max_ips,
                         max_entries_per_address=max_names_per_ip)

    def fields(self, saddr16: bytes, daddr16: bytes, at_ns: int) -> bytes:
        """flow.Flow source_names and destination_names, encoded."""
        out = b""
        for field, addr in ((F.source_names, saddr16), (F.destination_names, daddr16)):
            for name in self.names(addr, at_ns):
                out += ld(field, name.encode())
        return out

"""The IP cache: which security identity an address has, as the datapath sees it.

Endpoint addresses map to their endpoints' identities, this node's addresses to
reserved:host (1), other nodes' to reserved:remote-node (6), and every CIDR a policy
names (with its `except` prefixes) to a local CIDR identity, numbered from 16777217
as in Cilium. An address nothing covers is reserved:world (2). The most specific
prefix wins, so endpoints and nodes inside a policy CIDR keep their own identity:
CIDR rules select the outside world only, as in Cilium.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from ..stores.identities import RESERVED_HOST, RESERVED_REMOTE_NODE, RESERVED_WORLD
from .model import Network

CIDR_IDENTITY_BASE = (1 << 24) + 1  # Cilium's first local (node-scoped) identity


@dataclass(frozen=True, order=True)
class IPKey:
    family: int  # 4 or 6
    addr: bytes  # 16 bytes, IPv4 in the first four
    bits: int    # prefix length of the address

    @classmethod
    def of(cls, net: Network) -> "IPKey":
        return cls(net.version, net.network_address.packed.ljust(16, b"\0"), net.prefixlen)

    @classmethod
    def host(cls, ip: str) -> "IPKey":
        a = ipaddress.ip_address(ip)
        return cls(a.version, a.packed.ljust(16, b"\0"), 32 if a.version == 4 else 128)

    def text(self) -> str:
        addr = ipaddress.ip_address(self.addr[:4] if self.family == 4 else self.addr)
        return f"{addr}/{self.bits}"


class CIDRIdentities:
    """Numbers for policy prefixes; a prefix keeps its number for the agent's life."""

    def __init__(self) -> None:
        self._by_net: dict[Network, int] = {}
        self._by_id: dict[int, Network] = {}

    def get(self, net: Network) -> int:
        num = self._by_net.get(net)
        if num is None:
            num = CIDR_IDENTITY_BASE + len(self._by_net)
            self._by_net[net] = num
            self._by_id[num] = net
        return num

    def network(self, num: int) -> Network | None:
        return self._by_id.get(num)

    @staticmethod
    def labels(net: Network) -> tuple[str, ...]:
        return (f"cidr:{net}", "reserved:world")

    def items(self) -> list[tuple[Network, int]]:
        return list(self._by_net.items())


def build(endpoints: Iterable[tuple[str, int]], node_ips: Iterable[str],
          remote_node_ips: Iterable[str], cidrs: Iterable[tuple[Network, int]]) -> dict[IPKey, int]:
    """The wanted ipcache: endpoint (address, identity) pairs, nodes, policy prefixes."""
    out: dict[IPKey, int] = {}
    for net, num in cidrs:
        out[IPKey.of(net)] = num
    for ip in remote_node_ips:
        out[IPKey.host(ip)] = RESERVED_REMOTE_NODE
    for ip in node_ips:
        out[IPKey.host(ip)] = RESERVED_HOST
    for ip, num in endpoints:
        out[IPKey.host(ip)] = num
    return out


MEMO_MAX = 4096


class PrefixLookup:
    """Longest-prefix match in Python, for giving flows the identity the datapath used."""

    def __init__(self, entries: dict[IPKey, int]) -> None:
        self._tables: dict[int, list[tuple[int, dict[bytes, int]]]] = {4: [], 6: []}
        grouped: dict[tuple[int, int], dict[bytes, int]] = {}
        for k, v in entries.items():
            grouped.setdefault((k.family, k.bits), {})[_mask(k.addr, k.bits)] = v
        for (fam, bits), table in sorted(grouped.items(), key=lambda kv: -kv[0][1]):
            self._tables[fam].append((bits, table))
        # Answers so far, per family: the L7 proxy asks for its clients' addresses once
        # per request, the same few over and over. Forgotten by set() and delete().
        self._memo: dict[int, dict[bytes, int]] = {4: {}, 6: {}}

    def set(self, key: IPKey, value: int) -> None:
        self._memo[key.family].clear()
        tables = self._tables[key.family]
        for bits, table in tables:
            if bits == key.bits:
                table[_mask(key.addr, key.bits)] = value
                return
        tables.append((key.bits, {_mask(key.addr, key.bits): value}))
        tables.sort(key=lambda t: -t[0])

    def delete(self, key: IPKey) -> None:
        self._memo[key.family].clear()
        for bits, table in self._tables[key.family]:
            if bits == key.bits:
                table.pop(_mask(key.addr, key.bits), None)
                return

    def lookup(self, family: int, addr: bytes) -> int:
        memo = self._memo[family]
        num = memo.get(addr)
        if num is not None:
            return num
        num = RESERVED_WORLD
        for bits, table in self._tables[family]:
            got = table.get(_mask(addr, bits))
            if got is not None:
                num = got
                break
        if len(memo) >= MEMO_MAX:
            memo.clear()
        memo[addr] = num
        return num


def _mask(addr: bytes, bits: int) -> bytes:
    full, rest = divmod(bits, 8)
    out = bytearray(16)
    out[:full] = addr[:full]
    if rest:
        out[full] = addr[full] & (0xFF << (8 - rest)) & 0xFF
    return bytes(out)

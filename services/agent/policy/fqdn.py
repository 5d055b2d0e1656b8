"""Addresses learned from DNS answers for toFQDNs rules (Cilium's NameManager, node-wide).

The DNS proxy (l7proxy/dnsproxy.py) hands every answer it let through to the engine;
names that some toFQDNs selector selects keep their addresses until the answer's TTL
(at least --tofqdns-min-ttl, 0 by default as in current Cilium, and never less than
TTL_FLOOR) runs out. The
compiler turns the addresses a selector selects into /32 and /128 prefixes with CIDR
identities, so the datapath allows them like toCIDR entries; when they expire the
selection shrinks and the entries go.

Which selectors select a name is worked out once, when the name is learned (and again
for every stored name only when the set of selectors changes): a recompile then reads
each selector's names from an index instead of matching every stored name against
every selector, so learning N names costs O(N) matches, not O(N^2).
"""
from __future__ import annotations

import ipaddress
import time
from typing import Iterable

from .dnsmatch import fqdn, matches
from .model import DNSRule, Network

MAX_NAMES = 65536
MAX_IPS_PER_NAME = 256
# An answer with TTL 0 (or 1) would expire the moment it is learned, before the client
# can connect to what it asked for: every address lives at least this long, so the
# connection that follows an answer can be made even on a loaded node.
TTL_FLOOR = 5.0


class FQDNStore:
    def __init__(self, min_ttl: float = 0.0) -> None:
        self.min_ttl = min_ttl
        # name ("api.github.com.") -> address -> expiry (time.monotonic())
        self._names: dict[str, dict[Network, float]] = {}
        self._selectors: frozenset[DNSRule] = frozenset()
        # stored name -> the selectors (of _selectors) that select it, and the reverse
        self._selecting: dict[str, frozenset[DNSRule]] = {}
        self._by_selector: dict[DNSRule, set[str]] = {}

    def set_selectors(self, selectors: Iterable[DNSRule]) -> None:
        """The toFQDNs selectors of the policies; a change re-matches the stored names."""
        selectors = frozenset(selectors)
        if selectors == self._selectors:
            return
        self._selectors = selectors
        self._selecting = {}
        self._by_selector = {r: set() for r in selectors}
        for name in self._names:
            self._index(name)

    def selecting(self, name: str) -> frozenset[DNSRule]:
        """The selectors that select name (cached for the names stored)."""
        name = fqdn(name)
        got = self._selecting.get(name)
        if got is None:
            got = frozenset(r for r in self._selectors if matches((r,), name))
        return got

    def _index(self, name: str) -> None:
        sel = frozenset(r for r in self._selectors if matches((r,), name))
        self._selecting[name] = sel
        for r in sel:
            self._by_selector[r].add(name)

    def _forget(self, name: str) -> None:
        del self._names[name]
        for r in self._selecting.pop(name, ()):
            self._by_selector[r].discard(name)

    def __len__(self) -> int:
        return len(self._names)

    def learn(self, names: Iterable[str], ips: Iterable[str], ttl: int,
              now: float | None = None) -> bool:
        """Records an answer; True when a (name, address) pair is new (the selection
        may grow: recompile), False when it only lasts longer now."""
        now = time.monotonic() if now is None else now
        until = now + max(float(ttl), self.min_ttl, TTL_FLOOR)
        nets = []
        for ip in ips:
            try:
                nets.append(ipaddress.ip_network(ip))
            except ValueError:
                continue
        grew = False
        for name in names:
            if not nets:
                break
            name = fqdn(name)
            known = self._names.get(name)
            if known is None:
                if len(self._names) >= MAX_NAMES:
                    continue  # full: the name is not allowed (never more than the policy says)
                known = self._names[name] = {}
                self._index(name)
            for net in nets:
                if net not in known:
                    if len(known) >= MAX_IPS_PER_NAME:
                        continue
                    grew = True
                known[net] = max(until, known.get(net, 0.0))
        return grew

    def expire(self, now: float | None = None) -> bool:
        """Drops what expired; True if anything did."""
        now = time.monotonic() if now is None else now
        gone = False
        for name in list(self._names):
            known = self._names[name]
            for net in [n for n, t in known.items() if t <= now]:
                del known[net]
                gone = True
            if not known:
                self._forget(name)
        return gone

    def next_expiry(self) -> float | None:
        return min((t for known in self._names.values() for t in known.values()), default=None)

    def selected(self, rule: DNSRule, now: float | None = None) -> frozenset[Network]:
        """The live addresses of every name the selector selects."""
        now = time.monotonic() if now is None else now
        names = self._by_selector.get(rule)
        if names is None:  # not one of the policies' selectors: match every name
            names = {n for n in self._names if matches((rule,), n)}
        out: set[Network] = set()
        for name in names:
            out.update(n for n, t in self._names[name].items() if t > now)
        return frozenset(out)

    def names(self) -> dict[str, dict[str, float]]:
        """For the admin API / debugging: name -> address -> seconds left."""
        now = time.monotonic()
        return {name: {str(n.network_address): round(t - now, 1) for n, t in known.items()}
                for name, known in self._names.items()}

"""Addresses learned from DNS answers for toFQDNs rules (Cilium's NameManager, node-wide).

The DNS proxy (l7proxy/dnsproxy.py) hands every answer it let through to the engine;
names that some toFQDNs selector selects keep their addresses until the answer's TTL
(at least --tofqdns-min-ttl, 0 by default as in current Cilium, and never less than
TTL_FLOOR) runs out; the table of answers is stores/dns_answers.py's. The
compiler turns the addresses a selector selects into /32 and /128 prefixes with CIDR
identities, so the datapath allows them like toCIDR entries; when they expire the
selection shrinks and the entries go.

Which selectors select a name is worked out once, when the name is learned (and again
for every stored name only when the set of selectors changes): a recompile then reads
each selector's names from an index instead of matching every stored name against
every selector, so learning N names costs O(N) matches, not O(N^2).

Each selector's addresses are counted (how many of its names have each address), so
an answer or an expiry knows at once which addresses a selector gained or lost: those
are `changed()` until the engine takes them, and it updates the policy maps for just
those addresses (policy/compile.py, Compiler.update_addresses) instead of recompiling.
"""
from __future__ import annotations

import ipaddress
import time
from typing import Iterable

from ..stores.dns_answers import DNSAnswers, canonical_name
from .dnsmatch import matches
from .model import DNSRule, Network

# Cilium's --tofqdns-max-deferred-connection-deletes: expired addresses kept for the
# connections that may still use them; beyond it the oldest go.
MAX_ZOMBIES = 10000
MAX_NAMES = 65536
MAX_IPS_PER_NAME = 256
# In all (names x addresses alone would allow 16.7M pairs, gigabytes): ~60 MB at most.
MAX_PAIRS = 262144
# An answer with TTL 0 (or 1) would expire the moment it is learned, before the client
# can connect to what it asked for: every address lives at least this long, so the
# connection that follows an answer can be made even on a loaded node.
TTL_FLOOR = 5.0


def _ns(t: float | None) -> int:
    return round((time.monotonic() if t is None else t) * 1e9)


class FQDNStore:
    def __init__(self, min_ttl: float = 0.0) -> None:
        self.min_ttl = min_ttl
        # The answers, looked up by name ("api.github.com", no final dot), times in
        # time.monotonic() ns. Full, it refuses new names and addresses: it never drops
        # what the policy allowed before its time.
        self.answers: DNSAnswers[Network] = DNSAnswers(
            ipaddress.ip_network, ttl_floor_s=max(min_ttl, TTL_FLOOR), index_names=True,
            max_names=MAX_NAMES, max_addresses_per_name=MAX_IPS_PER_NAME,
            max_pairs=MAX_PAIRS)
        self._selectors: frozenset[DNSRule] = frozenset()
        # stored name -> the selectors (of _selectors) that select it, and the reverse
        self._selecting: dict[str, frozenset[DNSRule]] = {}
        self._by_selector: dict[DNSRule, set[str]] = {}
        # selector -> address -> how many of its names have it (the selection)
        self._count: dict[DNSRule, dict[Network, int]] = {}
        # addresses whose selection changed since the engine last took them
        self._changed: set[Network] = set()
        # Expired addresses kept for established connections (Cilium's zombies):
        # (selector, address) -> when it expired, oldest first.
        self._zombies: dict[tuple[DNSRule, Network], float] = {}
        self.max_zombies = MAX_ZOMBIES

    def set_selectors(self, selectors: Iterable[DNSRule]) -> None:
        """The toFQDNs selectors of the policies; a change re-matches the stored names."""
        selectors = frozenset(selectors)
        if selectors == self._selectors:
            return
        self._selectors = selectors
        self._selecting = {}
        self._by_selector = {r: set() for r in selectors}
        self._count = {r: {} for r in selectors}
        for key in [k for k in self._zombies if k[0] not in selectors]:
            del self._zombies[key]
        for name in self.answers.known_names():
            self._index(name)
            for addr in self.answers.addresses_of(name):
                self._counted(name, addr, 1)

    def selecting(self, name: str) -> frozenset[DNSRule]:
        """The selectors that select name (cached for the names stored)."""
        name = canonical_name(name.strip())
        got = self._selecting.get(name)
        if got is None:
            got = frozenset(r for r in self._selectors if matches((r,), name))
        return got

    def _index(self, name: str) -> None:
        sel = frozenset(r for r in self._selectors if matches((r,), name))
        self._selecting[name] = sel
        for r in sel:
            self._by_selector[r].add(name)

    def _counted(self, name: str, addr: Network, step: int) -> None:
        """A (name, address) pair came (+1) or went (-1): its selectors' counts."""
        for r in self._selecting.get(name, ()):
            counts = self._count[r]
            n = counts.get(addr, 0) + step
            if n > 0:
                counts[addr] = n
                if n == 1 and step > 0:
                    self._changed.add(addr)
                    self._zombies.pop((r, addr), None)
            else:
                counts.pop(addr, None)
                self._changed.add(addr)
                # Expired: kept for the connections that may still use it.
                self._zombies[(r, addr)] = time.monotonic()
                if len(self._zombies) > self.max_zombies:  # the oldest goes
                    oldest = next(iter(self._zombies))
                    del self._zombies[oldest]
                    self._changed.add(oldest[1])

    def keeps(self, rule: DNSRule, net: Network) -> bool:
        """The selector's address expired but is kept for established connections."""
        return (rule, net) in self._zombies

    def kept_nets(self, rule: DNSRule) -> frozenset[Network]:
        return frozenset(n for r, n in self._zombies if r == rule)

    def kept(self) -> set[Network]:
        """Every address kept for established connections."""
        return {n for _, n in self._zombies}

    def still_used(self, live: set[Network], grace: float, now: float | None = None) -> None:
        """A check of the kept addresses' connections: those `live` are kept on (from
        now), the others go once `grace` seconds passed since they were last seen used
        (or expired) (Cilium's --tofqdns-idle-connection-grace-period, default 0)."""
        now = time.monotonic() if now is None else now
        gone = []
        for key, since in self._zombies.items():
            if key[1] in live:
                self._zombies[key] = now
            elif now - since >= grace:
                gone.append(key)
        # Per (selector, address): another selector's hold on the same address may
        # have expired later, and its grace runs on.
        for key in gone:
            del self._zombies[key]
            self._changed.add(key[1])

    def selected_nets(self, rule: DNSRule) -> frozenset[Network]:
        """The addresses the selector selects now: every pair in the table (an expired
        one until expire() drops it), read from the counts."""
        counts = self._count.get(rule)
        if counts is None:
            return self.selected(rule)
        return frozenset(counts)

    def selects(self, rule: DNSRule, net: Network) -> bool:
        counts = self._count.get(rule)
        return counts is not None and net in counts

    def changed(self) -> set[Network]:
        """Addresses some selector gained or lost since take_changed()."""
        return self._changed

    def take_changed(self) -> set[Network]:
        out, self._changed = self._changed, set()
        return out

    def _forget(self, name: str) -> None:
        for r in self._selecting.pop(name, ()):
            self._by_selector[r].discard(name)

    def __len__(self) -> int:
        """Names known."""
        return self.answers.name_count()

    def learn(self, names: Iterable[str], ips: Iterable[str], ttl: int,
              now: float | None = None) -> bool:
        """Records an answer; True when a (name, address) pair is new (the selection
        may grow: recompile), False when it only lasts longer now."""
        names = [canonical_name(n.strip()) for n in names]
        added: list[tuple[str, Network]] = []
        grew = self.answers.learn(names, ips, ttl, _ns(now), added)
        for name in names:
            if name not in self._selecting and self.answers.knows(name):
                self._index(name)
        for name, addr in added:
            self._counted(name, addr, 1)
        return grew

    def expire(self, now: float | None = None) -> bool:
        """Drops what expired; True if anything did."""
        gone = self.answers.expire(_ns(now))
        for name, addr in gone:
            self._counted(name, addr, -1)
        for name, _ in gone:
            if not self.answers.knows(name):
                self._forget(name)
        return bool(gone)

    def next_expiry(self) -> float | None:
        """When the next address expires, in time.monotonic() seconds."""
        when = self.answers.next_expiry()
        return None if when is None else when / 1e9

    def selected(self, rule: DNSRule, now: float | None = None) -> frozenset[Network]:
        """The live addresses of every name the selector selects."""
        now_ns = _ns(now)
        names = self._by_selector.get(rule)
        if names is None:  # not one of the policies' selectors: match every name
            names = {n for n in self.answers.known_names() if matches((rule,), n)}
        out: set[Network] = set()
        for name in names:
            out.update(self.answers.addresses(name, now_ns))
        return frozenset(out)

    def names(self) -> dict[str, dict[str, float]]:
        """For the admin API / debugging: name -> address -> seconds left."""
        now = time.monotonic_ns()
        return {name + ".": {str(n.network_address): round((t - now) / 1e9, 1)
                             for n, t in self.answers.expiries(name).items()}
                for name in self.answers.known_names()}

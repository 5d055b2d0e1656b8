"""What address a DNS answer gave for which name, from when until when: the agent's one
table of it (Cilium keeps the same in its fqdn DNSCache).

Two readers, each with its own instance:
  - names on flows (pipeline/l7/fqdn.py): every answer the L7 visibility saw, looked up
    by address; a flow is named with what was valid at the flow's own time, so expired
    answers are kept a while (`keep_expired_ns`), and the table makes room by evicting
    the least recently answered address;
  - toFQDNs (policy/fqdn.py): answers the DNS proxy let through, looked up by name
    (`index_names`); an address lives at least `ttl_floor_s`, goes when `expire()`
    finds it expired, and a full table refuses new names or addresses instead of
    dropping addresses the policy already allowed.

An answer gives each of its names, for each of its addresses, the interval
[learned, learned + max(TTL, floor)]; an answer for a pair whose latest interval it
overlaps makes that one longer, else it adds one (a flow read late finds the name it
had then). Names are kept lower-case without the final dot; addresses as
`address(text)` makes them (a ValueError skips the address). Times are integer ns of
whatever clock the caller passes.
"""
from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from typing import Callable, Generic, Hashable, Iterable, Iterator, TypeVar

K = TypeVar("K", bound=Hashable)
Entry = tuple[str, int, int]  # (name, valid from, valid until)


def canonical_name(name: str) -> str:
    """"API.github.com." -> "api.github.com" (how names are kept and shown on flows)."""
    return name.rstrip(".").lower()


class DNSAnswers(Generic[K]):
    def __init__(self, address: Callable[[str], K], *, ttl_floor_s: float = 0.0,
                 keep_expired_ns: int = 0, max_addresses: int | None = None,
                 max_entries_per_address: int | None = None, index_names: bool = False,
                 max_names: int | None = None,
                 max_addresses_per_name: int | None = None,
                 max_pairs: int | None = None) -> None:
        self.address = address
        self.ttl_floor_s = ttl_floor_s
        self.keep_expired_ns = keep_expired_ns
        # Evicting bounds (the least recently answered go) ...
        self.max_addresses = max_addresses
        self.max_entries_per_address = max_entries_per_address
        # ... and refusing ones, by name (what is known stays until it expires).
        self.max_names = max_names
        self.max_addresses_per_name = max_addresses_per_name
        # ... and in all: names x addresses per name alone would allow millions of pairs
        # (an allowed wildcard and a DNS server answering many addresses per name).
        self.max_pairs = max_pairs
        self._pairs = 0  # (name, address) pairs in the name index
        self.refused = 0  # pairs not learned because a refusing bound was reached
        # address -> its entries, least recently answered first
        self._by_addr: OrderedDict[K, list[Entry]] = OrderedDict()
        # name -> its addresses: only where something looks names up (toFQDNs)
        self._by_name: dict[str, set[K]] | None = {} if index_names else None
        # Where names are looked up (toFQDNs), also when entries end: (until, n, addr),
        # at most one live item per address (_due: its time), at or before the end of
        # the address's earliest entry. A name answered again and again (one per query,
        # thousands a second, each moving its end) then adds nothing: expire() finds the
        # entry longer when the item comes up and schedules the address again.
        # next_expiry() and expire() cost what expires, not the whole table.
        self._ends: list[tuple[int, int, K]] | None = [] if index_names else None
        self._due: dict[K, int] = {}
        self._seq = itertools.count()
        self.evicted = 0  # addresses evicted to make room
        self.active = False  # anything learned yet: flows skip the lookups until then

    def __len__(self) -> int:
        """Addresses known."""
        return len(self._by_addr)

    # -- learning and forgetting --------------------------------------------------------------
    def learn(self, names: Iterable[str], ips: Iterable[str], ttl_s: float, now_ns: int,
              added: list[tuple[str, K]] | None = None) -> bool:
        """Records an answer; True when a (name, address) pair is new (appended to
        `added` if given)."""
        self.active = True
        secs = max(ttl_s, 0)
        until = now_ns + int((secs if secs >= self.ttl_floor_s else self.ttl_floor_s) * 10**9)
        clean = [canonical_name(n) for n in names if n and n != "."]
        grew = False
        for ip in ips:
            try:
                addr = self.address(ip)
            except ValueError:
                continue
            entries = self._by_addr.get(addr)
            if entries is None:
                if self.max_addresses is not None and len(self._by_addr) >= self.max_addresses:
                    old, old_entries = self._by_addr.popitem(last=False)
                    self._unindex(old, old_entries, [])
                    self.evicted += 1
                entries = self._by_addr[addr] = []
            else:
                self._by_addr.move_to_end(addr)
                if self.keep_expired_ns:
                    self._prune(addr, entries, now_ns)
            for name in clean:
                if self._add(addr, entries, name, now_ns, until):
                    grew = True
                    if added is not None:
                        added.append((name, addr))
            cap = self.max_entries_per_address
            if cap is not None and len(entries) > cap:
                dropped = entries[:-cap]
                del entries[:-cap]
                self._unindex(addr, dropped, entries)
            if not entries:
                del self._by_addr[addr]
        return grew

    def _add(self, addr: K, entries: list[Entry], name: str, now: int, until: int) -> bool:
        for i in range(len(entries) - 1, -1, -1):
            n, start, end = entries[i]
            if n == name:  # the pair's latest interval
                if now <= end and until >= start:  # overlapped: it grows (and is newest)
                    del entries[i]
                    now, until = min(start, now), max(end, until)
                entries.append((name, now, until))
                self._schedule(addr, until)
                return False
        index = self._by_name
        if index is not None:
            addrs = index.get(name)
            if self.max_pairs is not None and self._pairs >= self.max_pairs:
                self.refused += 1
                return False
            if addrs is None:
                if self.max_names is not None and len(index) >= self.max_names:
                    self.refused += 1
                    return False  # full: never more than the limits say
                addrs = index[name] = set()
            elif (self.max_addresses_per_name is not None
                  and len(addrs) >= self.max_addresses_per_name):
                self.refused += 1
                return False
            addrs.add(addr)
            self._pairs += 1
        entries.append((name, now, until))
        self._schedule(addr, until)
        return True

    def _schedule(self, addr: K, until: int) -> None:
        """The address has an entry ending at `until`: an item no later than that."""
        ends = self._ends
        if ends is None:
            return
        due = self._due.get(addr)
        if due is None or until < due:  # a later item left behind is skipped when it comes up
            self._due[addr] = until
            heapq.heappush(ends, (until, next(self._seq), addr))

    def _unindex(self, addr: K, dropped: Iterable[Entry], kept: list[Entry]) -> list[str]:
        """Names of `dropped` with no entry left in `kept`: taken off the name index."""
        left = {e[0] for e in kept}
        gone = list({e[0] for e in dropped} - left)
        index = self._by_name
        if index is not None:
            for name in gone:
                addrs = index[name]
                if addr in addrs:
                    addrs.remove(addr)
                    self._pairs -= 1
                if not addrs:
                    del index[name]
        return gone

    def _prune(self, addr: K, entries: list[Entry], now: int) -> list[str]:
        """Drops the address's entries that ended keep_expired_ns before now; the names
        left without one."""
        horizon = now - self.keep_expired_ns
        kept = [e for e in entries if e[2] > horizon]
        if len(kept) == len(entries):
            return []
        dropped = [e for e in entries if e[2] <= horizon]
        entries[:] = kept
        return self._unindex(addr, dropped, kept)

    def expire(self, now_ns: int) -> list[tuple[str, K]]:
        """Drops what ended keep_expired_ns before now; the (name, address) pairs gone."""
        out: list[tuple[str, K]] = []
        ends = self._ends
        if ends is not None:
            horizon = now_ns - self.keep_expired_ns
            due: dict[K, None] = {}
            while ends and ends[0][0] <= horizon:
                until, _, addr = heapq.heappop(ends)
                if self._due.get(addr) == until:  # else left behind by an earlier item
                    del self._due[addr]
                    due[addr] = None
            candidates = [(a, self._by_addr[a]) for a in due if a in self._by_addr]
        else:
            candidates = list(self._by_addr.items())
        for addr, entries in candidates:
            out.extend((name, addr) for name in self._prune(addr, entries, now_ns))
            if not entries:
                del self._by_addr[addr]
            elif ends is not None:  # made longer since it was scheduled, or other names
                self._schedule(addr, min(e[2] for e in entries))
        return out

    def next_expiry(self) -> int | None:
        ends = self._ends
        if ends is None:
            return min((e[2] for entries in self._by_addr.values() for e in entries),
                       default=None)
        while ends:
            until, _, addr = ends[0]
            entries = self._by_addr.get(addr)
            if self._due.get(addr) == until and entries:
                # The address's earliest end (entries made longer move it later).
                end = min(e[2] for e in entries)
                if end == until:
                    return until
                heapq.heappop(ends)
                del self._due[addr]
                self._schedule(addr, end)
                continue
            heapq.heappop(ends)  # left behind, or the address is gone
            if self._due.get(addr) == until:
                del self._due[addr]
        return None

    # -- looking up -----------------------------------------------------------------------
    def names(self, addr: K, at_ns: int) -> list[str]:
        """Names valid for the address at that time (the TTL's end included), each
        once, most recently answered first."""
        entries = self._by_addr.get(addr)
        if not entries:
            return []
        out: list[str] = []
        for name, start, end in reversed(entries):
            if start <= at_ns <= end and name not in out:
                out.append(name)
        return out

    def _names_index(self) -> dict[str, set[K]]:
        if self._by_name is None:
            raise TypeError("looking up by name needs DNSAnswers(index_names=True)")
        return self._by_name

    def name_count(self) -> int:
        return len(self._names_index())

    def knows(self, name: str) -> bool:
        return name in self._names_index()

    def known_names(self) -> Iterable[str]:
        return self._names_index().keys()

    def addresses_of(self, name: str) -> Iterable[K]:
        """The name's addresses in the table (expired ones until expire() drops them)."""
        return self._names_index().get(name, ())

    def expiries(self, name: str) -> dict[K, int]:
        """The name's addresses and when each expires."""
        out: dict[K, int] = {}
        for addr in self._names_index().get(name, ()):
            out[addr] = max(e[2] for e in self._by_addr[addr] if e[0] == name)
        return out

    def addresses(self, name: str, now_ns: int) -> Iterator[K]:
        """The name's addresses live at now_ns (their TTL not yet over)."""
        for addr in self._names_index().get(name, ()):
            if any(e[0] == name and e[2] > now_ns for e in self._by_addr[addr]):
                yield addr

"""Writes compiled policy into the BPF maps of bpf/policy.h, never failing open.

An update goes in an order under which every packet meets either the old policy or
the new one, or something stricter than both:
  1. new and changed deny entries, then allow entries, then ipcache entries;
  2. endpoint flags that only add enforcement (a flag that goes away stays for now);
  3. the policy revision goes up, so established directions are checked again;
  4. stale allow entries, stale ipcache entries, then stale deny entries go;
  5. endpoint flags take their final values; the revision goes up again.
If a write fails half-way, the previous state is written back the same way.
"""
from __future__ import annotations

import ctypes
import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from .compile import PolicyKey
from .ipcache import IPKey

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpEntry:
    ep_id: int
    flags: int = 0
    ingress_set: int = 0
    egress_set: int = 0


@dataclass
class MapState:
    ipcache: dict[IPKey, int] = field(default_factory=dict)
    allow: dict[PolicyKey, tuple[int, int]] = field(default_factory=dict)
    deny: dict[PolicyKey, tuple[int, int]] = field(default_factory=dict)
    endpoints: dict[int, EpEntry] = field(default_factory=dict)  # by host-side ifindex

    def copy(self) -> "MapState":
        return MapState(dict(self.ipcache), dict(self.allow), dict(self.deny), dict(self.endpoints))


class Tables(Protocol):
    """The map operations the writer needs (BPF maps, or dicts in tests)."""

    def set(self, table: str, key: Any, value: Any) -> None: ...
    def delete(self, table: str, key: Any) -> None: ...
    def set_revision(self, revision: int) -> None: ...


class MapWriter:
    TABLES = ("deny", "allow", "ipcache")

    def __init__(self, tables: Tables) -> None:
        self.tables = tables
        self.current = MapState()
        self.revision = 0
        self._lock = threading.Lock()  # endpoint entries are also written at attach time

    def _set(self, table: str, key: Any, value: Any) -> None:
        self.tables.set(table, key, value)
        getattr(self.current, table)[key] = value

    def _delete(self, table: str, key: Any) -> None:
        try:
            self.tables.delete(table, key)
        except KeyError:
            pass
        getattr(self.current, table).pop(key, None)

    def _bump(self) -> None:
        self.revision += 1
        self.tables.set_revision(self.revision)

    def apply(self, new: MapState) -> None:
        with self._lock:
            old = self.current.copy()
            try:
                self._apply(new)
            except Exception:
                log.exception("writing policy maps failed; restoring the previous policy")
                self._apply(old)
                raise

    def _apply(self, new: MapState) -> None:
        cur = self.current
        for name in self.TABLES:
            want, have = getattr(new, name), getattr(cur, name)
            for k, v in want.items():
                if have.get(k) != v:
                    self._set(name, k, v)
        for ifx, ep in new.endpoints.items():
            old = cur.endpoints.get(ifx)
            if old is None or old.ep_id != ep.ep_id:
                self._set("endpoints", ifx, ep)
            elif old != ep:
                # Only add enforcement now; what goes away goes after the entries.
                self._set("endpoints", ifx, EpEntry(ep.ep_id, old.flags | ep.flags,
                                                    ep.ingress_set, ep.egress_set))
        self._bump()
        for name in ("allow", "ipcache", "deny"):
            want, have = getattr(new, name), getattr(cur, name)
            for k in [k for k in have if k not in want]:
                self._delete(name, k)
        for ifx in [i for i in cur.endpoints if i not in new.endpoints]:
            self._delete("endpoints", ifx)
        for ifx, ep in new.endpoints.items():
            if cur.endpoints.get(ifx) != ep:
                self._set("endpoints", ifx, ep)
        self._bump()

    def apply_changes(self, sets: dict[str, dict[Any, Any]], dels: dict[str, set[Any]]) -> None:
        """Writes a few entries (sets, deletes per table) in apply()'s order, without
        comparing whole states; restores what was there if a write fails."""
        with self._lock:
            before: dict[str, dict[Any, Any]] = {}
            for name in self.TABLES:
                have = getattr(self.current, name)
                before[name] = {k: have.get(k) for k in (*sets.get(name, ()),
                                                         *dels.get(name, ()))}
            try:
                for name in self.TABLES:  # deny, allow, ipcache
                    for k, v in sets.get(name, {}).items():
                        self._set(name, k, v)
                self._bump()
                for name in ("allow", "ipcache", "deny"):
                    for k in dels.get(name, ()):
                        self._delete(name, k)
                self._bump()
            except Exception:
                log.exception("writing policy maps failed; restoring the previous entries")
                for name in self.TABLES:
                    for k, v in before[name].items():
                        if v is None:
                            self._delete(name, k)
                        else:
                            self._set(name, k, v)
                self._bump()
                raise

    def set_endpoint(self, ifindex: int, ep: EpEntry | None) -> None:
        """An interface about to get (or just rid of) the programs."""
        with self._lock:
            if ep is None:
                self._delete("endpoints", ifindex)
            else:
                self._set("endpoints", ifindex, ep)
            # The datapath caches an endpoint's enforcement per connection until the
            # revision changes (directions left over from an earlier interface with
            # this ifindex must see the new entry).
            self._bump()


class BPFTables:
    """Tables backed by the datapath's BPF maps (bcc)."""

    NAMES = {"allow": "policy_allow", "deny": "policy_deny", "ipcache": "ipcache",
             "endpoints": "ep_map"}

    def __init__(self, datapath: Any) -> None:
        self.datapath = datapath
        self._t = {k: datapath.table(v) for k, v in self.NAMES.items()}

    def _key(self, table: str, key: Any) -> Any:
        t = self._t[table]
        if table == "endpoints":
            return t.Key(key)
        k = t.Key()
        if table == "ipcache":
            k.prefixlen = 32 + key.bits
            k.family = key.family
            ctypes.memmove(ctypes.addressof(k.addr), key.addr, 16)
            return k
        k.prefixlen = key.prefixlen
        k.ep_id = key.ep_id
        k.dir = key.direction
        k.identity = key.identity
        k.proto = key.protocol
        k.dport = socket.htons(key.port)
        return k

    def _value(self, table: str, value: Any) -> Any:
        t = self._t[table]
        v = t.Leaf()
        if table == "endpoints":
            v.ep_id, v.flags = value.ep_id, value.flags
            v.ingress_set, v.egress_set = value.ingress_set, value.egress_set
        elif table == "ipcache":
            v.identity = value
        else:
            v.set_id, v.match_type = value
        return v

    def set(self, table: str, key: Any, value: Any) -> None:
        self._t[table][self._key(table, key)] = self._value(table, value)

    def delete(self, table: str, key: Any) -> None:
        del self._t[table][self._key(table, key)]

    def set_revision(self, revision: int) -> None:
        self.datapath.set_policy_revision(revision)

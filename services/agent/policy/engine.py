"""The agent's policy repository and what keeps the datapath in step with it.

Policies come from the admin API (`webb policy apply`) or from files in a watched
directory. Any change to them, to the endpoints or to the nodes recompiles the
policy of every local endpoint and writes the difference into the BPF maps
(maps.py), without restarting anything. A batch of documents is applied whole or
not at all: a malformed document, or maps that cannot take the result, leave the
enforced policy as it was.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable

from ..pipeline.flow_wire import POLICY, ld, s, vi
from ..stores.endpoints import Endpoint, EndpointRegistry, NodeInfo
from ..stores.identities import RESERVED
from .compile import ClusterView, Compiled, Compiler, EndpointPolicy, PolicySets
from .ipcache import CIDRIdentities, IPKey, PrefixLookup, build
from .maps import BPFTables, EpEntry, MapState, MapWriter, Tables
from .fqdn import FQDNStore
from .model import KIND_CCNP, DNSRule, Policy, PolicyError, normalize_kind, parse_documents

log = logging.getLogger(__name__)

POLICY_FILE_SUFFIXES = (".yaml", ".yml", ".json")

# DNS answers learned within this long of each other share one recompile.
FQDN_COALESCE_S = 0.002
# How often the connections of expired toFQDNs addresses kept for them are looked at.
FQDN_KEPT_CHECK_S = 5.0


class NullTables:
    """Tables for an agent without a datapath (and for tests)."""

    def __init__(self) -> None:
        self.maps: dict[str, dict[Any, Any]] = {}
        self.revision = 0

    def set(self, table: str, key: Any, value: Any) -> None:
        self.maps.setdefault(table, {})[key] = value

    def delete(self, table: str, key: Any) -> None:
        del self.maps.setdefault(table, {})[key]

    def set_revision(self, revision: int) -> None:
        self.revision = revision


class PolicyEngine:
    def __init__(self, registry: EndpointRegistry, node_ips: Iterable[str] = (),
                 cluster: str = "default", allow_localhost: bool = True,
                 tables: Tables | None = None, fqdn_min_ttl: float = 0.0,
                 fqdn_idle_grace: float = 0.0) -> None:
        self.registry = registry
        self.node_ips = set(node_ips)
        self.cluster = cluster
        self.sets = PolicySets()
        self.cidr_ids = CIDRIdentities()
        self.compiler = Compiler(self.sets, self.cidr_ids, allow_localhost)
        self.writer = MapWriter(tables or NullTables())
        self.policies: dict[tuple[str, str, str], Policy] = {}
        self.revision = 1  # like Cilium's repository revision
        self.compiled = Compiled({}, {}, {}, {})
        self.attached: dict[str, int] = {}  # host-side interface -> ifindex
        self.lookup = PrefixLookup({})
        self._ip_lookup = PrefixLookup({})  # the whole ipcache, as the datapath has it
        self._cidr_eps: dict[int, Endpoint] = {}
        self._wire: dict[tuple[int, int], bytes] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_interface: dict[str, Endpoint] = {}
        self.on_change: Callable[[Policy, bool], None] | None = None  # (policy, deleted)
        self.fqdn = FQDNStore(fqdn_min_ttl)
        self._fqdn_wake = asyncio.Event()
        self._fqdn_task: asyncio.Task[None] | None = None
        self._fqdn_batch: asyncio.Future[None] | None = None
        self._cidr_id_set: set[int] = set()  # the CIDR identities of self.compiled
        self.fqdn_idle_grace = fqdn_idle_grace
        self.fqdn_kept_checks = 0  # looks at the kept addresses' connections (status)
        self._datapath: Any = None  # asked which kept addresses connections still use

    # -- wiring ------------------------------------------------------------------------
    def bind_datapath(self, datapath: Any) -> None:
        """Writes into the datapath's maps from now on; hooks its attach and detach."""
        self.writer = MapWriter(BPFTables(datapath))
        self._datapath = datapath
        datapath.before_attach = self.before_attach
        datapath.after_detach = self.after_detach
        self._recompile()

    def _local_by_interface(self, ifname: str) -> Endpoint | None:
        # A snapshot taken on the event loop: the netlink thread reads it too.
        return self._by_interface.get(ifname)

    def _snapshot_interfaces(self) -> None:
        self._by_interface = {ep.interface: ep for ep in self.registry.list()
                              if self.registry.is_local(ep)}

    def _ep_entry(self, ep: Endpoint) -> EpEntry:
        pol = self.compiled.endpoints.get(ep.id) or EndpointPolicy(ep.id)
        return EpEntry(ep.id, pol.flags, pol.ingress_set, pol.egress_set)

    def before_attach(self, ifname: str, ifindex: int) -> None:
        """Netlink thread: the endpoint's enforcement goes in before its programs."""
        ep = self._local_by_interface(ifname)
        self.attached[ifname] = ifindex
        if ep is not None:
            self.writer.set_endpoint(ifindex, self._ep_entry(ep))

    def after_detach(self, ifname: str, ifindex: int) -> None:
        if self.attached.get(ifname) == ifindex:
            del self.attached[ifname]
        self.writer.set_endpoint(ifindex, None)

    async def on_endpoint(self, old: Endpoint | None, new: Endpoint | None) -> None:
        """Registry listener; subscribed before the one that attaches programs."""
        async with self._lock:
            self._recompile()

    def on_nodes(self, nodes: list[NodeInfo]) -> None:
        """Node (and namespace label) changes: recompiled in the background."""
        task = asyncio.get_running_loop().create_task(self._recompile_locked())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recompile_locked(self) -> None:
        async with self._lock:
            self._recompile()

    # -- compiling -----------------------------------------------------------------------
    def _view(self, policies: Iterable[Policy]) -> ClusterView:
        idents: dict[int, tuple[str, ...]] = {n: l for n, l in RESERVED.items()}
        local: dict[int, tuple[str, ...]] = {}
        for ep in self.registry.list():
            idents[ep.identity] = ep.identity_labels
            if self.registry.is_local(ep) and ep.id:
                local[ep.id] = ep.identity_labels
        selectors = self._fqdn_selectors(policies)
        self.fqdn.set_selectors(selectors)
        return ClusterView(idents, local, getattr(self.registry, "namespaces", {}), self.cluster,
                           {r: self.fqdn.selected_nets(r) for r in selectors},
                           {r: self.fqdn.kept_nets(r) for r in selectors})

    # -- toFQDNs ---------------------------------------------------------------------------
    def _fqdn_selectors(self, policies: Iterable[Policy] | None = None) -> set[DNSRule]:
        if policies is None:
            policies = self.policies.values()
        return {peer.fqdn for p in policies for spec in p.specs
                for rule in spec.rules for peer in rule.peers or () if peer.fqdn is not None}

    async def learn_dns(self, ep_id: int, answer: Any) -> None:
        """An answer the DNS proxy let through (l7.dns.DNSMessage): its addresses are
        allowed to toFQDNs selectors of its names once this returns (the proxy holds
        the answer back until then, so the client's next connection finds them)."""
        if not answer.ips:
            return
        self.fqdn.set_selectors(self._fqdn_selectors())
        names = [n for n in (answer.query, *answer.cnames) if self.fqdn.selecting(n)]
        if not names:
            return
        self.fqdn.learn(names, answer.ips, answer.ttl)
        if self.fqdn.changed():  # this answer's addresses, or others' not yet in the maps
            await self._fqdn_recompile()
        self._ensure_expiry()

    async def _fqdn_recompile(self) -> None:
        """Returns once an update that saw everything learned so far is in the maps.
        Answers arriving within FQDN_COALESCE_S of each other (a burst of lookups) share
        one update instead of queueing one each on the event loop."""
        fut = self._fqdn_batch
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = self._fqdn_batch = loop.create_future()
            # Retrieved here so a failed batch that nobody awaits any more is not logged.
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            task = loop.create_task(self._fqdn_flush(fut))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.shield(fut)

    async def _fqdn_flush(self, fut: asyncio.Future[None]) -> None:
        await asyncio.sleep(FQDN_COALESCE_S)
        async with self._lock:
            # Learned from now on goes into the next batch; all before is in this one.
            self._fqdn_batch = None
            try:
                self._fqdn_update()
            except Exception as e:
                fut.set_exception(e)
                return
            fut.set_result(None)

    def _fqdn_update(self) -> None:
        """Writes the entries of the addresses whose toFQDNs selection changed since the
        last compile or update: only theirs (an answer costs what its addresses need,
        not a recompile of every policy and every address learned before)."""
        nets = self.fqdn.take_changed()
        if not nets:
            return
        compiled = self.compiled
        if compiled.ctx is None:
            self._recompile()
            return
        upd = self.compiler.update_addresses(compiled, nets, self.fqdn.selects,
                                             self.fqdn.keeps)
        # The prefix's ipcache entry, unless an endpoint or a node has that address
        # (they keep their identity, as build() gives it them).
        cur = self.writer.current.ipcache
        ip_set: dict[IPKey, int] = {}
        ip_del: set[IPKey] = set()
        for net, num in upd.cidrs_set.items():
            k = IPKey.of(net)
            have = cur.get(k)
            if have != num and (have is None or self.cidr_ids.network(have) is not None):
                ip_set[k] = num
        for net, num in upd.cidrs_del.items():
            k = IPKey.of(net)
            if cur.get(k) == num:
                ip_del.add(k)
        try:
            self.writer.apply_changes(
                {"deny": upd.deny_set, "allow": upd.allow_set, "ipcache": ip_set},
                {"allow": upd.allow_del, "ipcache": ip_del, "deny": upd.deny_del})
        except Exception:
            self._recompile()  # compiled was changed in place: back in step with the maps
            raise
        for k, num in ip_set.items():
            self._ip_lookup.set(k, num)
            self.lookup.set(k, num)
        for k in ip_del:
            self._ip_lookup.delete(k)
            self.lookup.delete(k)
        self._cidr_id_set.difference_update(upd.cidrs_del.values())
        self._cidr_id_set.update(upd.cidrs_set.values())

    def _ensure_expiry(self) -> None:
        self._fqdn_wake.set()
        if self._fqdn_task is None or self._fqdn_task.done():
            self._fqdn_task = asyncio.get_running_loop().create_task(self._expire_loop())

    async def _expire_loop(self) -> None:
        """Updates the maps when learned addresses expire (their TTL, at least the
        minimum), and when the connections of expired ones kept for them are gone."""
        next_check = 0.0
        while True:
            self._fqdn_wake.clear()
            when = self.fqdn.next_expiry()
            if self.fqdn.kept() and self._datapath is not None:
                next_check = next_check or time.monotonic() + FQDN_KEPT_CHECK_S
                when = next_check if when is None else min(when, next_check)
            if when is None:
                await self._fqdn_wake.wait()
                continue
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
                # arrives when the event is already set (a test teardown hung here).
                async with asyncio.timeout(max(when - time.monotonic(), 0)):
                    await self._fqdn_wake.wait()
                continue  # something new was learned: look at the next expiry again
            except TimeoutError:
                pass
            if next_check and time.monotonic() >= next_check:
                next_check = 0.0
                await self._check_kept()
            if self.fqdn.expire() or self.fqdn.changed():
                try:
                    await self._fqdn_recompile()
                except Exception:
                    log.exception("removing expired toFQDNs addresses failed")

    async def _check_kept(self) -> None:
        """Expired addresses kept for their connections go once no connection of a
        local endpoint uses them (Cilium's DNS zombies, checked against its conntrack)."""
        kept = self.fqdn.kept()
        if not kept:
            return
        packed = {n.network_address.packed.ljust(16, b"\0"): n for n in kept}
        try:
            live = await asyncio.get_running_loop().run_in_executor(
                None, self._datapath.live_peers, set(packed))
        except Exception:
            log.exception("reading the connections of expired toFQDNs addresses failed")
            return
        self.fqdn.still_used({packed[a] for a in live}, self.fqdn_idle_grace)
        self.fqdn_kept_checks += 1

    def _compile(self, policies: Iterable[Policy]) -> tuple[Compiled, MapState]:
        self._snapshot_interfaces()
        policies = list(policies)
        compiled = self.compiler.compile(policies, self._view(policies))
        remote = [ip for n in self.registry.nodes if n.name != self.registry.node_name
                  for ip in n.ips]
        eps = [(ip, ep.identity) for ep in self.registry.list() for ip in ep.ips]
        ipcache = build(eps, self.node_ips, remote, compiled.cidrs.items())
        endpoints = {}
        for ifname, ifindex in list(self.attached.items()):
            ep = self._local_by_interface(ifname)
            if ep is not None:
                pol = compiled.endpoints.get(ep.id) or EndpointPolicy(ep.id)
                endpoints[ifindex] = EpEntry(ep.id, pol.flags, pol.ingress_set, pol.egress_set)
        return compiled, MapState(ipcache, compiled.allow, compiled.deny, endpoints)

    def _recompile(self) -> None:
        compiled, state = self._compile(self.policies.values())
        self.writer.apply(state)
        self._installed(compiled, state)

    def _installed(self, compiled: Compiled, state: MapState) -> None:
        if (len(compiled.allow), len(compiled.deny), len(compiled.endpoints)) != (
                len(self.compiled.allow), len(self.compiled.deny), len(self.compiled.endpoints)):
            log.info("policy maps: %d allow, %d deny, %d ipcache entries; %d policed endpoints",
                     len(state.allow), len(state.deny), len(state.ipcache),
                     len(compiled.endpoints))
        self.compiled = compiled
        self.fqdn.take_changed()  # every learned address is in what was just installed
        self._ip_lookup = PrefixLookup(state.ipcache)
        self._cidr_id_set = cidr_ids = set(compiled.cidrs.values())
        cidr_entries = {k: v for k, v in state.ipcache.items() if v in cidr_ids}
        self.lookup = PrefixLookup(cidr_entries)

    # -- the repository ------------------------------------------------------------------
    def list(self) -> list[Policy]:
        return sorted(self.policies.values(), key=lambda p: (p.namespace, p.name, p.kind))

    async def apply_text(self, text: str, source: str = "api") -> list[Policy]:
        """Parses and applies a batch of documents; raises PolicyError, changing nothing."""
        return await self.apply(parse_documents(text), source)

    async def apply(self, policies: list[Policy], source: str = "api",
                    replace_source: bool = False) -> list[Policy]:
        async with self._lock:
            new = dict(self.policies)
            if replace_source:  # a file's policies replace what the file said before
                for k in [k for k, p in new.items() if p.source == source]:
                    del new[k]
            changed: list[Policy] = []
            for p in policies:
                old = self.policies.get(p.key)
                if old is not None and old.document == p.document and old.source == source:
                    new[p.key] = old
                    continue
                self.revision += 1
                p = replace(p, revision=self.revision, source=source)
                new[p.key] = p
                changed.append(p)
            removed = [p for k, p in self.policies.items() if k not in new]
            if not changed and not removed:
                return [new[p.key] for p in policies]
            if removed:
                self.revision += 1
            self._install(new)
        for p in changed:
            self._notify(p, False)
        for p in removed:
            self._notify(p, True)
        return [new[p.key] for p in policies]

    def _install(self, policies: dict[tuple[str, str, str], Policy]) -> None:
        compiled, state = self._compile(policies.values())
        try:
            self.writer.apply(state)
        except Exception as e:
            raise PolicyError(f"the datapath could not take the policy ({e}); "
                              "the previous policy stays in force") from None
        self.policies = policies
        self._installed(compiled, state)

    async def delete(self, name: str, namespace: str = "", kind: str = "") -> list[Policy]:
        """Deletes policies by name (and namespace, and kind if given)."""
        kind = normalize_kind(kind) if kind else ""
        async with self._lock:
            gone = [p for p in self.policies.values()
                    if p.name == name and (not kind or p.kind == kind)
                    and (p.namespace == (namespace or "default") or p.kind == KIND_CCNP
                         and not namespace)]
            if not gone:
                return []
            self.revision += 1
            keys = {p.key for p in gone}
            self._install({k: p for k, p in self.policies.items() if k not in keys})
        for p in gone:
            self._notify(p, True)
        return gone

    def _notify(self, p: Policy, deleted: bool) -> None:
        if self.on_change is not None:
            try:
                self.on_change(p, deleted)
            except Exception:
                log.exception("policy change listener failed")
        log.info("policy %s %s %s (revision %d)", p.kind, p.ref,
                 "deleted" if deleted else "applied", self.revision)

    # -- what others read ------------------------------------------------------------------
    def endpoint_status(self, ep: Endpoint) -> tuple[bool, bool, tuple[str, ...], tuple[str, ...]]:
        """(ingress enforced, egress enforced, ingress policies, egress policies)."""
        pol = self.compiled.endpoints.get(ep.id) if self.registry.is_local(ep) else None
        sel = self.compiled.selected_by.get(ep.id, ((), ())) if pol else ((), ())
        return (bool(pol and pol.ingress_enforced), bool(pol and pol.egress_enforced),
                sel[0], sel[1])

    def policies_field(self, set_id: int, field: int) -> bytes:
        """A set's policies as repeated flow.Policy field `field` of a Flow (wire bytes)."""
        w = self._wire.get((set_id, field))
        if w is None:
            w = b"".join(ld(field, s(POLICY.name, r.name) + s(POLICY.namespace, r.namespace)
                            + b"".join(s(POLICY.labels, x) for x in r.labels)
                            + vi(POLICY.revision, r.revision) + s(POLICY.kind, r.kind))
                         for r in self.sets.get(set_id))
            self._wire[(set_id, field)] = w
        return w

    def cidr_endpoint(self, family: int, packed: bytes) -> Endpoint | None:
        """The CIDR identity of a world address, as flows should show it."""
        num = self.lookup.lookup(family, packed)
        if num not in self._cidr_id_set:
            return None
        ep = self._cidr_eps.get(num)
        if ep is None:
            net = self.cidr_ids.network(num)
            assert net is not None
            ep = Endpoint(name="", namespace="", labels=(), ips=(), identity=num,
                          identity_labels=CIDRIdentities.labels(net)).with_wire()
            self._cidr_eps[num] = ep
        return ep

    def identity_of(self, ip: str) -> int:
        """The security identity the datapath gives an address (world if none)."""
        return self._ip_lookup.lookup(*_ip_key(ip))

    def local_identities(self) -> dict[int, tuple[str, ...]]:
        return {num: CIDRIdentities.labels(net) for net, num in self.compiled.cidrs.items()}

    def ipcache(self) -> dict[IPKey, int]:
        return dict(self.writer.current.ipcache)


@functools.lru_cache(maxsize=4096)
def _ip_key(ip: str) -> tuple[int, bytes]:
    """(version, address padded to 16 bytes); the L7 proxy asks per request."""
    a = ipaddress.ip_address(ip)
    return a.version, a.packed.ljust(16, b"\0")


# -- policy files ---------------------------------------------------------------------------

async def watch_policy_dir(path: str, engine: PolicyEngine, interval: float = 0.5) -> None:
    """Applies every policy file of a directory, and each change to them.

    A file's policies are replaced as a whole when it changes; a file that goes away
    takes its policies with it; a malformed file is logged and its last good state kept.
    """
    last: dict[str, tuple[float, int]] = {}
    while True:
        try:
            names = sorted(n for n in os.listdir(path) if n.endswith(POLICY_FILE_SUFFIXES)
                           and not n.startswith("."))
        except FileNotFoundError:
            names = []
        current = {}
        for n in names:
            f = os.path.join(path, n)
            try:
                st = os.stat(f)
            except FileNotFoundError:
                continue
            current[f] = (st.st_mtime, st.st_size)
        for f in sorted(set(last) - set(current)):
            await engine.apply([], source=f, replace_source=True)
            log.info("policy file %s removed: its policies are deleted", f)
        for f, sig in current.items():
            if last.get(f) == sig:
                continue
            try:
                text = Path(f).read_text(encoding="utf-8")
                pols = parse_documents(text) if text.strip() else []
                await engine.apply(pols, source=f, replace_source=True)
                log.info("policy file %s: %d policies", f, len(pols))
            except (PolicyError, OSError, UnicodeDecodeError) as e:
                log.error("policy file %s rejected, keeping its previous policies: %s", f, e)
        last = current
        await asyncio.sleep(interval)

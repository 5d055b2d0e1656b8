"""Policies -> the entries of the datapath's policy maps (see bpf/policy.h).

For each local endpoint a policy selects, each rule becomes entries keyed by
(endpoint, direction, remote identity, protocol, port prefix): identity 0 stands for
every identity, a missing protocol for every protocol, a port range for as many
aligned prefixes as it takes. Entries of several policies with the same key share
one "policy set" id, from which flows name the policies (allowed_by / denied_by).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from ..stores.identities import (RESERVED, RESERVED_HEALTH, RESERVED_HOST, RESERVED_INGRESS,
                                 RESERVED_INIT, RESERVED_KUBE_APISERVER, RESERVED_REMOTE_NODE,
                                 RESERVED_UNMANAGED, RESERVED_WORLD, RESERVED_WORLD_IPV4,
                                 RESERVED_WORLD_IPV6)
from .ipcache import CIDRIdentities
from .model import (ANY_PROTOCOLS, CIDR, EGRESS, INGRESS, DNSRule, HTTPRule, Network, Peer,
                    Policy, PortRange)
from .selector import CLUSTER_KEY, NAMESPACE_KEY, LabelSet, namespace_labels

DIR_INGRESS, DIR_EGRESS = 0, 1
DIRECTIONS = {INGRESS: DIR_INGRESS, EGRESS: DIR_EGRESS}

# bpf/policy.h ep_info.flags
EP_ENFORCE_INGRESS, EP_ENFORCE_EGRESS = 1, 2
EP_POLICY_INGRESS, EP_POLICY_EGRESS = 4, 8
EP_PROXY_EGRESS = 16  # bpf/policy.h: egress L7 rules, the proxy's answers may come back

# Cilium's policy match types (flow.policy_match_type).
MATCH_NONE, MATCH_L3_ONLY, MATCH_L3_L4, MATCH_L4_ONLY, MATCH_ALL = 0, 1, 2, 3, 4
# bpf/policy.h: set on allow entries whose connections go through the L7 proxy.
MATCH_PROXY = 0x80
# bpf/policy.h: set on allow entries that allow established directions only (toFQDNs
# addresses whose answer expired while connections may still use them).
MATCH_ESTABLISHED = 0x40

ANY_IDENTITY = 0

_ENTITY_IDS = {
    "host": (RESERVED_HOST,), "remote-node": (RESERVED_REMOTE_NODE,), "init": (RESERVED_INIT,),
    "health": (RESERVED_HEALTH,), "unmanaged": (RESERVED_UNMANAGED,),
    "kube-apiserver": (RESERVED_KUBE_APISERVER,), "ingress": (RESERVED_INGRESS,), "none": (),
}
_CLUSTER_RESERVED = (RESERVED_HOST, RESERVED_REMOTE_NODE, RESERVED_INIT, RESERVED_HEALTH,
                     RESERVED_UNMANAGED, RESERVED_KUBE_APISERVER, RESERVED_INGRESS)


@dataclass(frozen=True, order=True)
class PolicyKey:
    ep_id: int
    direction: int        # DIR_INGRESS or DIR_EGRESS
    identity: int         # 0: any identity
    protocol: int         # 0: any protocol
    port: int = 0
    port_bits: int = 0    # 0: every port; 16: one port; else a range prefix

    @property
    def prefixlen(self) -> int:
        """Bits of the BPF LPM key that count (after the prefixlen field)."""
        if not self.protocol:
            return 96
        return 104 if not self.port_bits else 112 + self.port_bits

    def match_type(self) -> int:
        if self.identity:
            return MATCH_L3_L4 if self.protocol else MATCH_L3_ONLY
        return MATCH_L4_ONLY if self.protocol else MATCH_ALL


@dataclass(frozen=True)
class PolicyRef:
    """What a flow says about a policy (flow.Policy)."""

    kind: str
    namespace: str
    name: str
    revision: int
    labels: tuple[str, ...]


class PolicySets:
    """Interned sets of policies; entries and flows carry the set's number.

    Numbers are never reused, so a flow read long after a policy changed still
    names the policies that decided it.
    """

    def __init__(self) -> None:
        self._by_refs: dict[frozenset[PolicyRef], int] = {frozenset(): 0}
        self._by_id: dict[int, tuple[PolicyRef, ...]] = {0: ()}

    def intern(self, refs: Iterable[PolicyRef]) -> int:
        key = frozenset(refs)
        num = self._by_refs.get(key)
        if num is None:
            num = len(self._by_id)
            self._by_refs[key] = num
            self._by_id[num] = tuple(sorted(key, key=lambda r: (r.namespace, r.name, r.kind)))
        return num

    def get(self, num: int) -> tuple[PolicyRef, ...]:
        return self._by_id.get(num, ())


@dataclass(frozen=True)
class EndpointPolicy:
    ep_id: int
    flags: int = 0
    ingress_set: int = 0  # the policies behind default deny, per direction
    egress_set: int = 0

    @property
    def ingress_enforced(self) -> bool:
        return bool(self.flags & EP_ENFORCE_INGRESS)

    @property
    def egress_enforced(self) -> bool:
        return bool(self.flags & EP_ENFORCE_EGRESS)


@dataclass
class ClusterView:
    """What the compiler needs to know about the cluster."""

    identities: dict[int, tuple[str, ...]]            # every known identity and its labels
    local: dict[int, tuple[str, ...]]                 # local endpoint id -> its identity labels
    namespace_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    cluster: str = "default"
    # toFQDNs: the addresses DNS answers gave for each selector (policy/fqdn.py).
    fqdns: Mapping[DNSRule, frozenset[Network]] = field(default_factory=dict)
    # ... and those whose answers expired, kept for connections already established
    fqdn_zombies: Mapping[DNSRule, frozenset[Network]] = field(default_factory=dict)


@dataclass(frozen=True)
class L7Entry:
    """What the proxy allows on one policed port for some identities: a rule's HTTP
    or DNS rules (both None: every request, from a rule without L7 rules on that port)."""

    identities: frozenset[int]  # ANY_IDENTITY in it: every identity
    http: tuple[HTTPRule, ...] | None
    policy: "PolicyRef"
    dns: tuple[DNSRule, ...] | None = None

    def covers(self, identity: int) -> bool:
        return identity in self.identities or ANY_IDENTITY in self.identities


@dataclass
class RuleRecord:
    """A rule as the compiler met it, kept so that an address's entries can be worked
    out again without compiling everything (Compiler.update_addresses)."""

    rule: Any
    eps: list[int]
    ports: list[tuple[int, int, int]]   # _port_keys(rule.ports)
    ref: PolicyRef
    ids: set[int]                       # the identities it covers now (allow rules: L7 entries)
    l7: list[tuple[tuple[int, ...], int]]  # (protocols, port) of its ports with L7 rules
    zids: set[int] = field(default_factory=set)  # established connections only (expired toFQDNs)


@dataclass
class DeltaContext:
    """What a compile leaves for updates of learned (toFQDNs) addresses."""

    rules: list[RuleRecord]
    prefixes: set[Network]                          # prefixes the policies name
    cluster: str
    l7_ports: set[tuple[int, int, int]]
    udp_ports: set[tuple[int, int, int]]
    # CIDR identity -> its allow / deny keys
    allow_by_id: dict[int, set[PolicyKey]] = field(default_factory=dict)
    deny_by_id: dict[int, set[PolicyKey]] = field(default_factory=dict)


@dataclass
class AddressUpdate:
    """What update_addresses changed: map entries to set and to delete, prefixes that
    gained or lost their CIDR identity."""

    allow_set: dict[PolicyKey, tuple[int, int]]
    allow_del: set[PolicyKey]
    deny_set: dict[PolicyKey, tuple[int, int]]
    deny_del: set[PolicyKey]
    cidrs_set: dict[Network, int]
    cidrs_del: dict[Network, int]
    l7: bool  # the L7 entries changed (compiled.l7 / l7_udp were rebuilt)


@dataclass
class Compiled:
    allow: dict[PolicyKey, tuple[int, int]]  # -> (policy set, match type [| MATCH_PROXY])
    deny: dict[PolicyKey, tuple[int, int]]
    endpoints: dict[int, EndpointPolicy]
    # Which policies select each local endpoint, per direction (for the admin API).
    selected_by: dict[int, tuple[tuple[str, ...], tuple[str, ...]]]
    cidrs: dict[Network, int] = field(default_factory=dict)  # policy prefixes in use
    # (endpoint id, direction, TCP port) with HTTP or DNS rules -> every allow rule on it;
    # l7_udp the same for DNS over UDP.
    l7: dict[tuple[int, int, int], tuple[L7Entry, ...]] = field(default_factory=dict)
    l7_udp: dict[tuple[int, int, int], tuple[L7Entry, ...]] = field(default_factory=dict)  # DNS
    ctx: DeltaContext | None = None


def port_prefixes(start: int, end: int) -> list[tuple[int, int]]:
    """[start, end] as aligned (port, prefix bits) blocks, fewest first to last."""
    out = []
    while start <= end:
        size = start & -start if start else 1 << 16
        while size > end - start + 1:
            size >>= 1
        out.append((start, 16 - size.bit_length() + 1))
        start += size
    return out


def _extended(labels: tuple[str, ...], ns_labels: Mapping[str, Mapping[str, str]]) -> LabelSet:
    ns = next((lbl.split("=", 1)[1] for lbl in labels
               if lbl.startswith(f"k8s:{NAMESPACE_KEY}=")), None)
    if ns is None:
        return LabelSet(labels)
    return LabelSet((*labels, *namespace_labels(ns, ns_labels.get(ns, {}))))


def cidr_prefixes(policies: Iterable[Policy]) -> list[Network]:
    """Every prefix policies name, excepts included: each needs an identity."""
    out: list[Network] = []
    for p in policies:
        for spec in p.specs:
            for rule in spec.rules:
                for peer in rule.peers or ():
                    if peer.cidr is not None:
                        out.append(peer.cidr.network)
                        out.extend(peer.cidr.excepts)
    return out


class Compiler:
    def __init__(self, sets: PolicySets, cidr_ids: CIDRIdentities,
                 allow_localhost: bool = True) -> None:
        self.sets = sets
        self.cidr_ids = cidr_ids
        self.allow_localhost = allow_localhost

    def compile(self, policies: Iterable[Policy], view: ClusterView) -> Compiled:
        policies = list(policies)
        learned = sorted({net for sel in (view.fqdns, view.fqdn_zombies)
                          for nets in sel.values() for net in nets},
                         key=lambda n: (n.version, n))
        cidrs = {net: self.cidr_ids.get(net) for net in [*cidr_prefixes(policies), *learned]}
        universe: dict[int, LabelSet] = {
            num: _extended(tuple(labels), view.namespace_labels)
            for num, labels in view.identities.items()}
        for num, labels in RESERVED.items():
            universe.setdefault(num, LabelSet(labels))
        cidr_nets = CIDRIndex()
        for net, num in cidrs.items():
            universe[num] = LabelSet(CIDRIdentities.labels(net))
            cidr_nets.add(net, num)
        local = {ep: _extended(labels, view.namespace_labels) for ep, labels in view.local.items()}

        allow_refs: dict[PolicyKey, set[PolicyRef]] = {}
        deny_refs: dict[PolicyKey, set[PolicyRef]] = {}
        zombie_refs: dict[PolicyKey, set[PolicyRef]] = {}
        flags: dict[int, int] = {}
        default_refs: dict[tuple[int, int], set[PolicyRef]] = {}
        selected_by: dict[int, tuple[set[str], set[str]]] = {}
        records: list[RuleRecord] = []
        l7_ports: set[tuple[int, int, int]] = set()  # TCP
        udp_ports: set[tuple[int, int, int]] = set()  # DNS over UDP
        proxied: set[PolicyKey] = set()
        for pol in policies:
            ref = PolicyRef(pol.kind, pol.namespace, pol.name, pol.revision, tuple(pol.labels()))
            for spec in pol.specs:
                eps = [ep for ep, ls in local.items() if spec.subject.matches(ls)]
                if not eps:
                    continue
                has = {DIR_INGRESS: spec.default_deny_ingress, DIR_EGRESS: spec.default_deny_egress}
                for rule in spec.rules:
                    has[DIRECTIONS[rule.direction]] = True
                for ep in eps:
                    sel = selected_by.setdefault(ep, (set(), set()))
                    for d, bit, enforce, dd in (
                            (DIR_INGRESS, EP_POLICY_INGRESS, EP_ENFORCE_INGRESS,
                             spec.default_deny_ingress),
                            (DIR_EGRESS, EP_POLICY_EGRESS, EP_ENFORCE_EGRESS,
                             spec.default_deny_egress)):
                        if has[d]:
                            flags[ep] = flags.get(ep, 0) | bit
                            sel[d].add(pol.ref if pol.kind != "NetworkPolicy"
                                       else f"{pol.ref} (NetworkPolicy)")
                        if dd:
                            flags[ep] = flags.get(ep, 0) | enforce
                            default_refs.setdefault((ep, d), set()).add(ref)
                for rule in spec.rules:
                    ids = self._identities(rule.peers, universe, cidr_nets, view.cluster,
                                           view.fqdns, cidrs)
                    zids = _fqdn_ids(rule.peers, view.fqdn_zombies, cidrs) - ids
                    if rule.deny:  # a deny keeps denying an expired address
                        ids |= zids
                        zids = set()
                    ports = _port_keys(rule.ports)
                    d = DIRECTIONS[rule.direction]
                    rec = RuleRecord(rule, eps, ports, ref, ids, [], zids)
                    records.append(rec)
                    if not rule.deny:
                        for pr in rule.ports or ():
                            if pr.http is None and pr.dns is None:
                                continue
                            protos = (6,) if pr.http is not None else (
                                (pr.protocol,) if pr.protocol else (6, 17))
                            rec.l7.append((protos, pr.start))
                            for ep in eps:
                                for proto in protos:
                                    (l7_ports if proto == 6 else udp_ports).add((ep, d, pr.start))
                    if ids:
                        _rule_entries(rec, ids, deny_refs if rule.deny else allow_refs, proxied)
                    if zids:
                        _rule_entries(rec, zids, zombie_refs, proxied)
        if self.allow_localhost:
            # Cilium's allow-localhost=always: the node may always reach its endpoints
            # (probes), unless a deny rule says otherwise.
            for ep, f in flags.items():
                if f & EP_ENFORCE_INGRESS:
                    allow_refs.setdefault(PolicyKey(ep, DIR_INGRESS, RESERVED_HOST, 0), set())
        for ep, d, _ in l7_ports | udp_ports:
            if d == DIR_EGRESS:
                flags[ep] = flags.get(ep, 0) | EP_PROXY_EGRESS
        endpoints = {}
        for ep, f in flags.items():
            endpoints[ep] = EndpointPolicy(
                ep, f, self.sets.intern(default_refs.get((ep, DIR_INGRESS), ())),
                self.sets.intern(default_refs.get((ep, DIR_EGRESS), ())))
        ctx = DeltaContext(records, set(cidr_prefixes(policies)), view.cluster, l7_ports,
                           udp_ports)
        allow = _allow_values(self.sets, allow_refs, zombie_refs, proxied)
        deny = {k: (self.sets.intern(v), k.match_type()) for k, v in deny_refs.items()}
        cidr_set = set(cidrs.values())
        for entries, by_id in ((allow, ctx.allow_by_id), (deny, ctx.deny_by_id)):
            for k in entries:
                if k.identity in cidr_set:
                    by_id.setdefault(k.identity, set()).add(k)
        return Compiled(
            allow=allow, l7=_l7_entries(records, l7_ports, 6),
            l7_udp=_l7_entries(records, udp_ports, 17), deny=deny, endpoints=endpoints,
            selected_by={ep: (tuple(sorted(i)), tuple(sorted(e)))
                         for ep, (i, e) in selected_by.items()},
            cidrs=cidrs, ctx=ctx)

    def update_addresses(self, compiled: Compiled, nets: Iterable[Network],
                         selects: Callable[[DNSRule, Network], bool],
                         keeps: Callable[[DNSRule, Network], bool] = lambda r, n: False
                         ) -> AddressUpdate:
        """The entries of learned addresses whose toFQDNs selection changed, worked out
        again from every rule for just their CIDR identities (what compile() gives
        them, without compiling the rest), and applied to `compiled`'s tables of
        entries and prefixes. The caller writes the returned changes to the maps
        (before, not after: compiled is changed in place)."""
        ctx = compiled.ctx
        assert ctx is not None
        nets = set(nets)
        selectors = {peer.fqdn for rec in ctx.rules for peer in rec.rule.peers or ()
                     if peer.fqdn is not None}
        fqdns = {r: frozenset(n for n in nets if selects(r, n)) for r in selectors}
        zombies = {r: frozenset(n for n in nets if keeps(r, n)) for r in selectors}
        cidrs_set: dict[Network, int] = {}
        cidrs_del: dict[Network, int] = {}
        for net in nets:
            num = self.cidr_ids.get(net)
            if net in ctx.prefixes or any(net in got for sel in (fqdns, zombies)
                                          for got in sel.values()):
                if compiled.cidrs.get(net) != num:
                    cidrs_set[net] = num
            elif net in compiled.cidrs:
                cidrs_del[net] = compiled.cidrs[net]
        cidrs = {**compiled.cidrs, **cidrs_set} if cidrs_set else compiled.cidrs
        live = {net: cidrs[net] for net in nets if net in cidrs and net not in cidrs_del}
        touched = {self.cidr_ids.get(net) for net in nets}
        universe = {num: LabelSet(CIDRIdentities.labels(net)) for net, num in live.items()}
        index = CIDRIndex()
        for net, num in live.items():
            index.add(net, num)
        allow_refs: dict[PolicyKey, set[PolicyRef]] = {}
        deny_refs: dict[PolicyKey, set[PolicyRef]] = {}
        zombie_refs: dict[PolicyKey, set[PolicyRef]] = {}
        proxied: set[PolicyKey] = set()
        l7_changed = False
        for rec in ctx.rules:
            ids = self._identities(rec.rule.peers, universe, index, ctx.cluster, fqdns,
                                   cidrs) & touched
            zids = _fqdn_ids(rec.rule.peers, zombies, cidrs) - ids
            if rec.rule.deny:
                ids |= zids
                zids = set()
            if rec.l7 and not rec.rule.deny:
                l7_changed |= ((rec.ids | rec.zids) & touched) != ids | zids
            rec.ids -= touched
            rec.ids |= ids
            rec.zids -= touched
            rec.zids |= zids
            if ids:
                _rule_entries(rec, ids, deny_refs if rec.rule.deny else allow_refs, proxied)
            if zids:
                _rule_entries(rec, zids, zombie_refs, proxied)
        out = AddressUpdate({}, set(), {}, set(), cidrs_set, cidrs_del, l7_changed)
        for new, table, by_id, want_set, want_del in (
                (_allow_values(self.sets, allow_refs, zombie_refs, proxied), compiled.allow,
                 ctx.allow_by_id, out.allow_set, out.allow_del),
                ({k: (self.sets.intern(v), k.match_type()) for k, v in deny_refs.items()},
                 compiled.deny, ctx.deny_by_id, out.deny_set, out.deny_del)):
            for num in touched:
                for k in by_id.pop(num, ()):
                    if k not in new:
                        want_del.add(k)
            for k, v in new.items():
                by_id.setdefault(k.identity, set()).add(k)
                if table.get(k) != v:
                    want_set[k] = v
            for k in want_del:
                del table[k]
            table.update(want_set)
        for net in cidrs_del:
            del compiled.cidrs[net]
        compiled.cidrs.update(cidrs_set)
        if l7_changed:
            compiled.l7 = _l7_entries(ctx.rules, ctx.l7_ports, 6)
            compiled.l7_udp = _l7_entries(ctx.rules, ctx.udp_ports, 17)
        return out

    def _identities(self, peers: tuple[Peer, ...] | None, universe: dict[int, LabelSet],
                    cidr_nets: "CIDRIndex", cluster: str,
                    fqdns: Mapping[DNSRule, frozenset[Network]] | None = None,
                    cidrs: Mapping[Network, int] | None = None) -> set[int]:
        if peers is None:
            return {ANY_IDENTITY}
        out: set[int] = set()
        for peer in peers:
            if peer.selector is not None:
                if not peer.selector.requirements:
                    return {ANY_IDENTITY}  # a cluster-wide {}: every identity
                out.update(n for n, ls in universe.items() if peer.selector.matches(ls))
            elif peer.cidr is not None:
                out.update(cidr_nets.inside(peer.cidr))
            elif peer.fqdn is not None:
                # Only what DNS answers gave (none yet: nothing, default deny stays).
                out.update(cidrs[n] for n in (fqdns or {}).get(peer.fqdn, ()) if cidrs)
            else:
                e = peer.entity
                if e == "all":
                    return {ANY_IDENTITY}
                if e in ("world", "world-ipv4", "world-ipv6"):
                    out.update((RESERVED_WORLD, RESERVED_WORLD_IPV4, RESERVED_WORLD_IPV6))
                    out.update(cidr_nets.ids)
                elif e == "cluster":
                    out.update(_CLUSTER_RESERVED)
                    out.update(n for n, ls in universe.items()
                               if cluster in ls.values("k8s", CLUSTER_KEY))
                else:
                    out.update(_ENTITY_IDS[e])
        return out


def _fqdn_ids(peers: tuple[Peer, ...] | None, sel: Mapping[DNSRule, frozenset[Network]],
              cidrs: Mapping[Network, int]) -> set[int]:
    """The identities a rule's toFQDNs peers give the addresses of `sel`."""
    if not sel or not peers:
        return set()
    return {cidrs[n] for peer in peers if peer.fqdn is not None
            for n in sel.get(peer.fqdn, ()) if n in cidrs}


def _allow_values(sets: PolicySets, refs: dict[PolicyKey, set[PolicyRef]],
                  zombie_refs: dict[PolicyKey, set[PolicyRef]],
                  proxied: set[PolicyKey]) -> dict[PolicyKey, tuple[int, int]]:
    """Allow entries' values; a key only expired toFQDNs addresses give allows
    established directions only (MATCH_ESTABLISHED)."""
    out = {k: (sets.intern(v), k.match_type() | (MATCH_PROXY if k in proxied else 0))
           for k, v in refs.items()}
    # flow.c's lookup takes the identity's most specific entry and an established-only
    # one refuses a new connection without looking at shorter ones: a kept key that a
    # live key of the same identity covers (another rule still allows the address on a
    # wider port range) is left out, so the live one answers as it would without it.
    live: dict[tuple[int, int, int], list[PolicyKey]] = {}
    for k in refs:
        live.setdefault((k.ep_id, k.direction, k.identity), []).append(k)
    for k, v in zombie_refs.items():
        if k in out or any(_covers(w, k) for w in live.get((k.ep_id, k.direction, k.identity), ())):
            continue
        out[k] = (sets.intern(v), k.match_type() | MATCH_ESTABLISHED
                  | (MATCH_PROXY if k in proxied else 0))
    return out


def _covers(wide: PolicyKey, k: PolicyKey) -> bool:
    """Every (protocol, port) of k's LPM prefix is within wide's (same ep, dir, identity)."""
    if not wide.protocol:
        return True
    if wide.protocol != k.protocol:
        return False
    if not wide.port_bits:
        return True
    if not k.port_bits or k.port_bits < wide.port_bits:
        return False
    shift = 16 - wide.port_bits
    return wide.port >> shift == k.port >> shift


def _rule_entries(rec: RuleRecord, ids: Iterable[int], refs: dict[PolicyKey, set[PolicyRef]],
                  proxied: set[PolicyKey]) -> None:
    """The map keys a rule gives the identities `ids` (and which go to the proxy)."""
    rule, ref = rec.rule, rec.ref
    d = DIRECTIONS[rule.direction]
    for ep in rec.eps:
        for ident in ids:
            for proto, port, bits in rec.ports:
                refs.setdefault(PolicyKey(ep, d, ident, proto, port, bits), set()).add(ref)
    if not rule.deny:
        for protos, start in rec.l7:
            for ep in rec.eps:
                for ident in ids:
                    for proto in protos:
                        proxied.add(PolicyKey(ep, d, ident, proto, start, 16))


def _l7_entries(records: list[RuleRecord], l7_ports: set[tuple[int, int, int]],
                proto: int) -> dict[tuple[int, int, int], tuple[L7Entry, ...]]:
    """For each policed port, every allow rule that covers it (as Cilium merges them: a
    rule without L7 rules on the port allows every request of its peers)."""
    by_ep: dict[int, list[tuple[int, int]]] = {}
    for ep, d, port in l7_ports:
        by_ep.setdefault(ep, []).append((d, port))
    out: dict[tuple[int, int, int], list[L7Entry]] = {}
    for rec in records:
        rule, eps, ref = rec.rule, rec.eps, rec.ref
        if rule.deny or not (rec.ids or rec.zids):
            continue
        ids = frozenset(rec.ids | rec.zids)
        d = DIRECTIONS[rule.direction]
        for ep in eps:
            for pd, port in by_ep.get(ep, ()):
                if pd != d:
                    continue
                if rule.ports is None:
                    out.setdefault((ep, d, port), []).append(L7Entry(ids, None, ref))
                    continue
                for pr in rule.ports:
                    if pr.protocol not in (None, proto) or not (
                            pr.start == 0 or pr.start <= port <= pr.end):
                        continue
                    out.setdefault((ep, d, port), []).append(L7Entry(ids, pr.http, ref, pr.dns))
    return {k: tuple(v) for k, v in out.items()}


class CIDRIndex:
    """Policy prefixes by the leading bits they share, so that "every prefix inside this
    CIDR" is a dictionary lookup rather than a scan (thousands of prefixes)."""

    def __init__(self) -> None:
        self._nets: list[tuple[int, int, int, int]] = []  # (version, int, prefixlen, id)
        self._by_len: dict[tuple[int, int], dict[int, list[tuple[int, int, int]]]] = {}
        self.ids: set[int] = set()

    def add(self, net: Network, num: int) -> None:
        self._nets.append((net.version, int(net.network_address), net.prefixlen, num))
        self.ids.add(num)

    def _index(self, version: int, plen: int) -> dict[int, list[tuple[int, int, int]]]:
        key = (version, plen)
        idx = self._by_len.get(key)
        if idx is None:
            bits = 32 if version == 4 else 128
            idx = {}
            for v, addr, n, num in self._nets:
                if v == version and n >= plen:
                    idx.setdefault(addr >> (bits - plen), []).append((addr, n, num))
            self._by_len[key] = idx
        return idx

    def inside(self, cidr: CIDR) -> set[int]:
        """CIDR identities inside the prefix and outside every except."""
        net = cidr.network
        bits = net.max_prefixlen
        found = self._index(net.version, net.prefixlen).get(
            int(net.network_address) >> (bits - net.prefixlen), [])
        excepts = [(int(e.network_address) >> (bits - e.prefixlen), e.prefixlen)
                   for e in cidr.excepts]
        out = set()
        for addr, n, num in found:
            if any(n >= elen and addr >> (bits - elen) == etop for etop, elen in excepts):
                continue
            out.add(num)
        return out


def _port_keys(ports: tuple[PortRange, ...] | None) -> list[tuple[int, int, int]]:
    """(protocol, port, prefix bits) triples; (0, 0, 0) for any protocol."""
    if ports is None:
        return [(0, 0, 0)]
    out: list[tuple[int, int, int]] = []
    for pr in ports:
        for proto in (pr.protocol,) if pr.protocol else ANY_PROTOCOLS:
            if pr.start == 0:
                out.append((proto, 0, 0))
            else:
                out.extend((proto, port, bits) for port, bits in port_prefixes(pr.start, pr.end))
    return list(dict.fromkeys(out))

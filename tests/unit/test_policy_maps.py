"""Policy updates never fail open: replayed write by write, every intermediate state of
the maps allows only what the old or the new policy allows."""
from __future__ import annotations

import ipaddress
import itertools

import pytest

from webb_agent.stores.endpoints import EndpointRegistry, NodeInfo, parse_endpoint
from webb_agent.stores.identities import IdentityAllocator
from webb_agent.policy.compile import (DIR_EGRESS, DIR_INGRESS, EP_ENFORCE_EGRESS,
                                       EP_ENFORCE_INGRESS, EP_POLICY_EGRESS, EP_POLICY_INGRESS)
from webb_agent.policy.engine import PolicyEngine
from webb_agent.policy.ipcache import PrefixLookup
from webb_agent.policy.maps import EpEntry, MapState, MapWriter
from webb_agent.policy.model import parse_documents


class Recorder:
    """Tables that keep the state and every operation."""

    def __init__(self) -> None:
        self.ops: list[tuple] = []

    def set(self, table, key, value):
        self.ops.append(("set", table, key, value))

    def delete(self, table, key):
        self.ops.append(("del", table, key))

    def set_revision(self, revision):
        self.ops.append(("rev", revision))


def replay(state: MapState, op: tuple) -> None:
    if op[0] == "set":
        getattr(state, op[1])[op[2]] = op[3]
    elif op[0] == "del":
        getattr(state, op[1]).pop(op[2], None)


def _match(table, ep_id, d, ident, proto, port):
    for k in table:
        if k.ep_id != ep_id or k.direction != d or k.identity != ident:
            continue
        if not k.protocol:
            return True
        if k.protocol != proto:
            continue
        if not k.port_bits or port >> (16 - k.port_bits) == k.port >> (16 - k.port_bits):
            return True
    return False


def verdict(state: MapState, ifindex: int, d: int, remote: str, proto: int, port: int) -> bool:
    """True if bpf/flow.c would let the first packet of the connection pass."""
    ep = state.endpoints.get(ifindex)
    if ep is None:
        return True
    policy = ep.flags & (EP_POLICY_INGRESS if d == DIR_INGRESS else EP_POLICY_EGRESS)
    enforce = ep.flags & (EP_ENFORCE_INGRESS if d == DIR_INGRESS else EP_ENFORCE_EGRESS)
    if not policy and not enforce:
        return True
    a = ipaddress.ip_address(remote)
    ident = PrefixLookup(state.ipcache).lookup(a.version, a.packed.ljust(16, b"\0"))
    if any(_match(state.deny, ep.ep_id, d, i, proto, port) for i in (ident, 0)):
        return False
    if not enforce:
        return True
    return any(_match(state.allow, ep.ep_id, d, i, proto, port) for i in (ident, 0))


def cnp(name, spec):
    return (f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: "
            f"{{name: {name}, namespace: ns}}\nspec:\n{spec}")


POLICIES = {
    "none": "",
    "l3": cnp("a", "  endpointSelector: {matchLabels: {app: a}}\n"
                   "  ingress: [{fromEndpoints: [{matchLabels: {app: b}}]}]\n"),
    "l4": cnp("a", "  endpointSelector: {matchLabels: {app: a}}\n"
                   "  ingress: [{fromEndpoints: [{matchLabels: {app: b}}], "
                   "toPorts: [{ports: [{port: '80', endPort: 90, protocol: TCP}]}]}]\n"),
    "deny": cnp("a", "  endpointSelector: {matchLabels: {app: a}}\n"
                     "  ingress: [{fromEntities: [all]}]\n"
                     "  ingressDeny: [{fromEndpoints: [{matchLabels: {app: b}}], "
                     "toPorts: [{ports: [{port: '85', protocol: TCP}]}]}]\n"),
    "cidr": cnp("a", "  endpointSelector: {matchLabels: {app: a}}\n"
                     "  egress: [{toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]}]\n"
                     "  ingress: [{fromCIDR: [198.51.100.0/24]}]\n"),
    "b-egress": cnp("b", "  endpointSelector: {matchLabels: {app: b}}\n"
                         "  egress: [{toEndpoints: [{matchLabels: {app: a}}]}]\n"),
    "open-deny": cnp("a", "  endpointSelector: {matchLabels: {app: a}}\n"
                          "  enableDefaultDeny: {ingress: false}\n"
                          "  ingressDeny: [{toPorts: [{ports: [{port: '81'}]}]}]\n"),
}

PROBES = [(ifx, d, remote, proto, port)
          for ifx in (1, 2) for d in (DIR_INGRESS, DIR_EGRESS)
          for remote in ("10.0.0.1", "10.0.0.2", "192.0.2.1", "192.0.2.200", "198.51.100.7",
                         "203.0.113.1", "10.99.0.1")
          for proto, port in ((6, 80), (6, 85), (6, 81), (17, 81), (6, 443), (1, 0))]


async def engine() -> tuple[PolicyEngine, Recorder]:
    reg = EndpointRegistry("n1", IdentityAllocator())
    rec = Recorder()
    eng = PolicyEngine(reg, ["10.99.0.1"], tables=rec)
    reg.subscribe(eng.on_endpoint)
    await reg.sync_file([
        parse_endpoint({"name": "a", "namespace": "ns", "labels": {"app": "a"},
                        "ips": ["10.0.0.1"], "interface": "va"}),
        parse_endpoint({"name": "b", "namespace": "ns", "labels": {"app": "b"},
                        "ips": ["10.0.0.2"], "interface": "vb"})], [NodeInfo("n1", ("10.99.0.1",))])
    eng.before_attach("va", 1)
    eng.before_attach("vb", 2)
    return eng, rec


@pytest.mark.parametrize("old,new", [(a, b) for a, b in itertools.permutations(POLICIES, 2)])
async def test_every_intermediate_state_is_at_most_as_open_as_old_or_new(old, new):
    eng, rec = await engine()
    await eng.apply(parse_documents(POLICIES[old]) if POLICIES[old] else [], source="x")
    before = eng.writer.current.copy()
    allowed_old = {p: verdict(before, *p) for p in PROBES}
    rec.ops.clear()
    await eng.apply(parse_documents(POLICIES[new]) if POLICIES[new] else [], source="x",
                    replace_source=True)
    after = eng.writer.current.copy()
    allowed_new = {p: verdict(after, *p) for p in PROBES}
    assert allowed_old != allowed_new
    state = before.copy()
    revs = 0
    for op in rec.ops:
        replay(state, op)
        revs += op[0] == "rev"
        for p in PROBES:
            if verdict(state, *p):
                assert allowed_old[p] or allowed_new[p], (op, p)
    assert state == after and revs == 2


async def test_a_failed_write_restores_the_previous_policy():
    eng, _ = await engine()

    class Failing:
        def __init__(self):
            self.state: dict = {}
            self.fail_after = 10**9

        def set(self, table, key, value):
            self.fail_after -= 1
            if self.fail_after < 0:
                raise OSError(28, "No space left on device")
            self.state[(table, key)] = value

        def delete(self, table, key):
            self.state.pop((table, key), None)

        def set_revision(self, revision):
            pass

    tables = Failing()
    eng.writer = MapWriter(tables)
    await eng.apply_text(POLICIES["l3"])
    good = dict(tables.state)
    tables.fail_after = 2
    with pytest.raises(Exception) as e:
        await eng.apply_text(POLICIES["cidr"].replace("name: a", "name: c"))
    assert "previous policy stays in force" in str(e.value)
    tables.fail_after = 10**9
    assert [p.name for p in eng.list()] == ["a"]
    assert tables.state == good


def test_endpoint_flags_only_grow_before_the_revision_bump():
    rec = Recorder()
    w = MapWriter(rec)
    w.apply(MapState(endpoints={1: EpEntry(7, EP_ENFORCE_INGRESS | EP_POLICY_INGRESS)}))
    rec.ops.clear()
    w.apply(MapState(endpoints={1: EpEntry(7, EP_ENFORCE_EGRESS | EP_POLICY_EGRESS)}))
    sets = [op for op in rec.ops if op[0] == "set"]
    first_rev = rec.ops.index(("rev", 3))
    assert rec.ops.index(sets[0]) < first_rev
    assert sets[0][3].flags == EP_ENFORCE_INGRESS | EP_POLICY_INGRESS | EP_ENFORCE_EGRESS | \
        EP_POLICY_EGRESS
    assert sets[-1][3].flags == EP_ENFORCE_EGRESS | EP_POLICY_EGRESS

"""Policies compiled against a registry: map entries, identities of peers (selectors,
entities, CIDRs with except), enforcement flags, the ipcache and policy sets."""
from __future__ import annotations

import ipaddress

import pytest

from webb.api.flow import flow_pb2 as fpb
from webb_agent.stores.endpoints import EndpointRegistry, NodeInfo, parse_endpoint
from webb_agent.stores.identities import IdentityAllocator
from webb_agent.policy.compile import (DIR_EGRESS, DIR_INGRESS, EP_ENFORCE_EGRESS,
                                       EP_ENFORCE_INGRESS, EP_POLICY_INGRESS, MATCH_ALL,
                                       MATCH_ESTABLISHED,
                                       MATCH_L3_L4, MATCH_L3_ONLY, MATCH_L4_ONLY, PolicyKey,
                                       port_prefixes)
from webb_agent.policy.engine import PolicyEngine
from webb_agent.policy.ipcache import CIDR_IDENTITY_BASE, IPKey, PrefixLookup

NODE_IP = "10.99.0.1"


def ep(name, ns, labels, ip, local=True):
    return parse_endpoint({"name": name, "namespace": ns, "labels": labels, "ips": [ip],
                           "interface": f"veth-{name}" if local else "",
                           "node": "" if local else "n2"})


@pytest.fixture
async def world():
    reg = EndpointRegistry("n1", IdentityAllocator())
    eng = PolicyEngine(reg, [NODE_IP])
    reg.subscribe(eng.on_endpoint)
    await reg.sync_file([
        ep("productpage", "bookinfo", {"app": "productpage"}, "10.244.1.10"),
        ep("details", "bookinfo", {"app": "details"}, "10.244.1.11"),
        ep("reviews", "bookinfo", {"app": "reviews"}, "10.244.1.12"),
        ep("reviews2", "bookinfo", {"app": "reviews"}, "10.244.2.12", local=False),
        ep("dns", "kube-system", {"k8s-app": "kube-dns"}, "10.244.1.2"),
    ], [NodeInfo("n1", (NODE_IP,)), NodeInfo("n2", ("10.99.0.2",))],
        {"bookinfo": {"team": "books"}})
    for i, e in enumerate(reg.list(), start=10):
        if reg.is_local(e):
            eng.before_attach(e.interface, i)
    return reg, eng


def by(reg, name):
    return next(e for e in reg.list() if e.name == name)


async def test_tutorial_policy_entries(world):
    reg, eng = world
    await eng.apply_text("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: reviews, namespace: bookinfo}
spec:
  endpointSelector: {matchLabels: {app: reviews}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: productpage}}]
    toPorts: [{ports: [{port: "9080", protocol: TCP}]}]
""")
    rv, pp = by(reg, "reviews"), by(reg, "productpage")
    c = eng.compiled
    key = PolicyKey(rv.id, DIR_INGRESS, pp.identity, 6, 9080, 16)
    set_id, match = c.allow[key]
    assert match == MATCH_L3_L4 and key.prefixlen == 128
    refs = eng.sets.get(set_id)
    assert [(r.name, r.namespace, r.kind) for r in refs] == [("reviews", "bookinfo",
                                                              "CiliumNetworkPolicy")]
    # allow-localhost: the node may reach a policed endpoint.
    assert c.allow[PolicyKey(rv.id, DIR_INGRESS, 1, 0)] == (0, MATCH_L3_ONLY)
    assert len(c.allow) == 2 and not c.deny
    assert c.endpoints[rv.id].flags == EP_ENFORCE_INGRESS | EP_POLICY_INGRESS
    assert rv.id in c.endpoints and pp.id not in c.endpoints
    assert [r.name for r in eng.sets.get(c.endpoints[rv.id].ingress_set)] == ["reviews"]
    assert eng.endpoint_status(rv) == (True, False, ("bookinfo/reviews",), ())
    assert eng.endpoint_status(by(reg, "reviews2"))[0] is False  # not local
    # The datapath's view: the endpoint entry by ifindex carries the flags.
    eps = eng.writer.current.endpoints
    assert any(e.ep_id == rv.id and e.flags & EP_ENFORCE_INGRESS for e in eps.values())
    # Flows name the policy: flow.Policy messages, parsed back.
    flow = fpb.Flow.FromString(eng.policies_field(set_id, 21005))
    assert [(p.name, p.namespace, p.kind) for p in flow.ingress_denied_by] == \
        [("reviews", "bookinfo", "CiliumNetworkPolicy")]
    assert flow.ingress_denied_by[0].revision == refs[0].revision > 0


async def test_selectors_reach_remote_endpoints_and_namespaces(world):
    reg, eng = world
    await eng.apply_text("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pp, namespace: bookinfo}
spec:
  endpointSelector: {matchLabels: {app: productpage}}
  egress:
  - toEndpoints: [{matchLabels: {app: reviews}}]
  - toEndpoints:
    - matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}
    toPorts: [{ports: [{port: "53", protocol: ANY}]}]
  - toEndpoints: [{}]
    toPorts: [{ports: [{port: "9080"}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns-from-books, namespace: kube-system}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: books}}}]
""")
    pp, dns, rv = by(reg, "productpage"), by(reg, "dns"), by(reg, "reviews")
    c = eng.compiled
    eg = {k for k in c.allow if k.ep_id == pp.id and k.direction == DIR_EGRESS}
    assert PolicyKey(pp.id, DIR_EGRESS, rv.identity, 0) in eg  # both reviews pods: one identity
    assert {(k.protocol, k.port) for k in eg if k.identity == dns.identity} >= \
        {(6, 53), (17, 53), (132, 53)}
    # {} in a CNP: every endpoint of the namespace, on 9080 of any protocol.
    ids = {k.identity for k in eg if k.port == 9080}
    assert ids == {e.identity for e in reg.list() if e.namespace == "bookinfo"}
    assert c.endpoints[pp.id].flags & EP_ENFORCE_EGRESS
    # namespaceSelector: pods of namespaces labelled team=books.
    ing = {k.identity for k in c.allow if k.ep_id == dns.id and k.direction == DIR_INGRESS}
    assert ing == {e.identity for e in reg.list() if e.namespace == "bookinfo"} | {1}


async def test_entities_cidrs_and_the_ipcache(world):
    reg, eng = world
    await eng.apply_text("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: d, namespace: bookinfo}
spec:
  endpointSelector: {matchLabels: {app: details}}
  egress:
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]
  - toEntities: [world]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - toEntities: [cluster]
    toPorts: [{ports: [{port: "8000", endPort: 8003, protocol: UDP}]}]
  - toEntities: [remote-node, host]
  - toEntities: [all]
    toPorts: [{ports: [{port: "1", protocol: SCTP}]}]
  egressDeny:
  - toEntities: [world]
    toPorts: [{ports: [{port: "25", protocol: TCP}]}]
""")
    d = by(reg, "details")
    c = eng.compiled
    cidr8 = c.cidrs[ipaddress.ip_network("10.0.0.0/8")]
    cidr12 = c.cidrs[ipaddress.ip_network("10.96.0.0/12")]
    assert cidr8 >= CIDR_IDENTITY_BASE and cidr12 >= CIDR_IDENTITY_BASE and cidr8 != cidr12
    keys = [k for k in c.allow if k.ep_id == d.id]
    l3 = {k.identity for k in keys if not k.protocol}
    assert cidr8 in l3 and cidr12 not in l3 and {1, 6} <= l3
    https = {k.identity for k in keys if k.port == 443}
    assert {2, cidr8, cidr12} <= https and d.identity not in https
    udp = {k for k in keys if k.protocol == 17}
    assert {(k.port, k.port_bits) for k in udp if k.identity == 1} == {(8000, 14)}
    assert {k.identity for k in udp} >= {1, 6, by(reg, "reviews").identity, by(reg, "dns").identity}
    assert 2 not in {k.identity for k in udp}
    assert PolicyKey(d.id, DIR_EGRESS, 0, 132, 1, 16) in c.allow
    assert c.allow[PolicyKey(d.id, DIR_EGRESS, 0, 132, 1, 16)][1] == MATCH_L4_ONLY
    assert {k.identity for k in c.deny} >= {2, cidr8, cidr12}
    # The ipcache: the most specific prefix wins; endpoints and nodes keep theirs.
    look = PrefixLookup(eng.ipcache())
    v4 = lambda ip: ipaddress.ip_address(ip).packed.ljust(16, b"\0")  # noqa: E731
    assert look.lookup(4, v4("10.1.2.3")) == cidr8
    assert look.lookup(4, v4("10.97.0.1")) == cidr12
    assert look.lookup(4, v4("11.0.0.1")) == 2
    assert look.lookup(4, v4("10.244.1.11")) == d.identity
    assert look.lookup(4, v4("10.244.2.12")) == by(reg, "reviews2").identity
    assert look.lookup(4, v4(NODE_IP)) == 1 and look.lookup(4, v4("10.99.0.2")) == 6
    cep = eng.cidr_endpoint(4, v4("10.200.0.1"))
    assert cep is not None and cep.identity == cidr8
    assert cep.identity_labels == ("cidr:10.0.0.0/8", "reserved:world")
    assert eng.cidr_endpoint(4, v4("11.0.0.1")) is None
    assert eng.local_identities()[cidr8] == ("cidr:10.0.0.0/8", "reserved:world")
    # Deleting the policy takes its prefixes out of the ipcache.
    await eng.delete("d", "bookinfo")
    assert IPKey.of(ipaddress.ip_network("10.0.0.0/8")) not in eng.ipcache()
    assert not eng.compiled.allow and not eng.compiled.endpoints


async def test_l3_only_and_all_match_types(world):
    reg, eng = world
    await eng.apply_text("""
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: everyone}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchLabels: {app: details}}]
  - fromEntities: [all]
    toPorts: [{ports: [{port: "0", protocol: TCP}]}]
""")
    d = by(reg, "details")
    c = eng.compiled
    local = [e for e in reg.list() if reg.is_local(e)]
    assert set(c.endpoints) == {e.id for e in local}
    for e in local:
        assert c.allow[PolicyKey(e.id, DIR_INGRESS, d.identity, 0)][1] == MATCH_L3_ONLY
        k = PolicyKey(e.id, DIR_INGRESS, 0, 6)
        assert k.prefixlen == 104 and c.allow[k][1] == MATCH_L4_ONLY
    assert PolicyKey(1, DIR_INGRESS, 0, 0).match_type() == MATCH_ALL


async def test_endpoint_changes_recompile(world):
    reg, eng = world
    await eng.apply_text("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: reviews, namespace: bookinfo}
spec:
  endpointSelector: {matchLabels: {app: reviews}}
  ingress: [{fromEndpoints: [{matchLabels: {app: ratings}}]}]
""")
    assert not [k for k in eng.compiled.allow if k.identity > 255]
    await reg.upsert(ep("ratings", "bookinfo", {"app": "ratings"}, "10.244.1.20", local=False))
    ratings = by(reg, "ratings")
    assert any(k.identity == ratings.identity for k in eng.compiled.allow)
    assert IPKey.host("10.244.1.20") in eng.ipcache()
    await reg.remove("bookinfo/ratings")
    assert not any(k.identity == ratings.identity for k in eng.compiled.allow)


@pytest.mark.parametrize("start,end", [(1, 1), (80, 80), (8000, 8080), (1, 65535), (1024, 2047),
                                       (65535, 65535), (3, 17)])
def test_port_prefixes_cover_the_range_exactly(start, end):
    covered = set()
    for port, bits in port_prefixes(start, end):
        size = 1 << (16 - bits)
        assert port % size == 0
        block = set(range(port, port + size))
        assert not covered & block
        covered |= block
    assert covered == set(range(start, end + 1))
    assert len(port_prefixes(1, 65535)) == 16


async def test_l7_reviews_policy_marks_entries_for_the_proxy_and_merges_rules(world):
    """The tutorial's L7 policy: productpage may GET anything, anyone else only GET
    /nopathallowed; the allow entries of 9080 carry MATCH_PROXY (the datapath steers
    those connections to the proxy), and the proxy's entries merge every rule on it."""
    from pathlib import Path

    from webb_agent.policy.compile import MATCH_PROXY
    reg, eng = world
    text = (Path(__file__).resolve().parents[2] / "examples" / "reviews-l7.yaml").read_text()
    await eng.apply_text(text + """---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: details-any, namespace: bookinfo}
spec:
  endpointSelector: {matchLabels: {app: reviews}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: details}}]
    toPorts: [{ports: [{port: "9080", protocol: TCP}]}]
""")
    rv, pp, dt = by(reg, "reviews"), by(reg, "productpage"), by(reg, "details")
    c = eng.compiled
    assert c.allow[PolicyKey(rv.id, DIR_INGRESS, pp.identity, 6, 9080, 16)][1] == \
        MATCH_L3_L4 | MATCH_PROXY
    assert c.allow[PolicyKey(rv.id, DIR_INGRESS, 0, 6, 9080, 16)][1] == MATCH_L4_ONLY | MATCH_PROXY
    # details' own L4 rule has no L7 rules: its key goes direct.
    assert c.allow[PolicyKey(rv.id, DIR_INGRESS, dt.identity, 6, 9080, 16)][1] == MATCH_L3_L4
    assert c.allow[PolicyKey(rv.id, DIR_INGRESS, 1, 0)] == (0, MATCH_L3_ONLY)  # no proxy
    entries = c.l7[(rv.id, DIR_INGRESS, 9080)]
    assert len(entries) == 3
    by_policy = {(e.policy.name, e.http is None) for e in entries}
    assert by_policy == {("reviews", False), ("details-any", True)}
    assert [r.method for e in entries if e.covers(pp.identity) and e.http
            for r in e.http] == ["GET", "GET"]
    assert eng.identity_of(pp.ips[0]) == pp.identity and eng.identity_of("8.8.8.8") == 2
    await eng.delete("reviews", "bookinfo")
    assert not eng.compiled.l7 and not any(
        m & MATCH_PROXY for _, m in eng.compiled.allow.values())


async def test_egress_http_rules_steer_the_clients_connections(world):
    """Egress HTTP rules: the client's allow entries carry MATCH_PROXY, the proxy's
    entries are keyed by the client and egress, and the client's endpoint gets
    EP_PROXY_EGRESS (the datapath then looks for the proxy's answers at its interface)."""
    from webb_agent.policy.compile import DIR_EGRESS, EP_PROXY_EGRESS, MATCH_PROXY
    reg, eng = world
    await eng.apply_text("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pp-egress, namespace: bookinfo}
spec:
  endpointSelector: {matchLabels: {app: productpage}}
  egress:
  - toEndpoints: [{matchLabels: {app: reviews}}]
    toPorts:
    - ports: [{port: "9080", protocol: TCP}]
      rules: {http: [{method: GET}]}
""")
    rv, pp = by(reg, "reviews"), by(reg, "productpage")
    c = eng.compiled
    assert c.allow[PolicyKey(pp.id, DIR_EGRESS, rv.identity, 6, 9080, 16)][1] == \
        MATCH_L3_L4 | MATCH_PROXY
    (entry,) = c.l7[(pp.id, DIR_EGRESS, 9080)]
    assert entry.covers(rv.identity) and not entry.covers(pp.identity)
    assert c.endpoints[pp.id].flags & EP_PROXY_EGRESS
    assert not c.endpoints.get(rv.id) or not c.endpoints[rv.id].flags & EP_PROXY_EGRESS
    await eng.delete("pp-egress", "bookinfo")
    assert not eng.compiled.l7


async def test_to_fqdns_allows_exactly_the_answered_addresses_until_they_expire(world):
    """toFQDNs: nothing before an answer; then the answer's addresses (as /32 CIDR
    identities in the ipcache), for names the selector selects only; gone at expiry."""
    import ipaddress
    import time

    from webb_agent.pipeline.l7.dns import DNSMessage
    from webb_agent.policy.compile import DIR_EGRESS
    reg, eng = world
    await eng.apply_text("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pp-fqdn, namespace: bookinfo}
spec:
  endpointSelector: {matchLabels: {app: productpage}}
  egress:
  - toFQDNs: [{matchPattern: "*.example.com"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
""")
    pp = by(reg, "productpage")

    def allowed() -> set[str]:
        return {str(eng.cidr_ids.network(k.identity)) for k in eng.compiled.allow
                if k.ep_id == pp.id and k.direction == DIR_EGRESS and k.port == 443}
    assert allowed() == set()
    answer = DNSMessage(1, True, 0, 0, "api.example.com.", ("A",), ("203.0.113.5", "203.0.113.2"),
                        ttl=30)
    await eng.learn_dns(pp.id, answer)
    assert allowed() == {"203.0.113.5/32", "203.0.113.2/32"}
    assert eng.identity_of("203.0.113.5") == eng.cidr_ids.get(ipaddress.ip_network("203.0.113.5/32"))
    # A name no selector selects teaches nothing.
    await eng.learn_dns(pp.id, DNSMessage(2, True, 0, 0, "other.org.", ("A",), ("203.0.113.3",),
                                          ttl=30))
    assert allowed() == {"203.0.113.5/32", "203.0.113.2/32"} and len(eng.fqdn) == 1
    # Expired: kept, for established connections only (MATCH_ESTABLISHED: flow.c lets
    # no new connection through such an entry), as Cilium keeps IPs with connections.
    assert eng.fqdn.expire(time.monotonic() + 31)
    await eng._fqdn_recompile()
    assert allowed() == {"203.0.113.5/32", "203.0.113.2/32"}
    assert {v[1] & MATCH_ESTABLISHED for k, v in eng.compiled.allow.items()
            if k.ep_id == pp.id and k.port == 443} == {MATCH_ESTABLISHED}
    assert eng.identity_of("203.0.113.5") != 2
    # Answered again: a plain allow again.
    await eng.learn_dns(pp.id, DNSMessage(3, True, 0, 0, "api.example.com.", ("A",),
                                          ("203.0.113.5",), ttl=30))
    assert {str(eng.cidr_ids.network(k.identity)) for k, v in eng.compiled.allow.items()
            if k.ep_id == pp.id and k.port == 443 and not v[1] & MATCH_ESTABLISHED} == \
        {"203.0.113.5/32"}
    # No connection uses the other any more: it goes (and with its entry its identity).
    eng.fqdn.still_used(set(), grace=0.0)
    await eng._fqdn_recompile()
    assert allowed() == {"203.0.113.5/32"} and eng.identity_of("203.0.113.2") == 2
    eng._recompile()  # a whole recompile agrees
    assert allowed() == {"203.0.113.5/32"} and eng.identity_of("203.0.113.2") == 2
    await eng.delete("pp-fqdn", "bookinfo")


def _lpm(allow, ep_id: int, direction: int, identity: int, proto: int, port: int):
    """flow.c's policy_allow lookup for one identity: the longest prefix that covers."""
    best = None
    for k, v in allow.items():
        if (k.ep_id, k.direction, k.identity) != (ep_id, direction, identity):
            continue
        if k.protocol and (k.protocol != proto or (k.port_bits and (
                k.port >> (16 - k.port_bits)) != (port >> (16 - k.port_bits)))):
            continue
        if best is None or k.prefixlen > best[0].prefixlen:
            best = (k, v)
    return best


@pytest.mark.parametrize("wide", ["", "\n    toPorts: [{ports: [{port: \"400\", endPort: 500, protocol: TCP}]}]",
                                  "\n    toPorts: [{ports: [{port: \"0\", protocol: TCP}]}]"],
                         ids=["any", "tcp-400-500", "tcp-any-port"])
async def test_a_kept_address_never_shadows_another_rules_live_allow(world, wide):
    """An address one toFQDNs rule kept for its connections (port 443, established
    only) that another rule still allows on every port: a new connection to 443 is
    allowed. flow.c's LPM lookup finds the most specific entry of the identity and a
    MATCH_ESTABLISHED one refuses a new connection without looking at the shorter
    ones, so the kept entry must not be there where a live one covers it."""
    import time

    from webb_agent.pipeline.l7.dns import DNSMessage
    from webb_agent.policy.compile import DIR_EGRESS
    reg, eng = world
    await eng.apply_text("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pp-fqdn2, namespace: bookinfo}
spec:
  endpointSelector: {matchLabels: {app: productpage}}
  egress:
  - toFQDNs: [{matchName: "api.example.com"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - toFQDNs: [{matchPattern: "*.cdn.example.org"}]""" + wide + "\n")
    pp = by(reg, "productpage")
    await eng.learn_dns(pp.id, DNSMessage(1, True, 0, 0, "api.example.com.", ("A",),
                                          ("203.0.113.7",), ttl=30))
    await eng.learn_dns(pp.id, DNSMessage(2, True, 0, 0, "x.cdn.example.org.", ("A",),
                                          ("203.0.113.7",), ttl=3000))
    ident = eng.identity_of("203.0.113.7")

    def new_connection_allowed() -> bool:
        got = _lpm(eng.compiled.allow, pp.id, DIR_EGRESS, ident, 6, 443)
        return got is not None and not got[1][1] & MATCH_ESTABLISHED
    assert new_connection_allowed()
    assert eng.fqdn.expire(time.monotonic() + 31)  # api.example.com's answer ends
    await eng._fqdn_recompile()
    assert eng.identity_of("203.0.113.7") == ident
    assert new_connection_allowed()
    eng._recompile()  # a whole recompile agrees
    assert new_connection_allowed()
    await eng.delete("pp-fqdn2", "bookinfo")


def test_fqdn_store_ttl_and_minimum():
    from webb_agent.policy.fqdn import FQDNStore
    from webb_agent.policy.model import DNSRule
    st = FQDNStore(min_ttl=10)
    assert st.learn(["a.example."], ["10.0.0.1"], ttl=2, now=100.0)
    assert not st.learn(["A.example"], ["10.0.0.1"], ttl=2, now=101.0)  # known: no regrow
    assert st.next_expiry() == 111.0  # the minimum TTL, from the later answer
    assert {str(n) for n in st.selected(DNSRule("a.example"), now=110.0)} == {"10.0.0.1/32"}
    assert st.selected(DNSRule("a.example"), now=111.0) == frozenset()
    assert not st.expire(now=110.0) and st.expire(now=111.0) and len(st) == 0


def test_fqdn_store_ttl_zero_lives_until_the_floor():
    """TTL 0 answers (and no --tofqdns-min-ttl) still allow the connection that follows:
    the address lives TTL_FLOOR seconds, then goes."""
    from webb_agent.policy.fqdn import TTL_FLOOR, FQDNStore
    from webb_agent.policy.model import DNSRule
    st = FQDNStore()
    assert st.learn(["zero.example."], ["10.0.0.9"], ttl=0, now=100.0)
    assert st.next_expiry() == 100.0 + TTL_FLOOR
    assert st.selected(DNSRule("zero.example"), now=100.0 + TTL_FLOOR - 0.1)
    assert not st.expire(now=100.0 + TTL_FLOOR - 0.1) and len(st) == 1
    assert st.expire(now=100.0 + TTL_FLOOR) and len(st) == 0


async def test_learning_n_names_costs_o_n_selector_matches(world, monkeypatch):
    """Each learned name is matched against the selectors once (cached per name): the
    recompile after each answer reads the selectors' names from an index instead of
    matching every stored name again (that was O(N^2) matches for N answers). A change
    of the selectors re-matches the stored names once, and still selects them."""
    from webb_agent.pipeline.l7.dns import DNSMessage
    from webb_agent.policy import dnsmatch, fqdn
    calls = 0
    real = dnsmatch.matches

    def counting(rules, name):
        nonlocal calls
        calls += 1
        return real(rules, name)
    monkeypatch.setattr(fqdn, "matches", counting)
    reg, eng = world
    doc = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pp-fqdn, namespace: bookinfo}
spec:
  endpointSelector: {matchLabels: {app: productpage}}
  egress:
  - toFQDNs: [%s]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"""
    await eng.apply_text(doc % '{matchPattern: "*.example.com"}, {matchName: "api.github.com"}')
    pp = by(reg, "productpage")
    n = 300
    for i in range(n):
        await eng.learn_dns(pp.id, DNSMessage(i, True, 0, 0, f"h{i}.example.com.", ("A",),
                                              (str(ipaddress.ip_address("100.64.0.0") + i),),
                                              ttl=60))
    assert len(eng.fqdn) == n
    # Per answer: the query against the 2 selectors to filter, once more to index it.
    assert calls <= 2 * 2 * n, calls
    assert len({k.identity for k in eng.compiled.allow if k.ep_id == pp.id}) == n
    calls = 0
    await eng.apply_text(doc % '{matchPattern: "h1*.example.com"}')
    assert calls <= n, calls
    assert len({k.identity for k in eng.compiled.allow if k.ep_id == pp.id}) == 111  # h1, h1x, h1xx


FQDN_MIX = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fq-mix, namespace: bookinfo}
spec:
  endpointSelector: {matchLabels: {app: productpage}}
  egress:
  - toFQDNs: [{matchPattern: "*.example.com"}, {matchName: "api.github.com"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - toFQDNs: [{matchPattern: "**.svc.example.com"}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
  - toCIDR: ["203.0.113.0/24", "198.51.100.7/32"]
    toPorts: [{ports: [{port: "8443", protocol: TCP}]}]
  egressDeny:
  - toCIDRSet: [{cidr: "198.51.100.0/28", except: ["198.51.100.8/29"]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fq-world, namespace: bookinfo}
spec:
  endpointSelector: {matchLabels: {app: details}}
  egress:
  - toEntities: [world]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - toFQDNs: [{matchName: "api.github.com"}]
"""


async def test_an_answer_updates_only_its_addresses_as_a_recompile_would(world):
    """A learned or expired address updates only its own entries (toFQDNs, the CIDR
    and world rules that cover its /32, deny rules, L7 entries, the ipcache; an
    endpoint's address keeps the endpoint's identity): after every step of a random
    run of answers and expiries the maps, the compiled tables and the identity lookups
    are exactly what a full recompile gives."""
    import random
    import time

    from webb_agent.pipeline.l7.dns import DNSMessage
    reg, eng = world
    await eng.apply_text(FQDN_MIX)
    pp, dt = by(reg, "productpage"), by(reg, "details")
    rnd = random.Random(17)
    names = ["a.example.com", "b.example.com", "x.svc.example.com", "y.z.svc.example.com",
             "api.github.com", "other.org"]
    pool = ["203.0.113.5", "203.0.113.9", "198.51.100.3", "198.51.100.7", "198.51.100.9",
            "192.0.2.1", "192.0.2.2", "10.244.1.11", "2001:db8::1"]
    base = time.monotonic()
    full_calls = expired = kept_steps = 0
    real = eng._recompile

    def counting() -> None:
        nonlocal full_calls
        full_calls += 1
        real()
    eng._recompile = counting  # type: ignore[method-assign]
    for step in range(120):
        if rnd.random() < 0.7:
            ips = tuple(rnd.sample(pool, rnd.randint(1, 3)))
            name = rnd.choice(names)
            await eng.learn_dns(rnd.choice((pp.id, dt.id)), DNSMessage(
                step, True, 0, 0, name + ".", ("A",), ips, ttl=rnd.choice((5, 30, 90))))
        elif eng.fqdn.expire(base + step * 0.5):
            expired += 1
            await eng._fqdn_recompile()
        elif eng.fqdn.kept():  # connections gone for some kept addresses
            kept = sorted(eng.fqdn.kept(), key=str)
            eng.fqdn.still_used(set(kept[::2]), grace=0.0)
            await eng._fqdn_recompile()
        compiled, state = eng._compile(eng.policies.values())
        cur = eng.writer.current
        assert (cur.allow, cur.deny, cur.ipcache) == (state.allow, state.deny, state.ipcache), step
        c = eng.compiled
        assert (c.allow, c.deny, c.cidrs) == (compiled.allow, compiled.deny, compiled.cidrs), step
        kept_steps += any(v[1] & MATCH_ESTABLISHED for v in c.allow.values())
        assert (c.l7, c.l7_udp) == (compiled.l7, compiled.l7_udp), step
        for ip in pool:
            a = ipaddress.ip_address(ip)
            packed = a.packed.ljust(16, b"\0")
            assert eng.identity_of(ip) == PrefixLookup(state.ipcache).lookup(a.version, packed)
            want = eng.lookup.lookup(a.version, packed)
            assert want == PrefixLookup({k: v for k, v in state.ipcache.items()
                                         if v in compiled.cidrs.values()}).lookup(a.version, packed)
    assert len(eng.fqdn) and expired and kept_steps and full_calls == 0  # never a recompile
    await eng.delete("fq-mix", "bookinfo")
    await eng.delete("fq-world", "bookinfo")


def test_prefix_lookup_answers_change_with_its_entries():
    """PrefixLookup remembers its answers (the L7 proxy asks per request); an entry set
    or deleted in place changes the next answer, for that address and the others."""
    a = bytes([10, 0, 0, 5]).ljust(16, b"\0")
    b = bytes([10, 0, 0, 6]).ljust(16, b"\0")
    net = IPKey(4, bytes([10, 0, 0, 0]).ljust(16, b"\0"), 24)
    look = PrefixLookup({net: 7})
    assert look.lookup(4, a) == 7 and look.lookup(4, b) == 7
    look.set(IPKey(4, a, 32), 9)
    assert look.lookup(4, a) == 9 and look.lookup(4, b) == 7
    look.set(net, 8)
    assert look.lookup(4, a) == 9 and look.lookup(4, b) == 8
    look.delete(IPKey(4, a, 32))
    look.delete(net)
    assert look.lookup(4, a) == 2 and look.lookup(4, b) == 2  # world

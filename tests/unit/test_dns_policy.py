"""DNS rules: Cilium's matchName/matchPattern semantics, the proxy's decision and its
REFUSED answer (the end-to-end path is tests/e2e/test_l7_egress.py)."""
from __future__ import annotations

import ipaddress
import struct

import pytest

from webb_agent.pipeline.l7.dns import parse_dns
from webb_agent.l7proxy.dnsproxy import decide, refused
from webb_agent.policy.compile import ANY_IDENTITY, L7Entry, PolicyRef
from webb_agent.policy.dnsmatch import matches, pattern_regex
from webb_agent.policy.model import DNSRule


@pytest.mark.parametrize("rule,name,want", [
    (DNSRule("api.github.com"), "api.github.com", True),
    (DNSRule("api.github.com."), "API.GitHub.com", True),
    (DNSRule("api.github.com"), "xapi.github.com", False),
    (DNSRule("", "*.cilium.io"), "docs.cilium.io.", True),
    (DNSRule("", "*.cilium.io"), "a.docs.cilium.io", False),
    (DNSRule("", "*.cilium.io"), "cilium.io", False),
    (DNSRule("", "sub*.cilium.io"), "sub.cilium.io", True),
    (DNSRule("", "sub*.cilium.io"), "subway.cilium.io", True),
    (DNSRule("", "**.cilium.io"), "a.b.cilium.io", True),
    (DNSRule("", "**.cilium.io"), "cilium.io", False),
    (DNSRule("", "*"), "anything.at.all", True),
    (DNSRule("", "cilium.io"), "ciliumxio", False),  # the dot is literal
])
def test_names_and_patterns(rule, name, want):
    assert matches([rule], name) is want


def test_pattern_regex_is_re2_and_anchored_by_fullmatch():
    assert pattern_regex("*.x.io") == "[-a-zA-Z0-9_]*[.]x[.]io[.]"


def query(name: str, ident: int = 0x1234, edns: bool = True) -> bytes:
    q = struct.pack("!6H", ident, 0x0100, 1, 0, 0, 1 if edns else 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack("!HH", 1, 1)
    if edns:
        q += b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0)
    return q


def test_refused_keeps_id_and_question_only():
    r = refused(query("denied.example.com"))
    m = parse_dns(r)
    assert m is not None and m.is_response and m.rcode == 5 and m.id == 0x1234
    assert m.query == "denied.example.com." and m.qtypes == ("A",)
    assert struct.unpack_from("!6H", r)[2:] == (1, 0, 0, 0)  # EDNS record dropped
    assert struct.unpack_from("!H", r, 2)[0] & 0x0100  # RD kept
    s = parse_dns(refused(query("x.example", edns=True), rcode=2))  # the upstream bound's
    assert s is not None and s.rcode == 2 and s.id == 0x1234 and s.query == "x.example."


def test_decide_merges_rules_like_cilium():
    ref = PolicyRef("CiliumNetworkPolicy", "demo", "p", 1, ())
    other = PolicyRef("CiliumNetworkPolicy", "demo", "q", 1, ())
    dns_rule = L7Entry(frozenset({7}), None, ref, (DNSRule("ok.example"),))
    assert decide((dns_rule,), 7, "ok.example.") == (True, (ref,))
    assert decide((dns_rule,), 7, "no.example.") == (False, (ref,))
    assert decide((dns_rule,), 8, "ok.example.") == (False, ())  # not this server
    # A rule on the port without L7 rules allows every query of its peers.
    any_q = L7Entry(frozenset({ANY_IDENTITY}), None, other)
    assert decide((dns_rule, any_q), 7, "no.example.") == (True, (other,))


def test_a_grace_period_runs_per_selector(monkeypatch):
    """Two toFQDNs selectors hold one address; each hold expired at its own time. With
    an idle-connection grace period the one whose grace ran out lets go of the address,
    the other keeps it until its own grace runs out."""
    from webb_agent.policy import fqdn as fqdn_mod
    from webb_agent.policy.model import DNSRule

    clock = [1000.0]
    monkeypatch.setattr(fqdn_mod.time, "monotonic", lambda: clock[0])
    one, star = DNSRule(match_name="a.example"), DNSRule(match_pattern="*.example")
    store = fqdn_mod.FQDNStore()
    store.set_selectors([one, star])
    store.learn(["a.example"], ["192.0.2.1"], 10, now=clock[0])
    store.learn(["b.example"], ["192.0.2.1"], 100, now=clock[0])
    net = ipaddress.ip_network("192.0.2.1/32")
    clock[0] += 20  # a.example expired: `one` holds the address for connections only
    store.expire(clock[0])
    assert store.keeps(one, net) and not store.keeps(star, net)
    clock[0] += 90  # b.example expired too: now `star` holds it the same way
    store.expire(clock[0])
    assert store.keeps(one, net) and store.keeps(star, net)
    store.take_changed()
    # 100 s after `one` expired, 10 s after `star` did, no connection uses it, grace 60:
    store.still_used(set(), 60.0, now=clock[0] + 10)
    assert not store.keeps(one, net)
    assert store.keeps(star, net)
    assert net in store.changed()
    store.still_used(set(), 60.0, now=clock[0] + 61)
    assert not store.keeps(star, net)

"""stores/dns_answers.py: the one table of what address a DNS answer gave for which name,
until when, as its two readers use it (names on flows, toFQDNs); their own tests are in
test_l7_pipeline.py (names on flows) and test_policy_compile.py (toFQDNs)."""
from __future__ import annotations

import ipaddress

import pytest

from webb_agent.stores.dns_answers import DNSAnswers

SEC = 10**9
A = ipaddress.ip_address


def test_an_answer_overlapping_a_pair_makes_its_interval_longer():
    t = DNSAnswers(A)
    assert t.learn(["Web.Test."], ["10.0.0.1"], 10, 0)
    assert not t.learn(["web.test"], ["10.0.0.1"], 10, 5 * SEC)   # known pair
    assert t.names(A("10.0.0.1"), 15 * SEC) == ["web.test"]      # through the later TTL
    assert len(t._by_addr[A("10.0.0.1")]) == 1                    # one interval, not two
    # After a gap, a second interval: a flow of the gap gets no name, one of either
    # interval does.
    t.learn(["web.test"], ["10.0.0.1"], 10, 100 * SEC)
    assert t.names(A("10.0.0.1"), 50 * SEC) == []
    assert t.names(A("10.0.0.1"), 3 * SEC) == t.names(A("10.0.0.1"), 105 * SEC) == ["web.test"]


def test_floor_index_and_expiry_as_tofqdns_uses_them():
    t = DNSAnswers(ipaddress.ip_network, ttl_floor_s=5.0, index_names=True)
    assert t.learn(["a.test", "b.test"], ["10.0.0.1", "bad", "fd00::1"], 0, 0)
    assert sorted(t.known_names()) == ["a.test", "b.test"] and len(t) == 2
    assert t.next_expiry() == 5 * SEC                              # TTL 0 lives the floor
    assert set(t.addresses("a.test", 5 * SEC - 1)) == {ipaddress.ip_network("10.0.0.1"),
                                                       ipaddress.ip_network("fd00::1")}
    assert list(t.addresses("a.test", 5 * SEC)) == []              # expired at its end
    assert set(t.expire(5 * SEC)) == {(n, ipaddress.ip_network(a)) for n in ("a.test", "b.test")
                                      for a in ("10.0.0.1", "fd00::1")}
    assert len(t) == 0 and t.name_count() == 0 and not t.knows("a.test")


def test_evicting_and_refusing_bounds():
    flows = DNSAnswers(A, max_addresses=2, max_entries_per_address=2)
    for i in range(3):
        flows.learn([f"n{i}.test"], [f"10.0.0.{i}"], 60, 0)
    assert len(flows) == 2 and flows.evicted == 1 and flows.names(A("10.0.0.0"), 0) == []
    flows.learn(["x.test", "y.test", "z.test"], ["10.0.0.2"], 60, 0)
    assert flows.names(A("10.0.0.2"), 0) == ["z.test", "y.test"]
    policy = DNSAnswers(A, index_names=True, max_names=1, max_addresses_per_name=1)
    assert policy.learn(["a.test"], ["10.0.0.1"], 60, 0)
    assert not policy.learn(["b.test"], ["10.0.0.2"], 60, 0)       # no room for a name
    assert not policy.learn(["a.test"], ["10.0.0.3"], 60, 0)       # nor for an address
    assert list(policy.known_names()) == ["a.test"] and len(policy) == 1
    with pytest.raises(TypeError):
        flows.known_names()                                       # not indexed by name

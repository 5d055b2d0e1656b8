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


def test_a_name_answered_again_and_again_keeps_one_expiry_item():
    # Every query of a busy client moves its answer's end: the table's expiry heap must
    # not grow with the number of answers (it did: one item per answer, ~2.4M an hour at
    # 1,000 queries/s of a name with a 1-hour TTL), and expiry stays exact.
    t = DNSAnswers(ipaddress.ip_network, index_names=True)
    net = ipaddress.ip_network("10.0.0.1")
    for i in range(20_000):
        t.learn(["api.test"], ["10.0.0.1"], 3600, i * SEC // 1000)
    t.learn(["other.test"], ["10.0.0.1"], 10, 0)
    assert len(t._ends) <= 2
    last_end = 19_999 * SEC // 1000 + 3600 * SEC
    assert t.next_expiry() == 10 * SEC                       # other.test's end first
    assert t.expire(10 * SEC) == [("other.test", net)]
    assert t.next_expiry() == last_end                       # then api.test's, exactly
    assert t.expire(last_end - 1) == [] and list(t.addresses("api.test", last_end - 1)) == [net]
    assert t.expire(last_end) == [("api.test", net)] and len(t) == 0
    assert t.next_expiry() is None and not t._ends


def test_expiry_matches_a_model_under_random_answers():
    import random
    rnd = random.Random(7)
    t = DNSAnswers(ipaddress.ip_network, index_names=True)
    live: dict[tuple[str, str], int] = {}    # the model: (name, address) -> end
    now = 0
    for step in range(3_000):
        now += rnd.randrange(0, 3 * SEC)
        name, ip = f"n{rnd.randrange(8)}.test", f"10.0.0.{rnd.randrange(6)}"
        ttl = rnd.randrange(1, 30)
        t.learn([name], [ip], ttl, now)
        end = now + ttl * SEC
        live[(name, ip)] = max(live.get((name, ip), 0), end) if live.get((name, ip), -1) >= now else end
        gone = {(n, str(a.network_address)) for n, a in t.expire(now)}
        want = {k for k, e in live.items() if e <= now}
        assert gone == want, step
        for k in want:
            del live[k]
        nxt = t.next_expiry()
        assert nxt == (min(live.values()) if live else None), step
    assert len(t._ends) <= 2 * 6


def test_pairs_are_bounded_in_all_and_refusals_counted():
    t = DNSAnswers(ipaddress.ip_network, index_names=True, max_names=100,
                   max_addresses_per_name=100, max_pairs=250)
    for n in range(10):
        t.learn([f"n{n}.test"], [f"10.0.{n}.{i}" for i in range(50)], 60, 0)
    assert sum(len(list(t.addresses_of(f"n{n}.test"))) for n in range(10)) == 250
    assert t.refused == 250 and not t.knows("n9.test")
    # What expires makes room again; what is known is never dropped for a newcomer.
    assert len(t.expire(60 * SEC)) == 250 and t._pairs == 0
    assert t.learn(["n9.test"], ["10.0.9.1"], 60, 61 * SEC)

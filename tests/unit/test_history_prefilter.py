"""The record pre-filter (services/agent/pipeline/prefilter.py) never changes an answer:
random whitelists and blacklists over a varied mix of records (TCP/UDP/ICMP, drops,
verdicts, the world endpoint), as the ring holds them, as the store gives them back
(also unpacked with the pre-filter, as the history reader does), and already
encoded, match exactly as the full filter on the built flow."""
from __future__ import annotations

import random
from typing import Any

from history_support import wire_cache, records
from webb.api.flow import flow_pb2 as fpb
from webb.filters import build_filter
from webb_agent.stores.history.batch import pack_batch, unpack_batch
from webb_agent.stores.history.encoding import wire_encoder
from webb_agent.api.observer import flow_matcher
from webb_agent.pipeline.prefilter import record_prefilter

N = 220  # records per trial: every kind of history_support's mix, several times
PORTS = ["80", "53", "0", "443", "8080", "30001", "30007", "9999"]
PROTOCOLS = ["tcp", "UDP", "icmp", "icmpv4", "icmpv6", "sctp", "http", "dns"]
PODS = ["demo/client", "demo/", "shop/db", "demo/server-1", "client-1", "shop/x"]


def random_filter(rng: random.Random, exact_only: bool) -> fpb.FlowFilter:
    """A filter of 1-3 fields; exact_only: only fields the pre-filter checks exactly
    on a raw record (what a blacklist prunes on), else any of the mix."""
    fields = ["source_port", "destination_port", "protocol"]
    if not exact_only:
        fields += ["source_pod", "destination_pod", "verdict", "source_ip"]
    ff = fpb.FlowFilter()
    for f in rng.sample(fields, rng.randint(1, 3)):
        k = rng.randint(1, 2)
        if f in ("source_port", "destination_port"):
            getattr(ff, f).extend(rng.sample(PORTS, k))
        elif f == "protocol":
            ff.protocol.extend(rng.sample(PROTOCOLS, k))
        elif f in ("source_pod", "destination_pod"):
            getattr(ff, f).extend(rng.sample(PODS, k))
        elif f == "verdict":
            ff.verdict.append(rng.choice([fpb.FORWARDED, fpb.DROPPED]))
        else:
            ff.source_ip.append(rng.choice(["10.1.0.10", "10.1.0.12"]))
    return ff


def test_the_record_prefilter_never_changes_an_answer() -> None:
    rng = random.Random(15)
    p = wire_cache()

    def ring_recs() -> list[Any]:
        recs = records(0, N)
        for i, r in enumerate(recs):
            r.seq = i
        return recs
    packed = pack_batch(ring_recs(), [r.raw for r in ring_recs()], wire_encoder(p))

    def encoded() -> list[Any]:  # read once already: raw bytes dropped, wire kept
        recs = ring_recs()
        for r in recs:
            p.cache_wire(r)
        return recs
    kinds = {"ring": ring_recs, "stored": lambda: unpack_batch(packed), "encoded": encoded}
    pruned = skipped_stored = 0
    for _ in range(60):
        wl = [random_filter(rng, False) for _ in range(rng.randint(0, 2))]
        bl = [random_filter(rng, rng.random() < 0.7) for _ in range(rng.randint(0, 2))]
        if not wl and not bl:
            continue
        pred = build_filter(wl, bl)
        pre = record_prefilter(wl, bl)
        for kind, make in kinds.items():
            # fresh records each time: building a flow drops a record's raw bytes
            want = [pred(p.flow(r)) for r in make()]
            match = flow_matcher(p, wl, pred, bl)
            got = [match(r) for r in make()]
            assert got == want, (kind, wl, bl)
            if pre is not None:
                passed = [pre(r) for r in make()]
                # a necessary condition: nothing it rejects would have matched
                assert not any(w and not ok for w, ok in zip(want, passed)), (kind, wl, bl)
                pruned += passed.count(False)
        keep = getattr(flow_matcher(p, wl, pred, bl), "keep_stored", None)
        if keep is not None:  # what the store's reader unpacks: every match is there
            want_seqs = [r.seq for r in unpack_batch(packed) if pred(p.flow(r))]
            match = flow_matcher(p, wl, pred, bl)
            kept = unpack_batch(packed, keep)
            assert [r.seq for r in kept if match(r)] == want_seqs, (wl, bl)
            pruned += N - len(kept)
            skipped_stored += N - len(kept)
    assert pruned > 0 and skipped_stored > 0  # it did reject records (the test can tell)


def test_a_blacklist_prunes_only_on_what_it_checks_exactly() -> None:
    """A blacklist filter with a field the pre-filter cannot check prunes nothing;
    one of ports and protocol alone prunes exactly the records it names."""
    p = wire_cache()
    recs = records(0, N)
    mixed = [fpb.FlowFilter(destination_port=["80"], verdict=[fpb.DROPPED])]
    pre = record_prefilter([], mixed)
    assert pre is None
    exact = [fpb.FlowFilter(destination_port=["80"], protocol=["tcp"])]
    pre = record_prefilter([], exact)
    assert pre is not None
    pred = build_filter([], exact)
    got = [pre(r) for r in recs]
    assert got == [pred(p.flow(r)) for r in records(0, N)]
    assert got.count(False) > 0

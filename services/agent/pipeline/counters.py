"""The agent's counters for webb.admin.Admin/GetStatus (`webb status` on an agent).

What the datapath counted in the kernel (bpf/flow.c stats map), what never reached
the ring (perf buffer overruns), and what the L7 parsers saw but could not turn into
an L7 flow: those connections stay visible at L3/L4 only, and these numbers are how
a user finds out why their HTTP flows are missing.
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def agent_counters(datapath: Any, ingest: Any) -> dict[str, int]:
    """datapath: a Datapath (or None before start); ingest: the Ingest, whose `l7` is
    the L7Tracker. Keys are "<group>.<name>"."""
    out: dict[str, int] = {}
    if datapath is not None:
        try:
            for k, v in datapath.stats().items():
                out[f"datapath.{k}"] = int(v)
        except Exception as e:  # a status call must not fail because a map read did
            log.warning("reading datapath stats: %s", e)
    if ingest is None:
        return out
    out["datapath.lost_events"] = int(ingest.lost_events)
    tracker = getattr(ingest, "l7", None)
    if tracker is None:
        return out
    for k, v in tracker.counters.items():
        out[f"l7.{k}"] = int(v)
    # Pairing state: requests still waiting for an answer, and those given up on
    # (connection idle or closed, or bounds reached).
    out["l7.http_pending"] = tracker.http.pending()
    out["l7.tcp_stream_marks"] = tracker.streams()
    out["l7.http_evicted_requests"] = tracker.http.evicted
    out["l7.dns_evicted_queries"] = tracker.dns.evicted
    out["l7.dns_unmatched_responses"] = tracker.dns.unmatched
    out["l7.fqdn_addresses"] = len(tracker.fqdn)
    out["l7.fqdn_evicted"] = tracker.fqdn.evicted
    return out


def bounded_state_counters(node: Any, encoder: Any) -> dict[str, int]:
    """Sizes and evictions of the agent's own bounded tables beside the L7 ones:
    namespaces seen (GetNamespaces), encoded interface fields."""
    return {"agent.namespaces": len(node.namespaces),
            "agent.namespaces_evicted": node.namespaces_evicted,
            "agent.interfaces_evicted": encoder.interfaces_evicted}

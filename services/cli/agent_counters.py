"""An agent's own counters (webb.admin.Admin/GetStatus) for `webb status`.

Only a webb agent answers GetStatus; a relay, a Hubble server or an older agent
says UNIMPLEMENTED, and then `webb status` prints Hubble's lines alone.
"""
from __future__ import annotations

import grpc

from webb.api.admin import admin_pb2 as apb
from webb.api.admin import admin_pb2_grpc

from .connection import Connection
from .formats.printer import group_digits

# Reasons the HTTP parser gives (l7/http.py Unparsable), in the order printed.
_UNPARSABLE = ("tls", "http2", "binary", "malformed", "truncated", "empty", "direction", "error")


def agent_status(conn: Connection) -> apb.AgentStatus | None:
    """The agent's counters, or None when the server is not a webb agent (or the call
    fails: the status above it was already answered, so this part is best effort)."""
    stub = admin_pb2_grpc.AdminStub(conn.channel)
    try:
        return stub.GetStatus(apb.GetStatusRequest(), timeout=conn.request_timeout)
    except grpc.RpcError:
        return None


def format_counters(st: apb.AgentStatus, dict_style: bool = False) -> str:
    c = dict(st.counters)
    if dict_style:
        if not c:
            return ""
        width = max(len(k) for k in c)
        return "".join(f"{k.upper():>{width}}: {group_digits(v)}\n" for k, v in sorted(c.items()))
    used: set[str] = set()

    def n(key: str) -> str:
        used.add(key)
        return group_digits(c.get(key, 0))

    lines = [f"Datapath Events: {n('datapath.events')} (L7: {n('datapath.l7_events')}, "
             f"lost: {n('datapath.lost_events')}, parse errors: {n('datapath.parse_errors')}, "
             f"policy drops: {n('datapath.policy_drops')})"]
    lines.append("L7:")
    lines.append(f"  HTTP: {n('l7.http_requests')} requests, {n('l7.http_responses')} responses, "
                 f"{n('l7.http_pending')} awaiting an answer")
    unparsable = [f"{r} {n('l7.http_unparsable_' + r)}" for r in _UNPARSABLE
                  if c.get("l7.http_unparsable_" + r)]
    unparsable += [f"{k[len('l7.http_unparsable_'):]} {n(k)}" for k in sorted(c)
                   if k.startswith("l7.http_unparsable_") and k not in used]
    lines.append(f"  HTTP without L7 flow: {n('l7.http_truncated')} heads cut by the prefix "
                 f"({n('l7.http_truncated_pairs')} answers to them), "
                 f"{n('l7.http_unmatched_responses')} unmatched responses, "
                 f"{n('l7.http_evicted_requests')} requests never answered")
    lines.append(f"  Not HTTP/1.x: {', '.join(unparsable) if unparsable else '0'}")
    lines.append(f"  HTTP segments skipped (retransmitted or inside a body): "
                 f"{n('l7.http_skipped_segments')}")
    lines.append(f"  TCP directions tracked: {n('l7.tcp_stream_marks')} "
                 f"({n('l7.tcp_stream_marks_expired')} expired when idle, "
                 f"{n('l7.tcp_stream_marks_evicted')} evicted at the limit)")
    lines.append(f"  DNS: {n('l7.dns_queries')} queries, {n('l7.dns_responses')} responses, "
                 f"{n('l7.dns_unparsable')} not DNS, "
                 f"{n('l7.dns_unmatched_responses')} answers without a query seen, "
                 f"{n('l7.dns_evicted_queries')} queries never answered")
    lines.append(f"  Names from DNS answers: {n('l7.fqdn_addresses')} addresses "
                 f"({n('l7.fqdn_evicted')} evicted)")
    rest = [f"{k} {group_digits(v)}" for k, v in sorted(c.items()) if k not in used]
    if rest:
        lines.append("Other: " + ", ".join(rest))
    return "\n".join(lines) + "\n"

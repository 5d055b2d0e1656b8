"""L7 messages as flow.Flow wire bytes, shaped like the flows Hubble gets from its
proxy: Type L7, event_type 129 (AccessLog), l7.type REQUEST/RESPONSE with
latency_ns and the http or dns record, is_reply on answers, Hubble's summary.

L7 flows are rare next to L3/L4 events (one per message, not per packet
direction change), so they are written plainly with the encoder's helpers.
"""
from __future__ import annotations

import socket
from typing import Callable

from ...datapath.event import POINT_TO_ENDPOINT
from ..threefour import (EMITTER_NAME, IPV4, IPV6, TRAFFIC_EGRESS, TRAFFIC_INGRESS,
                         VERDICT_FORWARDED, ld, s, timestamp, vi, with_endpoints)
from .dns import dns_record, dns_summary
from .fqdn import FQDNCache
from .http import HTTPRequest, http_record, http_summary
from .redact import RedactSettings
from .tracker import L7Message

FLOW_TYPE_L7 = 2
CILIUM_EVENT_L7 = 129  # MessageTypeAccessLog
L7_REQUEST, L7_RESPONSE = 1, 2


def _ip(family: int, raw: bytes) -> str:
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def _http(rec: dict) -> bytes:
    out = vi(1, rec.get("code", 0)) + s(2, rec.get("method", "")) + s(3, rec.get("url", ""))
    out += s(4, rec.get("protocol", ""))
    out += b"".join(ld(5, s(1, h["key"]) + s(2, h["value"])) for h in rec.get("headers", ()))
    return out


def _dns(rec: dict) -> bytes:
    out = s(1, rec.get("query", ""))
    out += b"".join(s(2, ip) for ip in rec.get("ips", ()))
    out += vi(3, rec.get("ttl", 0))
    out += b"".join(s(4, c) for c in rec.get("cnames", ()))
    out += s(5, rec.get("observation_source", "")) + vi(6, rec.get("rcode", 0))
    out += b"".join(s(7, q) for q in rec.get("qtypes", ()))
    out += b"".join(s(8, r) for r in rec.get("rrtypes", ()))
    return out


class L7Encoder:
    def __init__(self, node_name: str, version: str, redact: RedactSettings | None = None,
                 fqdn: FQDNCache | None = None) -> None:
        self.node_name = node_name
        self.redact = redact or RedactSettings()
        self.fqdn = fqdn
        self._static = (ld(41, s(1, EMITTER_NAME) + s(2, version))
                        + vi(10, FLOW_TYPE_L7) + s(11, node_name)
                        + ld(19, vi(1, CILIUM_EVENT_L7)))
        self._forwarded = vi(2, VERDICT_FORWARDED)
        # flow.Policy fields of a policy set (the policy engine's policies_field).
        self.policies: Callable[[int, int], bytes] | None = None

    def encode(self, m: L7Message, time_ns: int, uuid: str, src: bytes, dst: bytes) -> bytes:
        return with_endpoints(self.body(m, time_ns), uuid.encode(), src, dst)

    def body(self, m: L7Message, time_ns: int) -> bytes:
        """The message's Flow fields but uuid, source and destination (the ring keeps
        this; threefour.with_endpoints adds the rest when the flow is read)."""
        ev = m.ev
        ip = s(1, _ip(ev.family, ev.saddr)) + s(2, _ip(ev.family, ev.daddr))
        ip += vi(3, IPV4 if ev.family == 4 else IPV6)
        ports = vi(1, ev.sport) + vi(2, ev.dport)
        l4 = ld(6, ld(1 if ev.proto == 6 else 2, ports))
        # The connection's direction as seen from the endpoint at this interface.
        toward = ev.point == POINT_TO_ENDPOINT
        ingress = toward != m.response
        if m.http is not None:
            req = m.http if isinstance(m.http, HTTPRequest) else m.request
            rec = http_record(m.http, self.redact, request=req)
            record = ld(101, _http(rec))
            summary = http_summary(m.http, self.redact, request=req, latency_ns=m.latency_ns)
        else:
            assert m.dns is not None
            record = ld(100, _dns(dns_record(m.dns, m.observation_source)))
            summary = dns_summary(m.dns)
        layer7 = vi(1, L7_RESPONSE if m.response else L7_REQUEST) + vi(2, m.latency_ns) + record
        fq = self.fqdn
        names = fq.fields(ev.saddr, ev.daddr, time_ns) if fq is not None and fq.active else b""
        verdict = vi(2, m.verdict) if m.verdict else self._forwarded
        pol = b""
        if m.policy_set and self.policies is not None:
            pol = self.policies(m.policy_set, m.policy_field)
        return b"".join((
            ld(1, timestamp(time_ns)), self._static, verdict, pol,
            ld(5, ip), l4, names, ld(15, layer7),
            vi(22, TRAFFIC_INGRESS if ingress else TRAFFIC_EGRESS),
            ld(26, vi(1, 1)) + vi(16, 1) if m.response else ld(26, b""),
            s(100000, summary),
        ))

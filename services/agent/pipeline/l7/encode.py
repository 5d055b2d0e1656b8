"""L7 messages as flow.Flow wire bytes, shaped like the flows Hubble gets from its
proxy: Type L7, event_type 129 (AccessLog), l7.type REQUEST/RESPONSE with
latency_ns and the http or dns record, is_reply on answers, Hubble's summary.

L7 flows are rare next to L3/L4 events (one per message, not per packet
direction change), so they are written plainly with the wire helpers; field
numbers and enum values are flow_wire.py's (from flow_pb2's descriptors), and
tests/unit/test_l7_wire.py pins the bytes.
"""
from __future__ import annotations

import socket
from operator import attrgetter
from typing import Callable

from ...datapath.event import POINT_TO_ENDPOINT, L7Event
from ..flow_wire import (BOOL, CILIUM_EVENT_L7, DNS, EMITTER, EMITTER_NAME, EVT, FLOW_TYPE_L7,
                         HTTP, HTTP_HEADER, IPF, IPV4, IPV6, L4, L7_REQUEST, L7_RESPONSE, LAYER7,
                         PORTS, TRAFFIC_EGRESS, TRAFFIC_INGRESS, VERDICT_FORWARDED, F, ld, s,
                         timestamp, vi, with_endpoints)
from .dns import dns_record, dns_summary
from .fqdn import FQDNCache
from .http import HTTPRequest, HTTPResponse
from .redact import RedactSettings, redact_header_value, redact_url
from .tracker import L7Message

# Fields written for every message, encoded once.
_IS_REPLY = {True: ld(F.is_reply, vi(BOOL.value, 1)) + vi(F.reply, 1),
             False: ld(F.is_reply, b"")}
_L7_TYPE = {True: vi(LAYER7.type, L7_RESPONSE), False: vi(LAYER7.type, L7_REQUEST)}
_DIRECTION = {True: vi(F.traffic_direction, TRAFFIC_INGRESS),
              False: vi(F.traffic_direction, TRAFFIC_EGRESS)}
_IPV4, _IPV6 = vi(IPF.ipVersion, IPV4), vi(IPF.ipVersion, IPV6)
# What an encoder keeps of values that repeat from flow to flow (header lines, URLs,
# address pairs): each encoded once, tables bounded (cleared when full).
_CACHED = 4096
# Longer values (cookies, tokens, long URLs) rarely repeat, and come from clients (a
# proxied head may be 60 KiB): encoded each time, not kept, so a table holds at most
# _CACHED entries of this size.
_CACHED_VALUE = 256
_by_key = attrgetter("key")


def _ip(family: int, raw: bytes) -> str:
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def http_fields(rec: dict) -> bytes:
    """flow.HTTP fields from http.http_record's dict: the plain reference of
    L7Encoder._http (tests compare the two)."""
    out = (vi(HTTP.code, rec.get("code", 0)) + s(HTTP.method, rec.get("method", ""))
           + s(HTTP.url, rec.get("url", "")) + s(HTTP.protocol, rec.get("protocol", "")))
    out += b"".join(ld(HTTP.headers, s(HTTP_HEADER.key, h["key"]) + s(HTTP_HEADER.value, h["value"]))
                    for h in rec.get("headers", ()))
    return out


def _dns(rec: dict) -> bytes:
    out = s(DNS.query, rec.get("query", ""))
    out += b"".join(s(DNS.ips, ip) for ip in rec.get("ips", ()))
    out += vi(DNS.ttl, rec.get("ttl", 0))
    out += b"".join(s(DNS.cnames, c) for c in rec.get("cnames", ()))
    out += s(DNS.observation_source, rec.get("observation_source", ""))
    out += vi(DNS.rcode, rec.get("rcode", 0))
    out += b"".join(s(DNS.qtypes, q) for q in rec.get("qtypes", ()))
    out += b"".join(s(DNS.rrtypes, r) for r in rec.get("rrtypes", ()))
    return out


class L7Encoder:
    def __init__(self, node_name: str, version: str, redact: RedactSettings | None = None,
                 fqdn: FQDNCache | None = None) -> None:
        self.node_name = node_name
        self.redact = redact or RedactSettings()
        self.fqdn = fqdn
        self._static = (ld(F.emitter, s(EMITTER.name, EMITTER_NAME) + s(EMITTER.version, version))
                        + vi(F.Type, FLOW_TYPE_L7) + s(F.node_name, node_name)
                        + ld(F.event_type, vi(EVT.type, CILIUM_EVENT_L7)))
        self._forwarded = vi(F.verdict, VERDICT_FORWARDED)
        # flow.Policy fields of a policy set (the policy engine's policies_field).
        self.policies: Callable[[int, int], bytes] | None = None
        self._headers: dict[tuple[str, str], bytes] = {}  # (key, value) -> HTTP.headers field
        # (method, url) -> the summary's "METHOD redacted-url" and the method and url fields
        self._requests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self._protocols: dict[str, bytes] = {}             # protocol -> HTTP.protocol field
        # addresses, protocol, ports -> the F.IP and F.l4 fields
        self._addrs: dict[tuple[int, bytes, bytes, int, int, int], bytes] = {}

    def _addr_fields(self, ev: L7Event) -> bytes:
        k = (ev.family, ev.saddr, ev.daddr, ev.proto, ev.sport, ev.dport)
        got = self._addrs.get(k)
        if got is None:
            family = ev.family
            ip = s(IPF.source, _ip(family, ev.saddr)) + s(IPF.destination, _ip(family, ev.daddr))
            ports = vi(PORTS.source_port, ev.sport) + vi(PORTS.destination_port, ev.dport)
            got = (ld(F.IP, ip + (_IPV4 if family == 4 else _IPV6))
                   + ld(F.l4, ld(L4.TCP if ev.proto == 6 else L4.UDP, ports)))
            if len(self._addrs) >= _CACHED:
                self._addrs.clear()
            self._addrs[k] = got
        return got

    def _request(self, req: HTTPRequest) -> tuple[str, bytes]:
        k = (req.method, req.url)
        got = self._requests.get(k)
        if got is None:
            url = redact_url(req.url, self.redact)
            got = (f"{req.method} {url}", s(HTTP.method, req.method) + s(HTTP.url, url))
            if len(req.url) + len(req.method) <= _CACHED_VALUE:
                if len(self._requests) >= _CACHED:
                    self._requests.clear()
                self._requests[k] = got
        return got

    def _http(self, msg: HTTPRequest | HTTPResponse, req: HTTPRequest | None,
              latency_ns: int) -> tuple[bytes, str]:
        """The flow.HTTP record and Hubble's summary: what http.http_record and
        http.http_summary give, encoded (tests/unit/test_l7_http.py compares them)."""
        what, fields = self._request(req) if req is not None else ("", b"")
        if msg.__class__ is HTTPResponse:
            code = msg.code  # type: ignore[union-attr]
            out = [vi(HTTP.code, code), fields]
            summary = f"{msg.protocol} {code} {latency_ns // 1_000_000}ms ({what})"
        else:
            out = [fields]
            summary = f"{msg.protocol} {what}"
        proto = self._protocols.get(msg.protocol)
        if proto is None:
            proto = s(HTTP.protocol, msg.protocol)
            if len(self._protocols) < 16:  # "HTTP/1.1", "HTTP/1.0", the proxy's spellings
                self._protocols[msg.protocol] = proto
        out.append(proto)
        headers = msg.headers
        if headers:
            # Hubble sorts by key (stable: repeated keys keep their wire order).
            known, redact = self._headers, self.redact
            for h in sorted(headers, key=_by_key) if len(headers) > 1 else headers:
                k = (h.key, h.value)
                b = known.get(k)
                if b is None:
                    b = ld(HTTP.headers, s(HTTP_HEADER.key, h.key) + s(
                        HTTP_HEADER.value, redact_header_value(h.key, h.value, redact)))
                    if len(h.key) + len(h.value) <= _CACHED_VALUE:
                        if len(known) >= _CACHED:
                            known.clear()
                        known[k] = b
                out.append(b)
        return ld(LAYER7.http, b"".join(out)), summary

    def encode(self, m: L7Message, time_ns: int, uuid: str, src: bytes, dst: bytes) -> bytes:
        return with_endpoints(self.body(m, time_ns), uuid.encode(), src, dst)

    def body(self, m: L7Message, time_ns: int) -> bytes:
        """The message's Flow fields but uuid, source and destination (the ring keeps
        this; flow_wire.with_endpoints adds the rest when the flow is read)."""
        ev = m.ev
        # The connection's direction as seen from the endpoint at this interface.
        toward = ev.point == POINT_TO_ENDPOINT
        ingress = toward != m.response
        if m.http is not None:
            req = m.http if isinstance(m.http, HTTPRequest) else m.request
            record, summary = self._http(m.http, req, m.latency_ns)
        else:
            assert m.dns is not None
            record = ld(LAYER7.dns, _dns(dns_record(m.dns, m.observation_source)))
            summary = dns_summary(m.dns)
        layer7 = _L7_TYPE[m.response] + vi(LAYER7.latency_ns, m.latency_ns) + record
        fq = self.fqdn
        names = fq.fields(ev.saddr, ev.daddr, time_ns) if fq is not None and fq.active else b""
        verdict = vi(F.verdict, m.verdict) if m.verdict else self._forwarded
        pol = b""
        if m.policy_set and self.policies is not None:
            pol = self.policies(m.policy_set, m.policy_field)
        return b"".join((
            ld(F.time, timestamp(time_ns)), self._static, verdict, pol,
            self._addr_fields(ev), names, ld(F.l7, layer7),
            _DIRECTION[ingress], _IS_REPLY[m.response],
            s(F.Summary, summary),
        ))

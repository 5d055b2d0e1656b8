"""What the proxy handled, as the L7 flows Hubble shows for Cilium's proxy.

A request is `http-request FORWARDED` or, when the rules deny it, `DROPPED`;
its answer, the endpoint's or the proxy's own 403, is `http-response FORWARDED`
with the latency from the request. The deciding policy goes in
ingress_allowed_by / ingress_denied_by (the server's ingress rules) or
egress_allowed_by / egress_denied_by (the client's egress rules), as in Hubble's
flows; traffic_direction says which.
"""
from __future__ import annotations

import functools
import ipaddress
from typing import Any

from ..datapath.event import (L7_DNS, L7_HTTP, L7_RESPONSE_SIDE, POINT_FROM_ENDPOINT,
                              POINT_TO_ENDPOINT, L7Event)
from ..pipeline.flow_wire import (EGRESS_ALLOWED_BY, EGRESS_DENIED_BY, INGRESS_ALLOWED_BY,
                                  INGRESS_DENIED_BY, VERDICT_DROPPED, VERDICT_ERROR)
from ..pipeline.l7.http import HTTPHeader, HTTPRequest, HTTPResponse, canonical_header_key
from ..pipeline.l7.tracker import L7Message
from .http1 import Head
from .dnsproxy import DNSFlow
from .proxy import ProxyFlow


def _headers(head: Head, canon: Any = canonical_header_key,
             header: Any = HTTPHeader) -> tuple[HTTPHeader, ...]:
    return tuple([header(canon(k), v) for k, v in head.headers])  # a list: no generator frame


def http_request(head: Head | None) -> HTTPRequest:
    if head is None:  # nothing parsable: the flow still says a request came
        return HTTPRequest("", "", "HTTP/1.1", (), "", False, 0)
    method, target, version = head.start
    host = head.header("host") or ""
    url = target if "://" in target else f"http://{host}{target}"
    return HTTPRequest(method, target, version, _headers(head), url, True, len(head.raw))


def http_response(f: ProxyFlow) -> HTTPResponse:
    h = f.response_head
    if h is None:
        return HTTPResponse("HTTP/1.1", f.code, "", (), True, 0)
    return HTTPResponse(h.start[0], f.code, h.start[2], _headers(h), True, len(h.raw))


@functools.lru_cache(maxsize=4096)
def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed.ljust(16, b"\0")


# The L7Event of a connection's requests and of its answers: the same for each of its
# requests (nothing in it is per message), so built once per connection and side.
_EVENTS: dict[tuple[Any, ...], L7Event] = {}
_EVENTS_MAX = 4096


def _event(f: ProxyFlow) -> L7Event:
    key = (f.client, f.server, f.family, f.egress, f.response)
    ev = _EVENTS.get(key)
    if ev is not None:
        return ev
    c, s = f.client, f.server
    # The point is the policed endpoint's side: the server's for ingress rules, the
    # client's for egress rules (the encoder gives INGRESS / EGRESS from it).
    if f.response:
        ev = L7Event(0, _packed(s[0]), _packed(c[0]), s[1], c[1], 0, 0, 0, 0, 0, f.family, 6,
                     POINT_TO_ENDPOINT if f.egress else POINT_FROM_ENDPOINT,
                     L7_HTTP | L7_RESPONSE_SIDE, 1, 0)
    else:
        ev = L7Event(0, _packed(c[0]), _packed(s[0]), c[1], s[1], 0, 0, 0, 0, 0, f.family, 6,
                     POINT_FROM_ENDPOINT if f.egress else POINT_TO_ENDPOINT, L7_HTTP, 0, 0)
    if len(_EVENTS) >= _EVENTS_MAX:
        _EVENTS.clear()
    _EVENTS[key] = ev
    return ev


def l7_message(f: ProxyFlow, policy_set: int) -> L7Message:
    ev = _event(f)
    head = f.request
    if head is None:
        req = http_request(None)
    else:
        req = head.flow_view
        if req is None:
            req = head.flow_view = http_request(head)
    denied_request = not f.response and not f.allowed
    msg: Any = http_response(f) if f.response else req
    return L7Message(ev, f.time_ns, f.response, f.latency_ns if f.response else 0, msg,
                     req if f.response else None, None,
                     verdict=VERDICT_DROPPED if denied_request else 0,
                     policy_set=policy_set,
                     policy_field=_FIELDS[f.egress, f.allowed])


# The Flow field naming the deciding policies, by (egress rules, allowed).
_FIELDS = {(False, True): INGRESS_ALLOWED_BY, (False, False): INGRESS_DENIED_BY,
           (True, True): EGRESS_ALLOWED_BY, (True, False): EGRESS_DENIED_BY}


def dns_message(f: DNSFlow, policy_set: int) -> L7Message:
    """A query or answer of the DNS proxy (egress rules: the client's side)."""
    c, s = f.client, f.server
    proto = 6 if f.tcp else 17
    if f.response:
        ev = L7Event(0, _packed(s[0]), _packed(c[0]), s[1], c[1], 0, 0, 0, 0, 0, f.family, proto,
                     POINT_TO_ENDPOINT, L7_DNS | L7_RESPONSE_SIDE, 1, 0)
    else:
        ev = L7Event(0, _packed(c[0]), _packed(s[0]), c[1], s[1], 0, 0, 0, 0, 0, f.family, proto,
                     POINT_FROM_ENDPOINT, L7_DNS, 0, 0)
    # ERROR: allowed, but not asked (the proxy's upstream bound), as Cilium's proxy
    # reports a query it could not forward.
    verdict = VERDICT_ERROR if f.error else \
        VERDICT_DROPPED if not f.response and not f.allowed else 0
    return L7Message(ev, f.time_ns, f.response, f.latency_ns, None, None, f.message,
                     verdict=verdict,
                     policy_set=policy_set, policy_field=_FIELDS[True, f.allowed],
                     observation_source="proxy")

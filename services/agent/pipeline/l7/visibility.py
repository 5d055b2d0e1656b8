"""Which traffic is parsed at L7: Cilium's proxy-visibility syntax, turned into the
datapath's l7_sel entries.

A rule `<Ingress/9080/TCP/HTTP>` on an endpoint means: requests entering the
endpoint on port 9080 and the answers leaving it are HTTP; `<Egress/53/UDP/DNS>`
means the endpoint's queries to port 53 and the answers coming back are DNS. The
same rules given to the agent (--l7-visibility) apply to every endpoint; an
endpoint adds its own with the annotation Cilium users know.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from ...datapath.event import (L7_DNS, L7_HTTP, L7_MODE_SPORT, POINT_FROM_ENDPOINT,
                               POINT_TO_ENDPOINT)

ANNOTATION = "policy.cilium.io/proxy-visibility"
DEFAULT_RULES = "<Egress/53/UDP/DNS>,<Egress/53/TCP/DNS>"

_PROTOCOLS = {"HTTP": L7_HTTP, "DNS": L7_DNS}
_L4 = {"TCP": (6,), "UDP": (17,), "ANY": (6, 17)}
_RULE = re.compile(r"<([^<>]*)>")

SelKey = tuple[int, int, int, int]  # (ifindex, port, proto, mode)


class VisibilityError(ValueError):
    pass


@dataclass(frozen=True)
class VisibilityRule:
    ingress: bool
    port: int
    protos: tuple[int, ...]
    kind: int

    def __str__(self) -> str:
        l4 = {(6,): "TCP", (17,): "UDP"}.get(self.protos, "ANY")
        l7 = {L7_HTTP: "HTTP", L7_DNS: "DNS"}[self.kind]
        return f"<{'Ingress' if self.ingress else 'Egress'}/{self.port}/{l4}/{l7}>"


def parse_visibility(text: str) -> tuple[VisibilityRule, ...]:
    """`<Ingress/9080/TCP/HTTP>,<Egress/53/UDP/DNS>` -> rules; errors say which part."""
    text = text.strip()
    if not text:
        return ()
    rules = []
    rest = _RULE.sub("", text).replace(",", "").strip()
    if rest:
        raise VisibilityError(f"visibility {text!r}: {rest!r} is not inside <...>")
    for m in _RULE.finditer(text):
        parts = m.group(1).split("/")
        if len(parts) != 4:
            raise VisibilityError(f"visibility rule <{m.group(1)}>: want "
                                  "<Direction/Port/L4Protocol/L7Protocol>")
        direction, port_s, l4, l7 = (p.strip() for p in parts)
        if direction not in ("Ingress", "Egress"):
            raise VisibilityError(f"visibility rule <{m.group(1)}>: direction must be "
                                  f"Ingress or Egress, not {direction!r}")
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise VisibilityError(f"visibility rule <{m.group(1)}>: port must be 1-65535")
        if l4.upper() not in _L4:
            raise VisibilityError(f"visibility rule <{m.group(1)}>: L4 protocol must be "
                                  "TCP, UDP or ANY")
        if l7.upper() not in _PROTOCOLS:
            raise VisibilityError(f"visibility rule <{m.group(1)}>: L7 protocol {l7!r} is "
                                  "not supported (HTTP, DNS)")
        rules.append(VisibilityRule(direction == "Ingress", int(port_s), _L4[l4.upper()],
                                    _PROTOCOLS[l7.upper()]))
    return tuple(rules)


def selection_keys(ifindex: int, rules: Iterable[VisibilityRule]) -> dict[SelKey, int]:
    """The l7_sel entries for one endpoint interface.

    At an endpoint's interface, a request to the endpoint passes TC egress
    (POINT_TO_ENDPOINT) with the port as destination; its answers pass TC ingress
    (POINT_FROM_ENDPOINT) with the port as source. Egress rules are the mirror image.
    """
    out: dict[SelKey, int] = {}
    for r in rules:
        req_point = POINT_TO_ENDPOINT if r.ingress else POINT_FROM_ENDPOINT
        ans_point = POINT_FROM_ENDPOINT if r.ingress else POINT_TO_ENDPOINT
        for proto in r.protos:
            out.setdefault((ifindex, r.port, proto, req_point), r.kind)
            out.setdefault((ifindex, r.port, proto, ans_point | L7_MODE_SPORT), r.kind)
    return out

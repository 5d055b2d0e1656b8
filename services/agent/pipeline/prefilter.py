"""A request's filters as a necessary condition on a record, read before its flow
is built.

Building a flow.Flow (encode, then parse) costs microseconds of Python per record;
a history scan of an hour is hundreds of thousands of records, most of which the
filters reject. Some filter fields are answered exactly by what a record already
holds: the L4 ports and protocol by its raw datapath bytes (the encoder copies them
as they are), the pods by its endpoint snapshots. `record_prefilter` checks those
first, so a flow is built only for records that can still match; on stored
records (`pre.keep_stored`) before a record is even made of the stored columns.

The condition is conservative: it returns False only for records the full filter
(webb.filters.build_filter) rejects. A whitelist filter with a field it cannot
check passes on that field; a blacklist filter prunes only when every field it sets
is checked exactly here (ports and protocol of a record with raw bytes). Records
without raw bytes (already encoded, L7, stored as flow bytes) or without endpoints
are left to the full filter for what they lack.
"""
from __future__ import annotations

import struct
from typing import Any, Callable

from webb.filters.errors import FilterError
from webb.filters.k8s import compile_names, pod_matches
from webb.filters.port import parse_port

from ..datapath.event import EVENT_STRUCT, EVENT_SIZE, FlowEvent

PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6 = 6, 17, 1, 58
# Which raw protocols make the encoder set each Layer4 field a protocol filter names
# (threefour.py: TCP and UDP with ports, ICMPv4/v6; no other L4 field, and no L7 from
# a raw record): the names that select none of them match no raw record.
_PROTOCOLS: dict[str, frozenset[int]] = {
    "tcp": frozenset({PROTO_TCP}), "udp": frozenset({PROTO_UDP}),
    "icmp": frozenset({PROTO_ICMP, PROTO_ICMPV6}), "icmpv4": frozenset({PROTO_ICMP}),
    "icmpv6": frozenset({PROTO_ICMPV6}), "sctp": frozenset(), "vrrp": frozenset(),
    "igmp": frozenset(), "http": frozenset(), "dns": frozenset(), "kafka": frozenset(),
}
_WITH_PORTS = frozenset({PROTO_TCP, PROTO_UDP})  # the encoder sets ports for these only
_EXACT_ON_RAW = frozenset({"source_port", "destination_port", "protocol"})


def _offset(field: str, value: Any) -> int:
    """Where a field starts in a raw record, found from the layout itself (packing
    two records that differ in it), so a change of bpf/event.h needs none here."""
    base: dict[str, Any] = {f: 0 for f in FlowEvent._fields}
    base.update(saddr=b"\0" * 16, daddr=b"\0" * 16, smac=b"\0" * 6, dmac=b"\0" * 6)
    a = EVENT_STRUCT.pack(*FlowEvent(**base))
    b = EVENT_STRUCT.pack(*FlowEvent(**{**base, field: value}))
    return min(i for i in range(len(a)) if a[i] != b[i])


def _l4_struct() -> struct.Struct:
    """(sport, dport, proto) of a raw record in one unpack_from."""
    sport, dport, proto = _offset("sport", 0xFFFF), _offset("dport", 0xFFFF), _offset("proto", 0xFF)
    assert dport == sport + 2 and proto > dport + 2, "unexpected bpf/event.h layout"
    return struct.Struct(f"<{sport}xHH{proto - dport - 2}xB")


_L4 = _l4_struct()
_l4_of = _L4.unpack_from
# (sport, dport, proto) of each of concatenated raw records, at C speed.
L4_OF_RECORD = struct.Struct(_L4.format + f"{EVENT_SIZE - _L4.size}x")

L4Check = Callable[[tuple[int, int, int]], bool]
PodCheck = Callable[[Any, Any], bool]


def _l4_check(ff: Any) -> L4Check | None:
    """The filter's ports and protocol on (sport, dport, proto); None if it sets
    neither. Raises FilterError on a value build_filter rejects too."""
    sports = frozenset(parse_port(p, "source_port") for p in ff.source_port)
    dports = frozenset(parse_port(p, "destination_port") for p in ff.destination_port)
    protos: frozenset[int] | None = None
    if ff.protocol:
        protos = frozenset()
        for name in ff.protocol:
            known = _PROTOCOLS.get(name.lower())
            if known is None:
                raise FilterError(f"invalid protocol filter: unknown protocol: {name!r}")
            protos |= known
    if not sports and not dports and protos is None:
        return None
    if sports or dports:
        with_ports = _WITH_PORTS if protos is None else _WITH_PORTS & protos

        def ports(l4: tuple[int, int, int]) -> bool:
            return (l4[2] in with_ports and (not sports or l4[0] in sports)
                    and (not dports or l4[1] in dports))
        return ports
    only = protos or frozenset()

    def protocol(l4: tuple[int, int, int]) -> bool:
        return l4[2] in only
    return protocol


def _pod_check(ff: Any) -> PodCheck | None:
    src = compile_names(list(ff.source_pod), "source_pod") if ff.source_pod else None
    dst = compile_names(list(ff.destination_pod), "destination_pod") if ff.destination_pod else None
    if src is None and dst is None:
        return None

    def pods(s: Any, d: Any) -> bool:
        return ((src is None or pod_matches(src, s.namespace, s.name))
                and (dst is None or pod_matches(dst, d.namespace, d.name)))
    return pods


def record_prefilter(whitelist: Any, blacklist: Any,
                     then: Callable[[Any], bool] | None = None) -> Callable[[Any], bool] | None:
    """pre(rec) is False only for records the filters reject, else then(rec) (True
    without then: the full filter goes after it in one call per record, as a history
    scan calls it for every stored record of its window). None when nothing of the
    filters can be checked on a record (every record would pass)."""
    try:
        white = [(_l4_check(ff), _pod_check(ff)) for ff in whitelist]
        black = [c for ff in blacklist
                 if {f.name for f, _ in ff.ListFields()} <= _EXACT_ON_RAW
                 and (c := _l4_check(ff)) is not None]
    except FilterError:
        return None  # build_filter rejects the request: nothing is read
    if any(l4 is None and pods is None for l4, pods in white):
        white = []  # a whitelist filter this cannot check may match any record
    if not white and not black:
        return None
    size = EVENT_SIZE
    rest = then if then is not None else (lambda rec: True)

    def keep(l4: tuple[int, int, int], s: Any, d: Any) -> bool:
        """The same condition on a stored raw record's (sport, dport, proto) and
        endpoints, before a record is made of it (batch.unpack_batch)."""
        if white:
            for l4_ok, pods_ok in white:
                if (l4_ok is None or l4_ok(l4)) and (pods_ok is None or pods_ok(s, d)):
                    break
            else:
                return False
        for l4_hit in black:
            if l4_hit(l4):
                return False
        return True
    if len(white) == 1 and not black:  # the usual request: one filter, no blacklist
        (l4_only, pods_only), = white

        def pre_one(rec: Any) -> bool:
            raw = rec.raw
            if l4_only is not None and raw is not None and len(raw) >= size \
                    and not l4_only(_l4_of(raw)):
                return False
            if pods_only is not None:
                s, d = rec.src, rec.dst
                if s is not None and d is not None and not pods_only(s, d):
                    return False
            return rest(rec)
        pre_one.keep_stored = keep  # type: ignore[attr-defined]
        return pre_one

    def pre(rec: Any) -> bool:
        raw = rec.raw
        l4 = _l4_of(raw) if raw is not None and len(raw) >= size else None
        if white:
            s, d = rec.src, rec.dst
            has_eps = s is not None and d is not None
            for l4_ok, pods_ok in white:
                if ((l4_ok is None or l4 is None or l4_ok(l4))
                        and (pods_ok is None or not has_eps or pods_ok(s, d))):
                    break
            else:
                return False
        if l4 is not None:
            for l4_hit in black:
                if l4_hit(l4):
                    return False
        return rest(rec)
    pre.keep_stored = keep  # type: ignore[attr-defined]
    return pre

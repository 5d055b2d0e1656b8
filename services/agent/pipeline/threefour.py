"""Encodes datapath records straight into flow.Flow wire bytes.

Setting ~45 protobuf fields one by one costs ~20 µs a flow in Python; most of a
Flow is the same for every event of an endpoint (its Endpoint message) or of the
agent (node name, emitter), so those parts are encoded once and concatenated,
and only the per-event fields are encoded here. The bytes go to clients as they
are; a flow_pb2.Flow is parsed from them (in C) only when a filter or a field
mask needs one. Field numbers are those of proto/flow/flow.proto; the unit tests
check that parsing the bytes gives the fields a user expects.
"""
from __future__ import annotations

import socket
import uuid

from typing import Any, Callable

from webb.icmp import icmp_type_code

from ..datapath.event import (EVENT_DROP, EVENT_KERNEL_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE,
                             POINT_TO_ENDPOINT, REASON_NEW, FlowEvent)

# Values of flow.proto enums used here.
VERDICT_FORWARDED = 1
VERDICT_DROPPED = 2
CILIUM_EVENT_DROP = 1
CILIUM_EVENT_POLICY_VERDICT = 5
# Flow fields of the policies behind a verdict.
EGRESS_ALLOWED_BY, INGRESS_ALLOWED_BY = 21001, 21002
EGRESS_DENIED_BY, INGRESS_DENIED_BY = 21004, 21005
FLOW_TYPE_L3_L4 = 1
IPV4, IPV6 = 1, 2
TRAFFIC_INGRESS, TRAFFIC_EGRESS = 1, 2
POINT_FROM_ENDPOINT_PB, POINT_TO_ENDPOINT_PB = 5, 101
TRACE_REASON_NEW, TRACE_REASON_ESTABLISHED, TRACE_REASON_REPLY = 1, 2, 3
CILIUM_EVENT_TRACE = 4
TRACE_TO_LXC, TRACE_FROM_LXC = 0, 5  # Hubble's trace sub types

EMITTER_NAME = "webb"


def _varint(n: int) -> bytes:
    # Unrolled for up to 5 bytes (nanoseconds, seconds since 1970): a loop over a
    # bytearray costs several times as much, once per flow per timestamp.
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x200000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    if n < 0x10000000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80, n >> 21))
    if n < 0x800000000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80,
                      n >> 21 & 0x7F | 0x80, n >> 28))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Varints of every value below 2^16 (ports, lengths, field keys), computed once.
_V = [_varint(i) for i in range(65536)]


def varint(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"varint of a negative number: {n}")
    return _V[n] if n < 65536 else _varint(n)


def key(field: int, wire_type: int) -> bytes:
    return _V[(field << 3) | wire_type] if field < 8192 else _varint((field << 3) | wire_type)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message)."""
    return key(field, 2) + varint(len(payload)) + payload


def vi(field: int, value: int) -> bytes:
    """A varint field; proto3 leaves zero values out."""
    return key(field, 0) + varint(value) if value else b""


def s(field: int, text: str) -> bytes:
    return ld(field, text.encode()) if text else b""


_SECONDS: dict[int, bytes] = {}  # encoded `seconds` fields: flows come in runs of one second


def timestamp(ns: int) -> bytes:
    sec, nanos = divmod(ns, 1_000_000_000)
    head = _SECONDS.get(sec)
    if head is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        head = _SECONDS[sec] = vi(1, sec)
    return head + b"\x10" + _varint(nanos) if nanos else head


def encode_endpoint(ep_id: int, identity: int, namespace: str, labels: tuple[str, ...],
                    pod_name: str, workload_name: str, workload_kind: str,
                    cluster: str) -> bytes:
    out = vi(1, ep_id) + vi(2, identity) + s(3, namespace)
    out += b"".join(s(4, label) for label in labels)
    out += s(5, pod_name)
    if workload_name:
        out += ld(6, s(1, workload_name) + s(2, workload_kind))
    if pod_name:
        out += s(7, cluster)
    return out


_TCP_FLAG_ORDER = ((0x02, "SYN"), (0x10, "ACK"), (0x04, "RST"), (0x01, "FIN"), (0x08, "PSH"),
                   (0x20, "URG"), (0x40, "ECE"), (0x80, "CWR"))


def tcp_flags_summary(flags: int) -> str:
    """Hubble's order: SYN, ACK, RST, FIN, PSH, URG, ECE, CWR."""
    return ", ".join(name for bit, name in _TCP_FLAG_ORDER if flags & bit)


def _tcp_flags_message(flags: int) -> bytes:
    # TCPFlags fields: FIN=1 SYN=2 RST=3 PSH=4 ACK=5 URG=6 ECE=7 CWR=8
    return b"".join(vi(i + 1, 1) for i, bit in enumerate((0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80))
                    if flags & bit)


_TCP_FLAGS = [ld(3, _tcp_flags_message(f)) for f in range(256)]
_TCP_SUMMARY = [s(100000, "TCP Flags: " + tcp_flags_summary(f)) for f in range(256)]

_ICMP_SUMMARY: dict[tuple[int, int, int], bytes] = {}


def icmp_summary(proto: int, icmp_type: int, code: int) -> bytes:
    """Hubble's "ICMPv4 DestinationUnreachable(Port)", encoded once per kind."""
    key_ = (proto, icmp_type, code)
    b = _ICMP_SUMMARY.get(key_)
    if b is None:
        v6 = proto == 58
        text = ("ICMPv6 " if v6 else "ICMPv4 ") + icmp_type_code(icmp_type, code, v6)
        b = _ICMP_SUMMARY[key_] = s(100000, text)
    return b


_UDP_SUMMARY = s(100000, "UDP")

_IS_REPLY = {True: ld(26, vi(1, 1)) + vi(16, 1), False: ld(26, b"")}
_EVENT_TYPE = {
    POINT_TO_ENDPOINT: ld(19, vi(1, CILIUM_EVENT_TRACE) + vi(2, TRACE_TO_LXC))
    + vi(24, POINT_TO_ENDPOINT_PB),
    0: ld(19, vi(1, CILIUM_EVENT_TRACE) + vi(2, TRACE_FROM_LXC)) + vi(24, POINT_FROM_ENDPOINT_PB),
}
# traffic_direction by (observation point, is_reply): the connection's direction as
# seen from the endpoint at this interface.
_DIRECTION = {(0, False): vi(22, TRAFFIC_EGRESS), (0, True): vi(22, TRAFFIC_INGRESS),
              (POINT_TO_ENDPOINT, False): vi(22, TRAFFIC_INGRESS),
              (POINT_TO_ENDPOINT, True): vi(22, TRAFFIC_EGRESS)}
_TRACE_REASON = {(True, False): vi(36, TRACE_REASON_NEW), (True, True): vi(36, TRACE_REASON_REPLY),
                 (False, False): vi(36, TRACE_REASON_ESTABLISHED),
                 (False, True): vi(36, TRACE_REASON_ESTABLISHED)}
_IP_VERSION = {4: vi(3, IPV4), 6: vi(3, IPV6)}

_ntop = socket.inet_ntop
_AF4, _AF6 = socket.AF_INET, socket.AF_INET6
_K1, _K2 = key(1, 0), key(2, 0)


def summary_text(ev: FlowEvent) -> str:
    if ev.proto == 6:
        return "TCP Flags: " + tcp_flags_summary(ev.tcp_flags)
    if ev.proto == 17:
        return "UDP"
    if ev.proto in (1, 58):
        v6 = ev.proto == 58
        return ("ICMPv6 " if v6 else "ICMPv4 ") + icmp_type_code(ev.icmp_type, ev.icmp_code, v6)
    return f"IP protocol {ev.proto}"


def ip_text(family: int, raw: bytes) -> str:
    return _ntop(socket.AF_INET, raw[:4]) if family == 4 else _ntop(socket.AF_INET6, raw)


def _no_policies(set_id: int, field: int) -> bytes:
    return b""


def _unknown_kernel_reason(value: int) -> tuple[str, int]:
    return str(value), 0


def _no_services(ev: FlowEvent) -> bytes:
    return b""


class FlowEncoder:
    def __init__(self, node_name: str, version: str, ifnames: dict[int, str]) -> None:
        self.node_name = node_name
        self.ifnames = ifnames  # kept current by the agent as interfaces come and go
        emitter = ld(41, s(1, EMITTER_NAME) + s(2, version))
        tail = vi(10, FLOW_TYPE_L3_L4) + s(11, node_name)
        self._static = emitter + vi(2, VERDICT_FORWARDED) + tail
        self._static_dropped = emitter + vi(2, VERDICT_DROPPED) + tail
        # Set by the agent: a policy set's flow.Policy fields, and a kernel drop
        # reason's (name, Hubble DropReason).
        self.policies: Callable[[int, int], bytes] = _no_policies
        self.kernel_reason: Callable[[int], tuple[str, int]] = _unknown_kernel_reason
        # Set in Kubernetes mode: Flow fields 20/21 (source/destination_service) of an
        # event, from the Services the agent watches (k8s/services.py).
        self.services: Callable[[FlowEvent], bytes] = _no_services
        self._node_field = s(1000, node_name)
        salt = uuid.uuid4().hex
        # Stable per flow (so two reads agree), distinct across agents and restarts.
        self._uuid_prefix = f"{salt[:8]}-{salt[8:12]}-{salt[12:16]}-"
        self._iface: dict[int, bytes] = {}
        # Set by the agent: names from DNS answers (l7/fqdn.py FQDNCache).
        self.fqdn: Any = None

    def set_uuid_salt(self, salt: str) -> None:
        """Flow UUIDs are salt + seq; the history store keeps its salt across restarts."""
        if len(salt) < 16:
            raise ValueError("a UUID salt needs 16 hex digits")
        self._uuid_prefix = f"{salt[:8]}-{salt[8:12]}-{salt[12:16]}-"

    def flow_uuid(self, seq: int) -> str:
        return f"{self._uuid_prefix}{(seq >> 48) & 0xFFFF:04x}-{seq & 0xFFFFFFFFFFFF:012x}"

    def _interface(self, ifindex: int) -> bytes:
        b = self._iface.get(ifindex)
        name = self.ifnames.get(ifindex, "")
        if b is None or not b.endswith(name.encode()):
            b = self._iface[ifindex] = ld(28, vi(1, ifindex) + s(2, name))
        return b

    def encode(self, ev: FlowEvent, time_ns: int, seq: int, src: bytes, dst: bytes) -> bytes:
        """Flow bytes for one trace record; src/dst are encoded Endpoint messages.

        Written out flat with table lookups: every function call here costs as
        much as the field it would encode.
        """
        V = _V
        fam = ev.family
        proto = ev.proto
        if proto == 6:
            p = _K1 + V[ev.sport] + _K2 + V[ev.dport] + _TCP_FLAGS[ev.tcp_flags]
            l4 = b"\x32" + V[len(p) + 2] + b"\x0a" + V[len(p)] + p
            summary = _TCP_SUMMARY[ev.tcp_flags]
        elif proto == 17:
            p = _K1 + V[ev.sport] + _K2 + V[ev.dport]
            l4 = b"\x32" + V[len(p) + 2] + b"\x12" + V[len(p)] + p
            summary = _UDP_SUMMARY
        elif proto == 1 or proto == 58:
            p = _K1 + V[ev.icmp_type] + _K2 + V[ev.icmp_code]
            l4 = b"\x32" + V[len(p) + 2] + (b"\x1a" if proto == 1 else b"\x22") + V[len(p)] + p
            summary = icmp_summary(proto, ev.icmp_type, ev.icmp_code)
        else:
            l4 = b""
            summary = s(100000, f"IP protocol {proto}")
        sec, nanos = divmod(time_ns, 1_000_000_000)
        ts = b"\x08" + varint(sec) + b"\x10" + varint(nanos)
        uid = self.flow_uuid(seq).encode()
        eth = b"\x0a\x11" + ev.smac.hex(":").encode() + b"\x12\x11" + ev.dmac.hex(":").encode()
        if fam == 4:
            sip, dip = _ntop(_AF4, ev.saddr[:4]).encode(), _ntop(_AF4, ev.daddr[:4]).encode()
        else:
            sip, dip = _ntop(_AF6, ev.saddr).encode(), _ntop(_AF6, ev.daddr).encode()
        ip = b"\x0a" + V[len(sip)] + sip + b"\x12" + V[len(dip)] + dip + _IP_VERSION[fam]
        reply = ev.is_reply != 0
        point = ev.point
        et = ev.event_type
        static = self._static
        if et == EVENT_TRACE:
            kind = (_EVENT_TYPE[point] + _DIRECTION[(point, reply)]
                    + _TRACE_REASON[(ev.reason == REASON_NEW, reply)] + _IS_REPLY[reply])
        else:
            kind, summary = self._verdict(ev, summary)
            if et != EVENT_POLICY_VERDICT:
                static = self._static_dropped
            if et == EVENT_KERNEL_DROP and not any(ev.smac) and not any(ev.dmac):
                eth = b""
        return b"".join((
            b"\x0a", V[len(ts)], ts,
            b"\x92\x02", V[len(uid)], uid,
            static,
            b"\x22" + V[len(eth)] + eth if eth else b"",
            b"\x2a", V[len(ip)], ip,
            l4,
            b"\x42", V[len(src)], src,
            b"\x4a", V[len(dst)], dst,
            kind,
            self._interface(ev.ifindex) if ev.ifindex else b"",
            self.services(ev),
            summary,
            self.fqdn.fields(ev.saddr, ev.daddr, time_ns)
            if self.fqdn is not None and self.fqdn.active else b"",
        ))

    def _verdict(self, ev: FlowEvent, summary: bytes) -> tuple[bytes, bytes]:
        """Fields of policy verdicts and drops (rarer than traces: written plainly)."""
        ingress = ev.point == POINT_TO_ENDPOINT
        direction = vi(22, TRAFFIC_INGRESS if ingress else TRAFFIC_EGRESS)
        if ev.event_type == EVENT_POLICY_VERDICT:
            field = INGRESS_ALLOWED_BY if ingress else EGRESS_ALLOWED_BY
            return (ld(19, vi(1, CILIUM_EVENT_POLICY_VERDICT)) + direction
                    + vi(23, ev.match_type) + _IS_REPLY[False]
                    + self.policies(ev.policy_set, field)), summary
        count = ld(21007, vi(1 if ingress else 2, ev.packets))  # drops this event stands for
        if ev.event_type == EVENT_DROP:
            code = ev.drop_reason
            field = INGRESS_DENIED_BY if ingress else EGRESS_DENIED_BY
            return (vi(3, code) + ld(19, vi(1, CILIUM_EVENT_DROP) + vi(2, code)) + direction
                    + vi(25, code) + self.policies(ev.policy_set, field) + count), summary
        # A drop the kernel made: the closest Hubble reason, the kernel's name kept.
        name, code = self.kernel_reason(ev.drop_reason)
        text = summary_text(ev)
        return (vi(3, code) + ld(19, vi(1, CILIUM_EVENT_DROP) + vi(2, code)) + direction
                + vi(25, code) + s(43, name) + count), s(100000, f"{text} (kernel: {name})")

    def response(self, flow: bytes, time_ns: int) -> bytes:
        """observer.GetFlowsResponse bytes around encoded flow bytes."""
        return ld(1, flow) + self._node_field + ld(1001, timestamp(time_ns))

"""flow.proto written by hand: the protobuf wire primitives the agent's encoders use, and
the field numbers and enum values they write, read from flow_pb2's descriptors.

The agent writes flow.Flow bytes itself instead of filling flow_pb2 messages (~20 µs a
flow in Python; see threefour.py). Every encoder (L3/L4 threefour.py, L7
l7/encode.py, the proxy's l7proxy/flows.py, the policy engine's flow.Policy fields,
Kubernetes Services) takes its numbers from here, so proto/flow/flow.proto is the one
place that says where a field goes; tests/unit/test_threefour_wire.py and
test_l7_wire.py pin the bytes and check them against flow_pb2's parser.
"""
from __future__ import annotations

from typing import Any

from google.protobuf import timestamp_pb2, wrappers_pb2

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb


def _fields(message: Any) -> Any:
    """Field numbers of a message by name: _fields(fpb.Flow).uuid == 34."""
    return type("Fields", (), {f.name: f.number for f in message.DESCRIPTOR.fields})


F = _fields(fpb.Flow)
EP = _fields(fpb.Endpoint)
WORKLOAD = _fields(fpb.Workload)
L4 = _fields(fpb.Layer4)
PORTS = _fields(fpb.TCP)  # UDP's source/destination_port have the same numbers
assert (PORTS.source_port, PORTS.destination_port) == (_fields(fpb.UDP).source_port,
                                                       _fields(fpb.UDP).destination_port)
ICMP = _fields(fpb.ICMPv4)  # ICMPv6's type/code have the same numbers
ETH = _fields(fpb.Ethernet)
IPF = _fields(fpb.IP)
EVT = _fields(fpb.CiliumEventType)
IFACE = _fields(fpb.NetworkInterface)
AGG = _fields(fpb.Aggregate)
EMITTER = _fields(fpb.Emitter)
POLICY = _fields(fpb.Policy)
SERVICE = _fields(fpb.Service)
LAYER7 = _fields(fpb.Layer7)
HTTP = _fields(fpb.HTTP)
HTTP_HEADER = _fields(fpb.HTTPHeader)
DNS = _fields(fpb.DNS)
TS = _fields(timestamp_pb2.Timestamp)
BOOL = _fields(wrappers_pb2.BoolValue)
RESP = _fields(opb.GetFlowsResponse)

# Values of flow.proto enums.
VERDICT_FORWARDED, VERDICT_DROPPED = fpb.FORWARDED, fpb.DROPPED
VERDICT_REDIRECTED, VERDICT_ERROR = fpb.REDIRECTED, fpb.ERROR
FLOW_TYPE_L3_L4, FLOW_TYPE_L7 = fpb.L3_L4, fpb.L7
L7_REQUEST, L7_RESPONSE = fpb.REQUEST, fpb.RESPONSE
IPV4, IPV6 = fpb.IPv4, fpb.IPv6
TRAFFIC_INGRESS, TRAFFIC_EGRESS = fpb.INGRESS, fpb.EGRESS
POINT_FROM_ENDPOINT_PB, POINT_TO_ENDPOINT_PB = fpb.FROM_ENDPOINT, fpb.TO_ENDPOINT
POINT_TO_PROXY_PB = fpb.TO_PROXY
TRACE_REASON_NEW, TRACE_REASON_ESTABLISHED, TRACE_REASON_REPLY = fpb.NEW, fpb.ESTABLISHED, fpb.REPLY
# Flow fields of the policies behind a verdict.
EGRESS_ALLOWED_BY, INGRESS_ALLOWED_BY = F.egress_allowed_by, F.ingress_allowed_by
EGRESS_DENIED_BY, INGRESS_DENIED_BY = F.egress_denied_by, F.ingress_denied_by
# Cilium's monitor message types and trace sub types (CiliumEventType is two int32s
# in flow.proto: these values are Cilium's, not an enum flow_pb2 knows).
CILIUM_EVENT_DROP = 1
CILIUM_EVENT_TRACE = 4
CILIUM_EVENT_POLICY_VERDICT = 5
CILIUM_EVENT_L7 = 129  # MessageTypeAccessLog: what Hubble's L7 flows carry
TRACE_TO_LXC, TRACE_TO_PROXY, TRACE_FROM_LXC = 0, 1, 5

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
_T_NANOS = key(TS.nanos, 0)

# The low 14 bits of a varint as its first two (continued) bytes: a nanoseconds value
# (< 2^30) is then two table look-ups (this, and _V for the rest) instead of _varint's
# arithmetic, once per response sent (GetFlows and batches build each response's time).
_LOW14 = [bytes(((i & 0x7F) | 0x80, (i >> 7) | 0x80)) for i in range(1 << 14)]


def nanos_varint(n: int) -> bytes:
    """varint(n) for 0 <= n < 2^30 (a Timestamp's nanos)."""
    return _LOW14[n & 0x3FFF] + _V[n >> 14] if n >= 0x4000 else _V[n]


def timestamp(ns: int) -> bytes:
    """A google.protobuf.Timestamp message's fields."""
    sec, nanos = divmod(ns, 1_000_000_000)
    head = _SECONDS.get(sec)
    if head is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        head = _SECONDS[sec] = vi(TS.seconds, sec)
    return head + _T_NANOS + nanos_varint(nanos) if nanos else head


_T_UUID, _T_SRC, _T_DST = key(F.uuid, 2), key(F.source, 2), key(F.destination, 2)


def with_endpoints(body: bytes, uuid: bytes, src: bytes, dst: bytes) -> bytes:
    """A whole flow.Flow: its body and uuid, source and destination, the latter two
    encoded Endpoint messages (written even when empty, as before). Every encoder
    leaves these three out of the body the ring keeps; they are added per read."""
    V = _V
    return b"".join((body, _T_UUID + V[len(uuid)] if uuid else b"", uuid,
                     _T_SRC, V[len(src)], src, _T_DST, V[len(dst)], dst))


UUID_LEN = 36  # a flow's UUID: 19 characters of salt, then "%04x-%012x" of its seq
SEQ_48 = 1 << 48  # below it (always, in practice) the seq part is b"0000-%012x" % seq


def uuid_field_head(prefix: bytes) -> bytes:
    """flow.Flow's uuid key and length, the salt part of every UUID (prefix: 19 bytes)
    and the "0000-" of a seq below SEQ_48: a flow's uuid field is this + b"%012x" % seq."""
    return _T_UUID + _V[UUID_LEN] + prefix + b"0000-"


def endpoint_fields(src: bytes, dst: bytes) -> bytes:
    """The source and destination fields of with_endpoints, for two encoded Endpoints."""
    V = _V
    return b"".join((_T_SRC, V[len(src)], src, _T_DST, V[len(dst)], dst))

"""L3/L4 parser: datapath records to flow.Flow, the way Hubble's threefour parser does.

Runs only for flows somebody reads (a client, a filter, the metrics); the
per-event path in the agent stops at FlowRecord.
"""
from __future__ import annotations

import socket
import uuid

from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import BoolValue

from webb.api.flow import flow_pb2 as fpb

from .datapath.event import (EVENT_TRACE, POINT_FROM_ENDPOINT, POINT_TO_ENDPOINT,
                             REASON_NEW)
from .endpoint import Endpoint
from .record import FlowRecord

EMITTER_NAME = "webb"

# Hubble's trace sub types (monitor API): 0 to-endpoint, 5 from-endpoint.
TRACE_TO_LXC = 0
TRACE_FROM_LXC = 5
CILIUM_EVENT_TRACE = 4

_TCP_FLAG_ORDER = (  # Hubble's summary order
    (0x02, "SYN"), (0x10, "ACK"), (0x04, "RST"), (0x01, "FIN"), (0x08, "PSH"),
    (0x20, "URG"), (0x40, "ECE"), (0x80, "CWR"),
)

_ICMP4_TYPES = {0: "EchoReply", 3: "DestinationUnreachable", 4: "SourceQuench", 5: "Redirect",
                8: "EchoRequest", 9: "RouterAdvertisement", 10: "RouterSolicitation",
                11: "TimeExceeded", 12: "ParameterProblem", 13: "TimestampRequest",
                14: "TimestampReply"}
_ICMP6_TYPES = {1: "DestinationUnreachable", 2: "PacketTooBig", 3: "TimeExceeded",
                4: "ParameterProblem", 128: "EchoRequest", 129: "EchoReply",
                133: "RouterSolicitation", 134: "RouterAdvertisement",
                135: "NeighborSolicitation", 136: "NeighborAdvertisement", 137: "Redirect"}


def tcp_flags_summary(flags: int) -> str:
    return ", ".join(name for bit, name in _TCP_FLAG_ORDER if flags & bit)


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _ip(family: int, raw: bytes) -> str:
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def _fill_endpoint(dst: fpb.Endpoint, ep: Endpoint) -> None:
    dst.ID = ep.id
    dst.identity = ep.identity
    if ep.name:
        dst.namespace = ep.namespace
        dst.pod_name = ep.name
        dst.cluster_name = ep.cluster
        if ep.workload_name:
            dst.workloads.add(name=ep.workload_name, kind=ep.workload_kind)
    dst.labels.extend(ep.identity_labels)


class FlowParser:
    def __init__(self, node_name: str, ifnames: dict[int, str], version: str) -> None:
        self.node_name = node_name
        self.ifnames = ifnames  # kept current by the agent as interfaces come and go
        self.version = version
        self._uuid_salt = uuid.uuid4().int >> 64

    def flow_uuid(self, seq: int) -> str:
        return str(uuid.UUID(int=(self._uuid_salt << 64) | (seq & 0xFFFFFFFFFFFFFFFF)))

    def build(self, rec: FlowRecord) -> fpb.Flow:
        ev = rec.ev
        f = fpb.Flow()
        t = rec.time_ns
        f.time.CopyFrom(Timestamp(seconds=t // 1_000_000_000, nanos=t % 1_000_000_000))
        f.uuid = self.flow_uuid(rec.seq)
        f.node_name = self.node_name
        f.emitter.name = EMITTER_NAME
        f.emitter.version = self.version
        f.Type = fpb.L3_L4
        if ev.event_type == EVENT_TRACE:
            f.verdict = fpb.FORWARDED
            f.event_type.type = CILIUM_EVENT_TRACE
            if ev.point == POINT_TO_ENDPOINT:
                f.event_type.sub_type = TRACE_TO_LXC
                f.trace_observation_point = fpb.TO_ENDPOINT
            else:
                f.event_type.sub_type = TRACE_FROM_LXC
                f.trace_observation_point = fpb.FROM_ENDPOINT
        f.ethernet.source = _mac(ev.smac)
        f.ethernet.destination = _mac(ev.dmac)
        f.IP.source = _ip(ev.family, ev.saddr)
        f.IP.destination = _ip(ev.family, ev.daddr)
        f.IP.ipVersion = fpb.IPv4 if ev.family == 4 else fpb.IPv6
        summary = ""
        proto = ev.proto
        if proto == socket.IPPROTO_TCP:
            tcp = f.l4.TCP
            tcp.source_port = ev.sport
            tcp.destination_port = ev.dport
            fl = ev.tcp_flags
            flags = tcp.flags
            flags.FIN = bool(fl & 0x01)
            flags.SYN = bool(fl & 0x02)
            flags.RST = bool(fl & 0x04)
            flags.PSH = bool(fl & 0x08)
            flags.ACK = bool(fl & 0x10)
            flags.URG = bool(fl & 0x20)
            flags.ECE = bool(fl & 0x40)
            flags.CWR = bool(fl & 0x80)
            summary = "TCP Flags: " + tcp_flags_summary(fl)
        elif proto == socket.IPPROTO_UDP:
            f.l4.UDP.source_port = ev.sport
            f.l4.UDP.destination_port = ev.dport
            summary = "UDP"
        elif proto == socket.IPPROTO_ICMP:
            f.l4.ICMPv4.type = ev.icmp_type
            f.l4.ICMPv4.code = ev.icmp_code
            summary = "ICMPv4 " + _ICMP4_TYPES.get(ev.icmp_type, f"Type{ev.icmp_type}")
        elif proto == socket.IPPROTO_ICMPV6:
            f.l4.ICMPv6.type = ev.icmp_type
            f.l4.ICMPv6.code = ev.icmp_code
            summary = "ICMPv6 " + _ICMP6_TYPES.get(ev.icmp_type, f"Type{ev.icmp_type}")
        else:
            summary = f"IP protocol {proto}"
        f.Summary = summary
        _fill_endpoint(f.source, rec.src)
        _fill_endpoint(f.destination, rec.dst)
        reply = bool(ev.is_reply)
        f.is_reply.CopyFrom(BoolValue(value=reply))
        f.reply = reply
        # Direction of the connection relative to the endpoint at this interface.
        if ev.point == POINT_FROM_ENDPOINT:
            f.traffic_direction = fpb.INGRESS if reply else fpb.EGRESS
        else:
            f.traffic_direction = fpb.EGRESS if reply else fpb.INGRESS
        if ev.reason == REASON_NEW:
            f.trace_reason = fpb.REPLY if reply else fpb.NEW
        else:
            f.trace_reason = fpb.ESTABLISHED
        ifname = self.ifnames.get(ev.ifindex)
        f.interface.index = ev.ifindex
        if ifname:
            f.interface.name = ifname
        return f

    def flow(self, rec: FlowRecord) -> fpb.Flow:
        f = rec.flow
        if f is None:
            f = rec.flow = self.build(rec)
        return f

"""Drops and policy verdicts as flows, and what kernel drops are made of: drop reason
names and Hubble reasons, the tracepoint format, BTF offsets of the running kernel."""
from __future__ import annotations

import os
import struct

import pytest

from webb.api.flow import flow_pb2 as fpb
from webb_agent.datapath import kernel_drops as kd
from webb_agent.datapath.btf import BTF, BTFError
from webb_agent.datapath.event import (EVENT_DROP, EVENT_KERNEL_DROP, EVENT_POLICY_VERDICT,
                                       POINT_FROM_ENDPOINT, POINT_TO_ENDPOINT, VERDICT_REDIRECT,
                                       FlowEvent)
from webb_agent.pipeline.flow_wire import ld, s, vi
from webb_agent.stores.endpoints import packed_ip
from webb_agent.pipeline.wire_cache import FlowWireCache
from webb_agent.pipeline.record import WORLD, FlowRecord


def event(event_type, point=POINT_TO_ENDPOINT, **kw) -> FlowEvent:
    base = dict(ts=1, packets=1, bytes=60, saddr=packed_ip("10.0.0.1"),
                daddr=packed_ip("10.0.0.2"), smac=b"\x02" * 6, dmac=b"\x04" * 6, sport=40000,
                dport=9080, ifindex=7, pkt_len=60, event_type=event_type, reason=0, family=4,
                proto=6, tcp_flags=0x02, point=point, is_reply=0, icmp_type=0, icmp_code=0)
    base.update(kw)
    return FlowEvent(**base)


def parse(ev: FlowEvent) -> fpb.Flow:
    p = FlowWireCache("n1", {7: "lxc1"}, "1.0+webb")
    p.encoder.policies = lambda set_id, field: ld(field, s(1, f"pol{set_id}") + s(2, "ns")
                                                  + vi(4, 3) + s(5, "CiliumNetworkPolicy"))
    p.encoder.kernel_reason = lambda v: ("NO_SOCKET", 178) if v == 3 else (str(v), 0)
    return p.flow(FlowRecord(ev, 1_700_000_000_000_000_000, WORLD, WORLD))


def test_policy_drop_flow():
    f = parse(event(EVENT_DROP, drop_reason=133, policy_set=5, packets=42, remote_id=300))
    assert f.verdict == fpb.DROPPED and f.drop_reason == 133
    assert f.drop_reason_desc == fpb.POLICY_DENIED
    assert (f.event_type.type, f.event_type.sub_type) == (1, 133)
    assert f.traffic_direction == fpb.INGRESS and f.Type == fpb.L3_L4
    assert [(p.name, p.namespace, p.revision) for p in f.ingress_denied_by] == [("pol5", "ns", 3)]
    assert not f.egress_denied_by and not f.ingress_allowed_by
    assert f.aggregate.ingress_flow_count == 42
    assert f.trace_observation_point == fpb.UNKNOWN_POINT and not f.HasField("is_reply")
    assert f.Summary == "TCP Flags: SYN" and f.interface.name == "lxc1"
    eg = parse(event(EVENT_DROP, point=POINT_FROM_ENDPOINT, drop_reason=133, policy_set=1))
    assert eg.traffic_direction == fpb.EGRESS and [p.name for p in eg.egress_denied_by] == ["pol1"]
    assert eg.aggregate.egress_flow_count == 1


def test_policy_verdict_flow():
    f = parse(event(EVENT_POLICY_VERDICT, policy_set=2, match_type=2))
    assert f.verdict == fpb.FORWARDED and f.event_type.type == 5
    assert f.policy_match_type == 2 and f.traffic_direction == fpb.INGRESS
    assert [p.name for p in f.ingress_allowed_by] == ["pol2"]
    assert f.HasField("is_reply") and f.is_reply.value is False
    eg = parse(event(EVENT_POLICY_VERDICT, point=POINT_FROM_ENDPOINT, policy_set=2, match_type=4))
    assert [p.name for p in eg.egress_allowed_by] == ["pol2"] and eg.policy_match_type == 4


def test_policy_verdict_to_the_proxy_is_redirected():
    """Cilium's policy-verdict action "redirect" (a connection L7 rules send to the
    proxy) is Hubble's verdict REDIRECTED; the rest of the flow as any allow."""
    f = parse(event(EVENT_POLICY_VERDICT, reason=VERDICT_REDIRECT, policy_set=2, match_type=2))
    assert f.verdict == fpb.REDIRECTED and f.event_type.type == 5
    assert [p.name for p in f.ingress_allowed_by] == ["pol2"] and f.policy_match_type == 2
    assert f.traffic_direction == fpb.INGRESS and f.Type == fpb.L3_L4


def test_kernel_drop_flow_keeps_the_kernel_reason():
    f = parse(event(EVENT_KERNEL_DROP, drop_reason=3, smac=b"\0" * 6, dmac=b"\0" * 6, packets=3))
    assert f.verdict == fpb.DROPPED and f.drop_reason_desc == fpb.SOCKET_LOOKUP_FAILED
    assert (f.event_type.type, f.event_type.sub_type) == (1, 178)
    assert f.ext_drop_reason_desc == "NO_SOCKET"
    assert f.Summary == "TCP Flags: SYN (kernel: NO_SOCKET)"
    assert not f.HasField("ethernet") and f.aggregate.ingress_flow_count == 3
    u = parse(event(EVENT_KERNEL_DROP, drop_reason=99, proto=17))
    assert u.drop_reason_desc == fpb.DROP_REASON_UNKNOWN and u.Summary == "UDP (kernel: 99)"


@pytest.mark.parametrize("name,code", [
    ("NO_SOCKET", fpb.SOCKET_LOOKUP_FAILED), ("TCP_CSUM", fpb.INVALID_PACKET_DROPPED),
    ("IP_CSUM", fpb.INVALID_PACKET_DROPPED), ("QDISC_DROP", fpb.DROP_RATE_LIMITED),
    ("CPU_BACKLOG", fpb.DROP_RATE_LIMITED), ("SOCKET_RCVBUFF", fpb.DROP_RATE_LIMITED),
    ("TCP_LISTEN_OVERFLOW", fpb.DROP_RATE_LIMITED), ("NETFILTER_DROP", fpb.POLICY_DENIED),
    ("IP_RPFILTER", fpb.INVALID_SOURCE_IP), ("IP_NOPROTO", fpb.UNKNOWN_L4_PROTOCOL),
    ("IP_OUTNOROUTES", fpb.FIB_LOOKUP_FAILED), ("PKT_TOO_SMALL", fpb.CT_TRUNCATED_OR_INVALID_HEADER),
    ("SOMETHING_NEW", fpb.DROP_REASON_UNKNOWN), ("TC_INGRESS", fpb.DROP_REASON_UNKNOWN),
])
def test_closest_hubble_reason(name, code):
    assert kd.hubble_reason(name) == code


FORMAT = """name: kfree_skb
ID: 2310
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;

print fmt: "skbaddr=%p reason: %s", REC->skbaddr, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, { 73, "TC_INGRESS" })
"""


def test_tracepoint_format_and_reason_names_from_it():
    f = kd.field_offsets(FORMAT)
    assert f["skbaddr"] == (8, 8) and f["protocol"] == (32, 2) and f["reason"] == (36, 4)

    class NoBTF:
        def enum(self, name):
            raise BTFError("none")
    reasons = kd.drop_reasons(NoBTF(), FORMAT)  # type: ignore[arg-type]
    assert reasons == {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 73: "TC_INGRESS"}
    assert kd.reason_name(reasons, 3) == "NO_SOCKET"
    assert kd.reason_name(reasons, (3 << 16) | 5) == "SUBSYS_3_5"
    assert kd.reason_name(reasons, 500) == "REASON_500"


def _btf_blob() -> bytes:
    """struct sk_buff { union { struct { void *next; void *dev; }; }; u32 mark; }
    and enum skb_drop_reason { SKB_CONSUMED = 1, SKB_DROP_REASON_NO_SOCKET = 3 }."""
    strs = b"\0sk_buff\0next\0dev\0mark\0skb_drop_reason\0SKB_CONSUMED\0SKB_DROP_REASON_NO_SOCKET\0u32\0"
    off = {n: strs.index(n.encode() + b"\0") for n in
           ("sk_buff", "next", "dev", "mark", "skb_drop_reason", "SKB_CONSUMED",
            "SKB_DROP_REASON_NO_SOCKET", "u32")}
    types = b""
    # 1: int u32
    types += struct.pack("<III", off["u32"], 1 << 24, 4) + struct.pack("<I", 32)
    # 2: ptr -> void
    types += struct.pack("<III", 0, 2 << 24, 0)
    # 3: anonymous struct { next, dev }
    types += struct.pack("<III", 0, (4 << 24) | 2, 16)
    types += struct.pack("<III", off["next"], 2, 0) + struct.pack("<III", off["dev"], 2, 64)
    # 4: anonymous union { struct 3 }
    types += struct.pack("<III", 0, (5 << 24) | 1, 16) + struct.pack("<III", 0, 3, 0)
    # 5: struct sk_buff { union 4; u32 mark at byte 16 }
    types += struct.pack("<III", off["sk_buff"], (4 << 24) | 2, 24)
    types += struct.pack("<III", 0, 4, 0) + struct.pack("<III", off["mark"], 1, 128)
    # 6: enum
    types += struct.pack("<III", off["skb_drop_reason"], (6 << 24) | 2, 4)
    types += struct.pack("<Ii", off["SKB_CONSUMED"], 1) + struct.pack("<Ii", off["SKB_DROP_REASON_NO_SOCKET"], 3)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strs))
    return hdr + types + strs


def test_btf_offsets_through_anonymous_members_and_enums():
    b = BTF(_btf_blob())
    assert b.member_offset("sk_buff", "dev") == 8
    assert b.member_offset("sk_buff", "mark") == 16
    assert b.member_size("sk_buff", "dev") == 8 and b.member_size("sk_buff", "mark") == 4
    assert b.enum("skb_drop_reason") == {"SKB_CONSUMED": 1, "SKB_DROP_REASON_NO_SOCKET": 3}
    assert kd.drop_reasons(b) == {1: "CONSUMED", 3: "NO_SOCKET"}
    with pytest.raises(BTFError):
        b.member_offset("sk_buff", "nope")
    with pytest.raises(BTFError):
        BTF(b"\0" * 30)


@pytest.mark.skipif(not os.path.exists("/sys/kernel/btf/vmlinux"), reason="no kernel BTF")
def test_running_kernel_btf_has_what_drop_c_needs():
    from webb_agent.datapath.btf import vmlinux

    b = vmlinux()
    reasons = kd.drop_reasons(b)
    assert "NO_SOCKET" in reasons.values() and "TC_INGRESS" in reasons.values()
    flags = kd.compile_flags(b, FORMAT, reasons)
    names = {f.split("=")[0][2:] for f in flags if f.startswith("-D")}
    assert {"SKB_DEV", "SKB_HEAD", "SKB_NETWORK_HEADER", "SKB_MARK", "DEV_NET", "NET_INUM",
            "R_TC_INGRESS", "TP_REASON"} <= names

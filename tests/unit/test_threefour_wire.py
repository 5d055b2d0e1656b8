"""threefour.py's flow.Flow bytes stay what they were when its field numbers and enum
values were literals (they now come from flow_pb2's descriptors): a digest over
encodings of every kind of event the datapath sends, and a parse of each that checks
the fields land where flow.proto puts them.

The content is pinned by a digest of each message re-serialized in field-number order
(the literal-numbered encoder's); the bytes as written, whose field order changed when
uuid, source and destination moved after the body (they are added per read, so the
ring keeps only the body), by a second digest."""
from __future__ import annotations

import hashlib
import socket

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb_agent.datapath.event import (EVENT_DROP, EVENT_KERNEL_DROP, EVENT_POLICY_VERDICT,
                                       EVENT_TRACE, POINT_FROM_ENDPOINT, POINT_TO_ENDPOINT,
                                       REASON_FLAGS, REASON_NEW, FlowEvent)
from webb_agent.pipeline.flow_wire import ld, s
from webb_agent.pipeline.threefour import FlowEncoder, encode_endpoint
from webb_agent.stores.endpoints import packed_ip

# sha256 of the encodings below re-serialized in field-number order: the same for the
# literal-numbered encoder (whose own bytes hashed to 4cabe54e...642f3e).
GOLDEN_CONTENT = "39a40612cebee547241438934746554ec20cd0c4f714e05e64cdc7ba67822fe4"
# sha256 of the bytes as written (body, then uuid, source, destination).
GOLDEN = "cb0d49ead3d5987603538b3676b3b4e13cd51f0d99df20f32e8d5ae516944b8d"


def ev(event_type=EVENT_TRACE, saddr="10.0.0.1", daddr="10.0.0.2", proto=socket.IPPROTO_TCP,
       point=POINT_FROM_ENDPOINT, reply=0, reason=REASON_NEW, flags=0x12, drop=0,
       icmp=(0, 0), macs=True, policy_set=0, match_type=0, proxy_port=0) -> FlowEvent:
    mac = (b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02") if macs else (b"\0" * 6,) * 2
    return FlowEvent(ts=1, packets=3, bytes=180, saddr=packed_ip(saddr), daddr=packed_ip(daddr),
                     smac=mac[0], dmac=mac[1], sport=40000, dport=8080, ifindex=7, pkt_len=60,
                     event_type=event_type, reason=reason, family=6 if ":" in saddr else 4,
                     proto=proto, tcp_flags=flags, point=point, is_reply=reply,
                     icmp_type=icmp[0], icmp_code=icmp[1], drop_reason=drop,
                     policy_set=policy_set, match_type=match_type, proxy_port=proxy_port)


EVENTS = [
    ev(), ev(point=POINT_TO_ENDPOINT), ev(reply=1, reason=REASON_FLAGS),
    ev(point=POINT_TO_ENDPOINT, reply=1), ev(reason=REASON_FLAGS),
    ev(saddr="fd00::1", daddr="fd00::2", proto=socket.IPPROTO_UDP),
    ev(proto=socket.IPPROTO_ICMP, icmp=(3, 3)),
    ev(saddr="fd00::1", daddr="fd00::2", proto=socket.IPPROTO_ICMPV6, icmp=(128, 0)),
    ev(proto=132),
    ev(EVENT_POLICY_VERDICT, point=POINT_TO_ENDPOINT, policy_set=4, match_type=2),
    ev(EVENT_POLICY_VERDICT, policy_set=5, match_type=1),
    ev(EVENT_DROP, point=POINT_TO_ENDPOINT, drop=133, policy_set=6),
    ev(EVENT_DROP, drop=181, policy_set=7),
    ev(EVENT_KERNEL_DROP, drop=2, macs=False),
    ev(EVENT_KERNEL_DROP, point=POINT_TO_ENDPOINT, drop=5, proto=socket.IPPROTO_UDP),
]


def encoder() -> FlowEncoder:
    e = FlowEncoder("node-a", "1.0+test", {7: "lxc1"})
    e.set_uuid_salt("0123456789abcdef0123")
    e.policies = lambda set_id, field: ld(field, s(1, f"policy-{set_id}") + s(2, "ns"))
    e.kernel_reason = lambda value: (f"REASON_{value}", 130 + value)
    return e


def encodings() -> list[bytes]:
    e = encoder()
    src = encode_endpoint(11, 1001, "ns", ("k8s:app=c",), "c", "c", "Deployment", "default")
    dst = encode_endpoint(12, 1002, "ns", ("k8s:app=s",), "s", "", "", "default")
    out = [e.encode(x, 1_700_000_000_123_456_789 + i, 1000 + i, src, dst)
           for i, x in enumerate(EVENTS)]
    out.append(e.response(out[0], 1_700_000_000_123_456_789))
    return out + [src, dst]


def test_encoding_unchanged():
    enc = encodings()
    n = len(EVENTS)
    canon = [fpb.Flow.FromString(b).SerializeToString(deterministic=True) for b in enc[:n]]
    canon.append(opb.GetFlowsResponse.FromString(enc[n]).SerializeToString(deterministic=True))
    assert hashlib.sha256(b"|".join(canon + enc[n + 1:])).hexdigest() == GOLDEN_CONTENT
    assert hashlib.sha256(b"|".join(enc)).hexdigest() == GOLDEN


def test_flow_uuid_bytes_is_the_encoded_flow_uuid():
    e = encoder()
    for seq in (0, 1, 0xABCDEF, 2**48 - 1, 2**48, 2**63 - 1):
        assert e.flow_uuid_bytes(seq) == e.flow_uuid(seq).encode()
        assert len(e.flow_uuid_bytes(seq)) == 36


def test_fields_where_flow_proto_puts_them():
    flows = [fpb.Flow.FromString(b) for b in encodings()[:len(EVENTS)]]
    f = flows[0]
    assert (f.verdict, f.Type, f.node_name, f.emitter.name) == (fpb.FORWARDED, fpb.L3_L4,
                                                                 "node-a", "webb")
    assert (f.IP.source, f.IP.destination, f.IP.ipVersion) == ("10.0.0.1", "10.0.0.2", fpb.IPv4)
    assert (f.l4.TCP.source_port, f.l4.TCP.destination_port) == (40000, 8080)
    assert f.l4.TCP.flags.SYN and f.l4.TCP.flags.ACK and not f.l4.TCP.flags.FIN
    assert (f.trace_observation_point, f.traffic_direction, f.trace_reason) == (
        fpb.FROM_ENDPOINT, fpb.EGRESS, fpb.NEW)
    assert f.source.ID == 11 and f.destination.pod_name == "s"
    assert f.interface.name == "lxc1" and f.time.nanos == 123_456_789
    assert flows[1].trace_observation_point == fpb.TO_ENDPOINT
    assert flows[2].trace_reason == fpb.ESTABLISHED and flows[2].is_reply.value
    assert flows[3].trace_reason == fpb.REPLY and flows[3].traffic_direction == fpb.EGRESS
    assert flows[4].trace_reason == fpb.ESTABLISHED
    assert flows[5].IP.ipVersion == fpb.IPv6 and flows[5].l4.HasField("UDP")
    assert flows[6].l4.ICMPv4.type == 3 and flows[7].l4.ICMPv6.type == 128
    verdict = flows[9]
    assert verdict.ingress_allowed_by[0].name == "policy-4" and verdict.policy_match_type == 2
    assert flows[10].egress_allowed_by[0].name == "policy-5"
    drop = flows[11]
    assert (drop.verdict, drop.drop_reason_desc, drop.ingress_denied_by[0].name) == (
        fpb.DROPPED, fpb.POLICY_DENIED, "policy-6")
    assert drop.aggregate.ingress_flow_count == 3 and flows[12].aggregate.egress_flow_count == 3
    kernel = flows[13]
    assert kernel.ext_drop_reason_desc == "REASON_2" and not kernel.HasField("ethernet")
    resp = opb.GetFlowsResponse.FromString(encodings()[len(EVENTS)])
    assert resp.flow == f and resp.node_name == "node-a"


def test_a_trace_of_a_packet_given_to_the_proxy_is_to_proxy():
    """bpf/flow.c sets proxy_port on the traces of a direction it steers to the L7
    proxy: Hubble's to-proxy trace (event sub type 1, TO_PROXY, proxy_port), its
    direction still the policy's (the point of the interface it was seen at)."""
    e = encoder()
    src = encode_endpoint(11, 1001, "ns", ("k8s:app=c",), "c", "c", "Deployment", "default")
    dst = encode_endpoint(12, 1002, "ns", ("k8s:app=s",), "s", "", "", "default")
    for point, direction in ((POINT_TO_ENDPOINT, fpb.INGRESS), (POINT_FROM_ENDPOINT, fpb.EGRESS)):
        f = fpb.Flow.FromString(e.encode(ev(point=point, proxy_port=15001), 1, 1, src, dst))
        assert (f.event_type.type, f.event_type.sub_type) == (4, 1)
        assert (f.trace_observation_point, f.proxy_port, f.traffic_direction) == (
            fpb.TO_PROXY, 15001, direction)
        assert (f.verdict, f.trace_reason, f.is_reply.value) == (fpb.FORWARDED, fpb.NEW, False)
    f = fpb.Flow.FromString(e.encode(ev(point=POINT_TO_ENDPOINT), 1, 1, src, dst))
    assert (f.trace_observation_point, f.proxy_port) == (fpb.TO_ENDPOINT, 0)

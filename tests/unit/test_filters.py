"""Unit tests for webb.filters (Hubble FlowFilter semantics)."""
from __future__ import annotations

import pytest

from webb.api.flow import flow_pb2 as pb
from webb.filters import FilterError, build_filter
from webb.filters.label_selector import SelectorError, parse
from webb.filters.labels import translate_selector

ACCESS_LOG = 129  # monitor API: L7 access log ("l7" events)
TRACE = 4


def allowed(flow, *whitelist, deny=()):
    """Build from keyword-built FlowFilters and evaluate one flow."""
    return build_filter(list(whitelist), list(deny))(flow)


def FF(**kw):
    return pb.FlowFilter(**kw)


def tcp_flow(**kw):
    base = dict(
        uuid="u-1",
        verdict=pb.FORWARDED,
        IP=pb.IP(source="10.0.0.1", destination="10.0.1.2", ipVersion=pb.IPv4),
        l4=pb.Layer4(TCP=pb.TCP(source_port=43210, destination_port=80,
                                flags=pb.TCPFlags(SYN=True, ACK=True))),
        source=pb.Endpoint(identity=1001, namespace="default", pod_name="xwing-7d9f",
                           labels=["k8s:app=xwing", "k8s:io.kubernetes.pod.namespace=default",
                                   "k8s:class=ship"]),
        destination=pb.Endpoint(identity=2002, namespace="empire", pod_name="deathstar-5c4",
                                labels=["k8s:app=deathstar", "k8s:tier=3"]),
        node_name="kind-worker",
        traffic_direction=pb.EGRESS,
        event_type=pb.CiliumEventType(type=TRACE, sub_type=3),
    )
    base.update(kw)
    return pb.Flow(**base)


def http_flow(code=200, method="GET", url="http://deathstar.empire.svc/v1/request-landing?x=1",
              headers=(), **kw):
    return tcp_flow(
        event_type=pb.CiliumEventType(type=ACCESS_LOG),
        l7=pb.Layer7(type=pb.RESPONSE, http=pb.HTTP(
            code=code, method=method, url=url,
            headers=[pb.HTTPHeader(key=k, value=v) for k, v in headers])),
        **kw)


def dns_flow(query="cilium.io.", **kw):
    return pb.Flow(
        verdict=pb.FORWARDED,
        IP=pb.IP(source="10.0.0.1", destination="10.96.0.10", ipVersion=pb.IPv4),
        l4=pb.Layer4(UDP=pb.UDP(source_port=5353, destination_port=53)),
        l7=pb.Layer7(dns=pb.DNS(query=query)),
        event_type=pb.CiliumEventType(type=ACCESS_LOG),
        **kw)


# --- combination semantics -------------------------------------------------------


class TestCombination:
    def test_no_filters_pass_everything(self):
        assert allowed(tcp_flow())
        assert allowed(pb.Flow())

    def test_empty_flow_filter_matches_everything(self):
        assert allowed(tcp_flow(), FF())
        assert not allowed(tcp_flow(), deny=[FF()])

    def test_fields_and_within_one_filter(self):
        flow = tcp_flow()
        assert allowed(flow, FF(source_pod=["xwing"], destination_port=["80"]))
        assert not allowed(flow, FF(source_pod=["xwing"], destination_port=["443"]))
        assert not allowed(flow, FF(source_pod=["tiefighter"], destination_port=["80"]))

    def test_values_or_within_one_field(self):
        flow = tcp_flow()
        assert allowed(flow, FF(destination_port=["443", "80"]))
        assert not allowed(flow, FF(destination_port=["443", "8080"]))

    def test_filters_or_across_list(self):
        flow = tcp_flow()
        assert allowed(flow, FF(destination_port=["443"]), FF(verdict=[pb.FORWARDED]))
        assert not allowed(flow, FF(destination_port=["443"]), FF(verdict=[pb.DROPPED]))

    def test_many_fields_and(self):
        flow = tcp_flow()
        full = FF(source_pod=["default/xwing"], destination_pod=["empire/"], verdict=[pb.FORWARDED],
                  protocol=["tcp"], destination_port=["80"], source_identity=[1001])
        assert allowed(flow, full)
        full.source_identity[:] = [7]
        assert not allowed(flow, full)

    def test_blacklist_only(self):
        assert not allowed(tcp_flow(), deny=[FF(verdict=[pb.FORWARDED])])
        assert allowed(tcp_flow(), deny=[FF(verdict=[pb.DROPPED])])

    def test_whitelist_minus_blacklist(self):
        flow = tcp_flow()
        allow = [FF(source_pod=["xwing"])]
        assert allowed(flow, *allow, deny=[FF(destination_port=["443"])])
        assert not allowed(flow, *allow, deny=[FF(destination_port=["443"]), FF(protocol=["TCP"])])

    def test_blacklist_and_within_filter(self):
        flow = tcp_flow()
        # blocks only flows that are both to :80 and DROPPED
        deny = [FF(destination_port=["80"], verdict=[pb.DROPPED])]
        assert allowed(flow, deny=deny)
        assert not allowed(tcp_flow(verdict=pb.DROPPED), deny=deny)

    def test_returns_bool(self):
        f = build_filter([FF(source_fqdn=["*.io"])], [])
        assert f(tcp_flow(source_names=["cilium.io"])) is True
        assert f(tcp_flow()) is False

    def test_accepts_none_and_tuples(self):
        assert build_filter(None, None)(tcp_flow())
        assert build_filter((FF(verdict=[pb.FORWARDED]),), ())(tcp_flow())

    def test_error_in_blacklist_is_raised(self):
        with pytest.raises(FilterError):
            build_filter([], [FF(source_ip=["nope"])])

    def test_cel_is_rejected_not_ignored(self):
        ff = FF()
        ff.experimental.cel_expression.append("true")
        with pytest.raises(FilterError, match="CEL"):
            build_filter([ff], [])


# --- per-field filters -----------------------------------------------------------------


class TestUUID:
    def test_uuid(self):
        assert allowed(tcp_flow(), FF(uuid=["x", "u-1"]))
        assert not allowed(tcp_flow(), FF(uuid=["u-2"]))


class TestIP:
    @pytest.mark.parametrize("entry,ok", [
        ("10.0.0.1", True), ("10.0.0.2", False), ("10.0.0.0/24", True), ("10.0.0.1/32", True),
        ("10.0.1.0/24", False), ("10.0.0.77/8", True), ("0.0.0.0/0", True), ("::/0", False),
        ("2001:db8::/32", False),
    ])
    def test_source_ip(self, entry, ok):
        assert allowed(tcp_flow(), FF(source_ip=[entry])) is ok

    def test_destination_ip(self):
        assert allowed(tcp_flow(), FF(destination_ip=["10.0.1.0/24"]))
        assert not allowed(tcp_flow(), FF(destination_ip=["10.0.0.0/24"]))

    def test_ipv6(self):
        flow = tcp_flow(IP=pb.IP(source="2001:db8::1", destination="fd00::2", ipVersion=pb.IPv6))
        assert allowed(flow, FF(source_ip=["2001:db8::/64"]))
        assert allowed(flow, FF(source_ip=["2001:db8::1"]))
        assert not allowed(flow, FF(source_ip=["0.0.0.0/0"]))
        assert allowed(flow, FF(destination_ip=["fd00::/8"]))

    def test_exact_ip_compares_text_like_hubble(self):
        flow = tcp_flow(IP=pb.IP(source="2001:db8::1"))
        assert not allowed(flow, FF(source_ip=["2001:0db8::1"]))
        assert allowed(flow, FF(source_ip=["2001:0db8::1/128"]))

    def test_missing_ip_never_matches(self):
        assert not allowed(pb.Flow(), FF(source_ip=["0.0.0.0/0"]))

    def test_source_ip_xlated(self):
        flow = tcp_flow(IP=pb.IP(source="10.0.0.1", source_xlated="192.168.1.5"))
        assert allowed(flow, FF(source_ip_xlated=["192.168.1.0/24"]))
        assert not allowed(flow, FF(source_ip_xlated=["10.0.0.1"]))
        assert not allowed(tcp_flow(), FF(source_ip_xlated=["0.0.0.0/0"]))

    @pytest.mark.parametrize("bad", ["10.0.0.256", "foo", "10.0.0.0/33", "10.0.0.0/",
                                     "10.0.0.0/08", "10.0.0.0/255.255.0.0", "/24", "::1/129", ""])
    def test_malformed(self, bad):
        with pytest.raises(FilterError) as err:
            build_filter([FF(destination_ip=[bad])], [])
        assert "destination_ip" in str(err.value) and repr(bad) in str(err.value)


class TestPodAndService:
    @pytest.mark.parametrize("entry,ok", [
        ("xwing", True),            # bare name: default namespace
        ("xwing-7d9f", True),
        ("x", True),
        ("default/xwing", True),
        ("default/", True),         # whole namespace
        ("default/tie", False),
        ("empire/xwing", False),
        ("empire/", False),
        ("wing", False),            # prefix, not substring
        ("default/xwing/ignored", True),
    ])
    def test_source_pod(self, entry, ok):
        assert allowed(tcp_flow(), FF(source_pod=[entry])) is ok

    def test_bare_name_is_default_namespace(self):
        # the destination lives in "empire": a bare prefix means default/
        assert not allowed(tcp_flow(), FF(destination_pod=["deathstar"]))
        assert allowed(tcp_flow(), FF(destination_pod=["empire/death"]))

    def test_endpoint_without_pod_or_namespace(self):
        flow = tcp_flow(source=pb.Endpoint(identity=2))
        assert not allowed(flow, FF(source_pod=["default/"]))

    @pytest.mark.parametrize("bad", ["", "/"])
    def test_malformed(self, bad):
        with pytest.raises(FilterError, match=r"\[namespace/\]\[<name>\]"):
            build_filter([FF(source_pod=[bad])], [])

    def test_service(self):
        flow = tcp_flow(destination_service=pb.Service(namespace="empire", name="deathstar"))
        assert allowed(flow, FF(destination_service=["empire/deathstar"]))
        assert allowed(flow, FF(destination_service=["empire/"]))
        assert allowed(flow, FF(destination_service=["empire/death"]))
        assert not allowed(flow, FF(destination_service=["deathstar"]))  # default namespace
        assert not allowed(flow, FF(source_service=["empire/"]))
        with pytest.raises(FilterError, match="destination_service"):
            build_filter([FF(destination_service=[""])], [])


class TestFQDN:
    @pytest.mark.parametrize("pattern,ok", [
        ("api.cilium.io", True), ("API.Cilium.IO.", True), ("*.cilium.io", True),
        ("*.io", True), ("*", True), ("api.*.io", True), ("cilium.io", False),
        ("*.cilium.com", False), ("api.cilium", False), (" api.cilium.io ", True),
    ])
    def test_destination_fqdn(self, pattern, ok):
        flow = tcp_flow(destination_names=["other.example", "api.cilium.io"])
        assert allowed(flow, FF(destination_fqdn=[pattern])) is ok

    def test_no_names_never_match(self):
        assert not allowed(tcp_flow(), FF(source_fqdn=["*"]))

    def test_source_fqdn(self):
        assert allowed(tcp_flow(source_names=["a.b"]), FF(source_fqdn=["nope", "a.b"]))

    @pytest.mark.parametrize("bad", ["", "a..", "foo.com/x", "ex ample.com", "a?b"])
    def test_malformed(self, bad):
        with pytest.raises(FilterError, match="source_fqdn"):
            build_filter([FF(source_fqdn=[bad])], [])


class TestDNSQuery:
    def test_regex_search(self):
        flow = dns_flow("api.cilium.io.")
        assert allowed(flow, FF(dns_query=[r"cilium\.io\.$"]))
        assert allowed(flow, FF(dns_query=["cilium"]))           # unanchored search
        assert allowed(flow, FF(dns_query=[r"^api\..*\.$"]))
        assert not allowed(flow, FF(dns_query=[r"^cilium"]))
        assert not allowed(flow, FF(dns_query=[r"cilium\.io\z"]))  # the trailing dot
        assert allowed(flow, FF(dns_query=[r"cilium\.io\.\z"]))

    def test_non_dns_never_matches(self):
        assert not allowed(tcp_flow(), FF(dns_query=[".*"]))

    def test_malformed(self):
        with pytest.raises(FilterError, match="dns_query"):
            build_filter([FF(dns_query=["(unclosed"])], [])


class TestLabels:
    @pytest.mark.parametrize("selector,ok", [
        ("app=xwing", True),
        ("app==xwing", True),
        ("k8s:app=xwing", True),
        ("container:app=xwing", False),   # wrong source
        ("app=tiefighter", False),
        ("app", True),
        ("!app", False),
        ("!color", True),
        ("app!=tiefighter", True),
        ("app!=xwing", False),
        ("color!=red", True),             # absent key satisfies !=
        ("app in (tiefighter, xwing)", True),
        ("k8s:app in (a,b)", False),
        ("app notin (a,b)", True),
        ("app notin (xwing)", False),
        ("color notin (red)", True),
        ("app=xwing,class=ship", True),   # AND within a selector
        ("app=xwing,class=cruiser", False),
        ("k8s:app=xwing, !k8s:color", True),
        ("io.kubernetes.pod.namespace=default", True),
        ("k8s:io.kubernetes.pod.namespace=default", True),
        ("k8s:io.kubernetes.pod.namespace in (kube-system)", False),
        ("", True),                        # empty selector selects everything
    ])
    def test_source_label(self, selector, ok):
        assert allowed(tcp_flow(), FF(source_label=[selector])) is ok

    def test_selectors_or(self):
        assert allowed(tcp_flow(), FF(source_label=["app=nope", "app=xwing"]))
        assert not allowed(tcp_flow(), FF(source_label=["app=nope", "class=nope"]))

    def test_destination_and_integer_compare(self):
        flow = tcp_flow()
        assert allowed(flow, FF(destination_label=["tier>2"]))
        assert not allowed(flow, FF(destination_label=["tier>3"]))
        assert allowed(flow, FF(destination_label=["tier<4"]))
        assert not allowed(flow, FF(destination_label=["app>1"]))   # non-integer label value
        assert not allowed(flow, FF(destination_label=["missing<9"]))

    def test_reserved_labels(self):
        flow = tcp_flow(destination=pb.Endpoint(identity=2, labels=["reserved:world"]))
        assert allowed(flow, FF(destination_label=["reserved:world"]))
        assert allowed(flow, FF(destination_label=["world"]))
        assert not allowed(flow, FF(destination_label=["k8s:world"]))
        assert allowed(tcp_flow(), FF(destination_label=["!reserved:world"]))

    def test_cidr_labels_match_broader_prefix(self):
        flow = tcp_flow(destination=pb.Endpoint(labels=["cidr:10.1.2.3/32", "reserved:world"]))
        assert allowed(flow, FF(destination_label=["cidr:10.0.0.0/8"]))
        assert allowed(flow, FF(destination_label=["cidr:10.1.2.3/32"]))
        assert not allowed(flow, FF(destination_label=["cidr:192.168.0.0/16"]))

    def test_label_without_source(self):
        flow = tcp_flow(source=pb.Endpoint(labels=["app=bare"]))
        assert allowed(flow, FF(source_label=["app=bare"]))
        assert not allowed(flow, FF(source_label=["k8s:app=bare"]))

    def test_node_labels(self):
        flow = tcp_flow(node_labels=["kubernetes.io/hostname=kind-worker", "zone=a"])
        assert allowed(flow, FF(node_labels=["kubernetes.io/hostname=kind-worker"]))
        assert allowed(flow, FF(node_labels=["zone in (a,b)"]))
        assert not allowed(flow, FF(node_labels=["zone=b"]))

    @pytest.mark.parametrize("bad", [
        "app=", "app in a", "app in (a b)", "=foo", "app=foo bar", "app=-bad",
        "app>x", "!app=x", "app=foo:bar", "app=x,", "a/b/c=d", "app in (a", "app ~ b",
        "k8s:" + "a" * 64 + "=x",
    ])
    def test_malformed(self, bad):
        if bad == "app=":   # k8s allows an empty value
            assert allowed(tcp_flow(source=pb.Endpoint(labels=["k8s:app="])),
                           FF(source_label=[bad]))
            return
        with pytest.raises(FilterError, match="source_label"):
            build_filter([FF(source_label=[bad])], [])

    def test_translate_selector(self):
        assert translate_selector("k8s:app=a,env") == "k8s.app=a,any.env"
        assert translate_selector("!k8s:app, b in (x, y),c") == "!k8s.app, any.b in (x, y),any.c"
        assert translate_selector("") == ""

    def test_selector_parser(self):
        reqs = parse("a in (x,,y), !b, c=1")
        assert [(r.key, r.op) for r in reqs] == [("a", "in"), ("b", "!"), ("c", "=")]
        assert reqs[0].values == {"x", "", "y"}
        with pytest.raises(SelectorError):
            parse("a notin ()x")


class TestWorkload:
    def test_workload(self):
        flow = tcp_flow(source=pb.Endpoint(workloads=[pb.Workload(name="xwing", kind="Deployment")]))
        assert allowed(flow, FF(source_workload=[pb.Workload(name="xwing")]))
        assert allowed(flow, FF(source_workload=[pb.Workload(kind="Deployment")]))
        assert allowed(flow, FF(source_workload=[pb.Workload(name="xwing", kind="Deployment")]))
        assert not allowed(flow, FF(source_workload=[pb.Workload(name="xwing", kind="DaemonSet")]))
        assert not allowed(flow, FF(destination_workload=[pb.Workload(name="xwing")]))


class TestIdentity:
    def test_identity(self):
        assert allowed(tcp_flow(), FF(source_identity=[5, 1001]))
        assert allowed(tcp_flow(), FF(destination_identity=[2002]))
        assert not allowed(tcp_flow(), FF(destination_identity=[1001]))
        assert not allowed(pb.Flow(), FF(source_identity=[0]))


class TestPort:
    def test_tcp_udp_sctp(self):
        assert allowed(tcp_flow(), FF(source_port=["43210"]))
        assert allowed(dns_flow(), FF(destination_port=["53"]))
        sctp = pb.Flow(l4=pb.Layer4(SCTP=pb.SCTP(source_port=1, destination_port=2)))
        assert allowed(sctp, FF(destination_port=["2"]))
        assert not allowed(sctp, FF(destination_port=["1"]))

    def test_icmp_has_no_port(self):
        icmp = pb.Flow(l4=pb.Layer4(ICMPv4=pb.ICMPv4(type=8)))
        assert not allowed(icmp, FF(destination_port=["0"]))

    @pytest.mark.parametrize("bad", ["http", "-1", "65536", "+80", " 80", "8_0", "", "80/tcp"])
    def test_malformed(self, bad):
        with pytest.raises(FilterError, match="destination_port"):
            build_filter([FF(destination_port=[bad])], [])


class TestProtocol:
    @pytest.mark.parametrize("flow,names", [
        (tcp_flow(), {"tcp", "TCP", "Tcp"}),
        (dns_flow(), {"udp", "dns", "DNS"}),
        (http_flow(), {"tcp", "http"}),
        (pb.Flow(l4=pb.Layer4(ICMPv4=pb.ICMPv4())), {"icmp", "icmpv4"}),
        (pb.Flow(l4=pb.Layer4(ICMPv6=pb.ICMPv6())), {"icmp", "ICMPv6"}),
        (pb.Flow(l4=pb.Layer4(SCTP=pb.SCTP())), {"sctp"}),
        (pb.Flow(l4=pb.Layer4(VRRP=pb.VRRP())), {"vrrp"}),
        (pb.Flow(l4=pb.Layer4(IGMP=pb.IGMP())), {"igmp"}),
        (pb.Flow(l7=pb.Layer7(kafka=pb.Kafka())), {"kafka"}),
    ])
    def test_protocols(self, flow, names):
        every = ["tcp", "udp", "sctp", "icmp", "icmpv4", "icmpv6", "vrrp", "igmp", "http",
                 "dns", "kafka"]
        lowered = {n.lower() for n in names}
        for name in names:
            assert allowed(flow, FF(protocol=[name])), name
        for name in every:
            if name not in lowered:
                assert not allowed(flow, FF(protocol=[name])), name

    def test_malformed(self):
        with pytest.raises(FilterError, match="unknown protocol: 'quic'"):
            build_filter([FF(protocol=["tcp", "quic"])], [])


class TestVerdictAndDrop:
    def test_verdict(self):
        assert allowed(tcp_flow(), FF(verdict=[pb.DROPPED, pb.FORWARDED]))
        assert not allowed(tcp_flow(), FF(verdict=[pb.AUDIT]))

    def test_drop_reason_desc(self):
        dropped = tcp_flow(verdict=pb.DROPPED, drop_reason_desc=pb.POLICY_DENIED)
        assert allowed(dropped, FF(drop_reason_desc=[pb.POLICY_DENIED]))
        assert not allowed(dropped, FF(drop_reason_desc=[pb.CT_MAP_INSERTION_FAILED]))
        forwarded = tcp_flow(drop_reason_desc=pb.POLICY_DENIED)
        assert not allowed(forwarded, FF(drop_reason_desc=[pb.POLICY_DENIED]))


class TestEventType:
    def test_type_and_sub_type(self):
        flow = tcp_flow()  # type 4, sub_type 3
        assert allowed(flow, FF(event_type=[pb.EventTypeFilter(type=TRACE)]))
        assert not allowed(flow, FF(event_type=[pb.EventTypeFilter(type=1)]))
        assert allowed(flow, FF(event_type=[pb.EventTypeFilter(type=TRACE, match_sub_type=True,
                                                               sub_type=3)]))
        assert not allowed(flow, FF(event_type=[pb.EventTypeFilter(type=TRACE, match_sub_type=True,
                                                                   sub_type=0)]))
        # sub_type without match_sub_type is ignored
        assert allowed(flow, FF(event_type=[pb.EventTypeFilter(type=TRACE, sub_type=9)]))
        # type 0 matches any type
        assert allowed(flow, FF(event_type=[pb.EventTypeFilter(type=0)]))
        assert allowed(flow, FF(event_type=[pb.EventTypeFilter(type=1),
                                            pb.EventTypeFilter(type=TRACE)]))

    def test_flow_without_event_type(self):
        assert not allowed(pb.Flow(), FF(event_type=[pb.EventTypeFilter(type=0)]))


class TestTrafficDirection:
    def test_direction(self):
        assert allowed(tcp_flow(), FF(traffic_direction=[pb.EGRESS]))
        assert not allowed(tcp_flow(), FF(traffic_direction=[pb.INGRESS]))


class TestTCPFlags:
    def test_flow_must_have_all_flags_of_one_filter(self):
        flow = tcp_flow()  # SYN|ACK
        assert allowed(flow, FF(tcp_flags=[pb.TCPFlags(SYN=True)]))
        assert allowed(flow, FF(tcp_flags=[pb.TCPFlags(SYN=True, ACK=True)]))
        assert not allowed(flow, FF(tcp_flags=[pb.TCPFlags(SYN=True, FIN=True)]))
        assert allowed(flow, FF(tcp_flags=[pb.TCPFlags(RST=True), pb.TCPFlags(ACK=True)]))
        assert not allowed(flow, FF(tcp_flags=[pb.TCPFlags(RST=True), pb.TCPFlags(FIN=True)]))

    def test_non_tcp_or_flagless(self):
        assert not allowed(dns_flow(), FF(tcp_flags=[pb.TCPFlags(SYN=True)]))
        flagless = pb.Flow(l4=pb.Layer4(TCP=pb.TCP(destination_port=1)))
        assert not allowed(flagless, FF(tcp_flags=[pb.TCPFlags(SYN=True)]))


class TestNodeName:
    @pytest.mark.parametrize("pattern,ok", [
        ("kind-worker", True), ("kind-*", True), ("*", True), ("default/kind-worker", True),
        ("default/*", True), ("*/kind-worker", True), ("other/kind-worker", False),
        ("kind-control-plane", False), ("KIND-WORKER", True), ("/", True), ("/kind-*", True),
    ])
    def test_patterns(self, pattern, ok):
        assert allowed(tcp_flow(), FF(node_name=[pattern])) is ok

    def test_cluster_in_node_name(self):
        flow = tcp_flow(node_name="prod-eu/node-1.example.com")
        assert allowed(flow, FF(node_name=["prod-*/node-1.example.com"]))
        assert allowed(flow, FF(node_name=["*.example.com"]))
        assert not allowed(flow, FF(node_name=["default/node-1.example.com"]))

    def test_no_node_name(self):
        assert not allowed(pb.Flow(), FF(node_name=["*"]))

    @pytest.mark.parametrize("bad", ["", "a/b/c", "node_1?", "a/b.."])
    def test_malformed(self, bad):
        with pytest.raises(FilterError, match="node_name"):
            build_filter([FF(node_name=[bad])], [])


class TestReply:
    def test_is_reply(self):
        reply = tcp_flow(is_reply={"value": True})
        request = tcp_flow(is_reply={"value": False})
        assert allowed(reply, FF(reply=[True]))
        assert not allowed(reply, FF(reply=[False]))
        assert allowed(request, FF(reply=[False]))
        assert allowed(request, FF(reply=[True, False]))

    def test_unknown_reply_does_not_match(self):
        unknown = tcp_flow()
        assert not unknown.HasField("is_reply")
        assert not allowed(unknown, FF(reply=[False]))
        assert not allowed(unknown, FF(reply=[True]))

    def test_dropped_unknown_counts_as_not_reply(self):
        dropped = tcp_flow(verdict=pb.DROPPED)
        assert allowed(dropped, FF(reply=[False]))
        assert not allowed(dropped, FF(reply=[True]))


class TestIPVersionEncryptedTrace:
    def test_ip_version(self):
        assert allowed(tcp_flow(), FF(ip_version=[pb.IPv4]))
        assert not allowed(tcp_flow(), FF(ip_version=[pb.IPv6]))
        assert allowed(pb.Flow(), FF(ip_version=[pb.IP_NOT_USED]))

    def test_encrypted(self):
        enc = tcp_flow(IP=pb.IP(source="1.1.1.1", encrypted=True))
        assert allowed(enc, FF(encrypted=[True]))
        assert not allowed(tcp_flow(), FF(encrypted=[True]))
        assert allowed(tcp_flow(), FF(encrypted=[False]))

    def test_trace_id(self):
        flow = tcp_flow(trace_context=pb.TraceContext(parent=pb.TraceParent(trace_id="abc")))
        assert allowed(flow, FF(trace_id=["abc"]))
        assert not allowed(flow, FF(trace_id=["abd"]))
        assert not allowed(tcp_flow(), FF(trace_id=["abc"]))

    def test_ip_trace_id(self):
        flow = tcp_flow(ip_trace_id=pb.IPTraceID(trace_id=42))
        assert allowed(flow, FF(ip_trace_id=[42]))
        assert not allowed(flow, FF(ip_trace_id=[43]))
        assert not allowed(tcp_flow(), FF(ip_trace_id=[0]))


class TestClusterName:
    def test_cluster(self):
        flow = tcp_flow(source=pb.Endpoint(cluster_name="east"),
                        destination=pb.Endpoint(cluster_name="west"))
        assert allowed(flow, FF(source_cluster_name=["east"]))
        assert allowed(flow, FF(destination_cluster_name=["north", "west"]))
        assert not allowed(flow, FF(destination_cluster_name=["east"]))

    def test_empty_name_rejected(self):
        with pytest.raises(FilterError, match="must not be empty"):
            build_filter([FF(source_cluster_name=["east", ""])], [])


class TestInterface:
    def test_interface(self):
        flow = tcp_flow(interface=pb.NetworkInterface(index=3, name="eth0"))
        assert allowed(flow, FF(interface=[pb.NetworkInterface(name="eth0")]))
        assert allowed(flow, FF(interface=[pb.NetworkInterface(index=3)]))
        assert allowed(flow, FF(interface=[pb.NetworkInterface(index=3, name="eth0")]))
        assert not allowed(flow, FF(interface=[pb.NetworkInterface(index=4, name="eth0")]))
        assert not allowed(tcp_flow(), FF(interface=[pb.NetworkInterface()]))


class TestHTTP:
    @pytest.mark.parametrize("code,entry,ok", [
        (200, "200", True), (200, "201", False), (503, "5+", True), (404, "5+", False),
        (404, "4+", True), (404, "40+", True), (410, "40+", False), (101, "1+", True),
    ])
    def test_status(self, code, entry, ok):
        assert allowed(http_flow(code=code), FF(http_status_code=[entry])) is ok

    def test_status_requires_response(self):
        assert not allowed(http_flow(code=0), FF(http_status_code=["2+"]))
        assert not allowed(tcp_flow(), FF(http_status_code=["2+"]))

    @pytest.mark.parametrize("bad", ["5x", "600", "2", "099", "5++", "+", "20", "2000", "1xx",
                                     "200 ", "6+", "500+"])
    def test_status_malformed(self, bad):
        with pytest.raises(FilterError, match="status code"):
            build_filter([FF(http_status_code=[bad])], [])

    def test_method(self):
        assert allowed(http_flow(method="GET"), FF(http_method=["get"]))
        assert allowed(http_flow(method="post"), FF(http_method=["GET", "POST"]))
        assert not allowed(http_flow(method="GET"), FF(http_method=["PUT"]))
        assert not allowed(http_flow(method=""), FF(http_method=[""]))

    def test_path(self):
        flow = http_flow(url="http://deathstar/v1/request%20landing?door=1")
        assert allowed(flow, FF(http_path=["^/v1/request landing$"]))  # decoded, no query
        assert allowed(flow, FF(http_path=["request"]))
        assert not allowed(flow, FF(http_path=["door"]))
        assert allowed(http_flow(url="/api/v2/x"), FF(http_path=["^/api/v[0-9]+/"]))
        assert not allowed(http_flow(url="not a url"), FF(http_path=[".*"]))
        assert not allowed(http_flow(url=""), FF(http_path=[".*"]))

    def test_url(self):
        flow = http_flow(url="http://deathstar/v1/request-landing?door=1")
        assert allowed(flow, FF(http_url=["door=1$"]))
        assert allowed(flow, FF(http_url=["^http://deathstar/"]))
        assert not allowed(flow, FF(http_url=["^/v1"]))

    def test_header(self):
        flow = http_flow(headers=[("X-Request-Id", "abc"), ("Accept", "*/*")])
        assert allowed(flow, FF(http_header=[pb.HTTPHeader(key="Accept", value="*/*")]))
        assert not allowed(flow, FF(http_header=[pb.HTTPHeader(key="Accept", value="text/html")]))
        assert not allowed(flow, FF(http_header=[pb.HTTPHeader(key="accept", value="*/*")]))
        assert not allowed(http_flow(), FF(http_header=[pb.HTTPHeader(key="Accept", value="*/*")]))

    def test_regex_errors(self):
        with pytest.raises(FilterError, match="http_path"):
            build_filter([FF(http_path=["[z-a]"])], [])
        with pytest.raises(FilterError, match="http_url"):
            build_filter([FF(http_url=["*oops"])], [])

    def test_requires_l7_event_type(self):
        with pytest.raises(FilterError, match="'l7' events"):
            build_filter([FF(http_method=["GET"], event_type=[pb.EventTypeFilter(type=TRACE)])], [])
        f = build_filter([FF(http_method=["GET"], event_type=[pb.EventTypeFilter(type=TRACE),
                                                             pb.EventTypeFilter(type=ACCESS_LOG)])], [])
        assert f(http_flow())


class TestRegexIsGos:
    """User patterns compile as Go's regexp does (RE2): what Go rejects is an error
    with RE2's reason, and matching is linear in the input."""

    @pytest.mark.parametrize("field,pattern,reason", [
        ("http_path", "(?=x)", "invalid perl operator: (?="),       # lookahead
        ("http_path", "(?<=a)b", "invalid perl operator: (?<="),    # lookbehind
        ("http_url", r"(a)\1", r"invalid escape sequence: \1"),    # backreference
        ("http_url", "a++", "bad repetition operator: ++"),         # possessive
        ("dns_query", r"cilium\Z", r"invalid escape sequence: \Z"),
        ("dns_query", "a{1001}", "invalid repetition size: {1001}"),
    ])
    def test_patterns_go_rejects_are_errors_with_the_reason(self, field, pattern, reason):
        with pytest.raises(FilterError) as e:
            build_filter([FF(**{field: [pattern]})], [])
        assert f"invalid {field} filter" in str(e.value) and reason in str(e.value)

    def test_patterns_compile_to_re2(self):
        from webb.filters._common import compile_go_regexp
        from webb.filters.patterns import compile_fqdn_patterns, compile_node_name_patterns

        for compiled in (compile_go_regexp("(a+)+$", "x"), compile_fqdn_patterns(["*.io"], "f"),
                         compile_node_name_patterns(["c/n*"], "n")):
            assert type(compiled).__module__ == "re2"  # RE2 automata: no backtracking

    def test_pathological_pattern_answers_on_a_long_path(self):
        # Python's re backtracks 2^n times here (n = 50,000); RE2 is one linear pass.
        flow = http_flow(url="http://deathstar/" + "a" * 50_000 + "!")
        for field in ("http_path", "http_url"):
            assert not allowed(flow, FF(**{field: ["(a+)+$"]}))
            assert allowed(flow, FF(**{field: ["(a+)+!$"]}))
        assert not allowed(dns_flow("a" * 50_000 + "!."), FF(dns_query=["^(a|aa)+$"]))

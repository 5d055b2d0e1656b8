"""`webb observe` flags -> GetFlowsRequest, with Hubble's semantics (the cases of
hubble's flows_filter_test.go and flows_test.go, plus every filter flag)."""
from __future__ import annotations

import pytest
import yaml
from google.protobuf import json_format

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb_cli.errors import CLIError
from webb_cli.main import build_parser
from webb_cli.observe import ALL, build_request, raw_filters_yaml

NOW = 1_700_000_000.0


def request(*argv: str, now: float = NOW):
    a = build_parser().parse_args(["observe", *argv])
    return build_request(a, now=now)


def filters(*argv: str):
    req = request(*argv)
    return list(req.whitelist), list(req.blacklist)


def FF(**kw) -> fpb.FlowFilter:
    return fpb.FlowFilter(**kw)


def bad_flag(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        request(*argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Error: ")  # one line
    return err


# -- selectors -------------------------------------------------------------------------

def test_default_request_is_last_20():
    assert request() == opb.GetFlowsRequest(number=20)


def test_selectors():
    assert request("--last", "5").number == 5
    r = request("--first", "7")
    assert r.number == 7 and r.first
    assert request("--all").number == ALL == 2**64 - 1
    r = request("--follow")
    assert r.follow and r.number == 0  # new flows only
    r = request("-f", "--last", "3")
    assert r.follow and r.number == 3


def test_since_until_durations_and_timestamps():
    r = request("--since", "5m")
    assert (r.since.seconds, r.since.nanos) == (int(NOW) - 300, 0)
    assert r.number == 0  # no default 20 with a time range (the server's "until now")
    r = request("--since", "1h30m", "--until", "90s")
    assert r.since.seconds == int(NOW) - 5400 and r.until.seconds == int(NOW) - 90
    r = request("--since", "2021-03-23T00:00:00Z", "--until", "2021-03-24T00:00:00Z")
    assert r.since.ToJsonString() == "2021-03-23T00:00:00Z"
    assert r.until.ToJsonString() == "2021-03-24T00:00:00Z"
    assert request("--until", "2021-03-24T00:00:00Z").number == 0
    r = request("--since", "2021-03-23T10:04:05.5+02:00")
    assert r.since.ToJsonString() == "2021-03-23T08:04:05.500Z"
    assert request("--since", "2021-03-23").since.ToJsonString() == "2021-03-23T00:00:00Z"
    assert request("--since", "2021-03-23T10Z").since.ToJsonString() == "2021-03-23T10:00:00Z"
    assert request("--since", "2021-03-23T10:04Z").since.ToJsonString() == "2021-03-23T10:04:00Z"
    r = request("--since", "Tue, 23 Mar 2021 10:04:05 +0100")
    assert r.since.ToJsonString() == "2021-03-23T09:04:05Z"
    # --until is dropped with --follow, as hubble does
    r = request("--follow", "--since", "1m", "--until", "10s")
    assert r.HasField("since") and not r.HasField("until")


@pytest.mark.parametrize("argv,msg", [
    (["--first", "1", "--last", "1"], "cannot set both --first and --last"),
    (["--first", "1", "--all"], "cannot set both --first and --all"),
    (["--first", "1", "--follow"], "cannot set both --first and --follow"),
    (["--last", "1", "--all"], "cannot set both --last and --all"),
    (["--since", "yesterday"], "failed to parse the since time: failed to convert yesterday to time"),
    (["--until", "2021-13-01"], "failed to parse the until time"),
])
def test_selector_conflicts(argv, msg):
    with pytest.raises(CLIError) as e:
        request(*argv)
    assert msg in str(e.value) and e.value.exit_code == 2


def test_bad_count_is_one_line(capsys):
    assert bad_flag(capsys, "--last", "x") == (
        'Error: invalid argument "x" for "--last" flag: strconv.ParseUint: parsing "x": invalid '
        "syntax (see 'webb observe --help')\n")


# -- filters: Hubble's own cases ---------------------------------------------------------

def test_no_filters_no_lists():
    assert filters("--last", "3") == ([], [])


def test_filter_dispatch_and_not():
    wl, bl = filters("--from-ip", "1.2.3.4", "--from-ip", "5.6.7.8", "--not", "--to-ip", "5.5.5.5",
                     "--verdict", "DROPPED", "-t", "l7")
    assert wl == [FF(source_ip=["1.2.3.4", "5.6.7.8"], verdict=[fpb.DROPPED],
                     event_type=[fpb.EventTypeFilter(type=129)])]
    assert bl == [FF(destination_ip=["5.5.5.5"])]


def test_filter_left_right():
    wl, bl = filters("--ip", "1.2.3.4", "--ip", "5.6.7.8", "--verdict", "DROPPED",
                     "--not", "--pod", "deathstar", "--not", "--http-status", "200",
                     "--http-method", "get", "--http-path", "/page/\\d+", "--node-name", "k8s*")
    common = dict(verdict=[fpb.DROPPED], http_method=["get"], http_path=["/page/\\d+"],
                  node_name=["k8s*"])
    assert wl == [FF(source_ip=["1.2.3.4", "5.6.7.8"], **common),
                  FF(destination_ip=["1.2.3.4", "5.6.7.8"], **common)]
    assert bl == [FF(source_pod=["deathstar"], http_status_code=["200"]),
                  FF(destination_pod=["deathstar"], http_status_code=["200"])]


def test_event_types():
    wl, _ = filters("-t", "254", "-t", "255:127", "-t", "trace:to-endpoint", "-t", "trace:from-endpoint",
                    "-t", "4:2", "-t", "agent", "-t", "agent:3", "-t", "agent:policy-updated",
                    "--type", "drop", "--type", "policy-verdict")
    E = fpb.EventTypeFilter
    assert list(wl[0].event_type) == [
        E(type=254), E(type=255, match_sub_type=True, sub_type=127),
        E(type=4, match_sub_type=True, sub_type=0), E(type=4, match_sub_type=True, sub_type=5),
        E(type=4, match_sub_type=True, sub_type=2), E(type=130),
        E(type=130, match_sub_type=True, sub_type=3), E(type=130, match_sub_type=True, sub_type=5),
        E(type=1), E(type=5)]
    assert len(wl) == 1


@pytest.mark.parametrize("value", ["some-invalid-type", "trace:some-invalid-sub-type",
                                   "agent:Policy updated", "4:to-endpoint"])
def test_bad_event_types(capsys, value):
    assert "unable to parse" in bad_flag(capsys, "-t", value)


def test_labels_node_labels():
    wl, bl = filters("--label", "k1=v1,k2=v2", "-l", "k3", "--node-label", "io.cilium.egress-gateway")
    assert wl == [FF(source_label=["k1=v1,k2=v2", "k3"], node_labels=["io.cilium.egress-gateway"]),
                  FF(destination_label=["k1=v1,k2=v2", "k3"], node_labels=["io.cilium.egress-gateway"])]
    assert bl == []


def test_workloads():
    assert filters("--from-pod", "cilium", "--to-workload", "app")[0] == [
        FF(source_pod=["cilium"], destination_workload=[fpb.Workload(name="app")])]
    assert filters("--pod", "cilium", "--to-workload", "Deployment/app")[0] == [
        FF(source_pod=["cilium"], destination_workload=[fpb.Workload(kind="Deployment", name="app")]),
        FF(destination_pod=["cilium"], destination_workload=[fpb.Workload(kind="Deployment", name="app")])]
    assert filters("--workload", "w")[0] == [FF(source_workload=[fpb.Workload(name="w")]),
                                             FF(destination_workload=[fpb.Workload(name="w")])]


def test_identities():
    assert filters("--identity", "1", "--identity", "2")[0] == [
        FF(source_identity=[1, 2]), FF(destination_identity=[1, 2])]
    assert filters("--from-identity", "world")[0] == [FF(source_identity=[2])]
    assert filters("--to-identity", "host", "--to-identity", "22047")[0] == [
        FF(destination_identity=[1, 22047])]
    assert filters("--from-pod", "cilium", "--to-identity", "42")[0] == [
        FF(source_pod=["cilium"], destination_identity=[42])]
    assert filters("--pod", "cilium", "--to-identity", "42")[0] == [
        FF(source_pod=["cilium"], destination_identity=[42]),
        FF(destination_pod=["cilium"], destination_identity=[42])]


@pytest.mark.parametrize("name,number", [("host", 1), ("world", 2), ("unmanaged", 3),
                                         ("health", 4), ("init", 5), ("remote-node", 6),
                                         ("kube-apiserver", 7), ("ingress", 8),
                                         ("world-ipv4", 9), ("world-ipv6", 10)])
def test_reserved_identity_names(name, number):
    assert filters("--identity", name)[0] == [FF(source_identity=[number]),
                                              FF(destination_identity=[number])]


def test_bad_identity(capsys):
    for flag in ("--identity", "--from-identity", "--to-identity"):
        assert "invalid security identity" in bad_flag(capsys, flag, "bad")


def test_tcp_flags(capsys):
    assert filters("--tcp-flags", "syn,ack", "--tcp-flags", "fin")[0] == [
        FF(tcp_flags=[fpb.TCPFlags(SYN=True, ACK=True), fpb.TCPFlags(FIN=True)])]
    for ok in ["SYN", "syn", "FIN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS"]:
        filters("--tcp-flags", ok, "--not", "--tcp-flags", "NS")
    for bad in ["unknown", "syn,unknown", "unknown,syn", "syn,", ",syn"]:
        assert "unknown tcp flag" in bad_flag(capsys, "--tcp-flags", bad)


def test_traffic_direction(capsys):
    assert filters("--traffic-direction", "INGRESS", "--traffic-direction", "EgrEss")[0] == [
        FF(traffic_direction=[fpb.INGRESS, fpb.EGRESS])]
    assert "to the moon: invalid traffic direction, expected ingress or egress" in bad_flag(
        capsys, "--traffic-direction", "to the moon")


def test_http_flags(capsys):
    wl, _ = filters("--http-url", r"http://.*cilium\.io/foo", "--http-header", "foo:bar",
                    "--http-header", "Foo:coco:bar", "--http-status", "5+", "--http-method", "POST")
    assert wl == [FF(http_url=[r"http://.*cilium\.io/foo"], http_status_code=["5+"],
                     http_method=["POST"],
                     http_header=[fpb.HTTPHeader(key="foo", value="bar"),
                                  fpb.HTTPHeader(key="Foo", value="coco:bar")])]
    assert "expected name:value" in bad_flag(capsys, "--http-header", "foobar")


def test_uuid_snat_interface_cluster_encryption_cel():
    assert filters("--uuid", "b9fab269-04ae-495c-9d12-b6c36d41de0d")[0] == [
        FF(uuid=["b9fab269-04ae-495c-9d12-b6c36d41de0d"])]
    assert filters("--snat-ip", "2.2.2.2/16")[0] == [FF(source_ip_xlated=["2.2.2.2/16"])]
    assert filters("--interface", "eth0")[0] == [FF(interface=[fpb.NetworkInterface(name="eth0")])]
    assert filters("--cluster", "foo", "--cluster", "bar")[0] == [
        FF(source_cluster_name=["foo", "bar"]), FF(destination_cluster_name=["foo", "bar"])]
    assert filters("--from-cluster", "foo")[0] == [FF(source_cluster_name=["foo"])]
    assert filters("--to-cluster", "foo")[0] == [FF(destination_cluster_name=["foo"])]
    assert filters("--encrypted")[0] == [FF(encrypted=[True])]
    assert filters("--unencrypted")[0] == [FF(encrypted=[False])]
    cel = filters("--cel-expression", "_flow.verdict == Verdict.DROPPED")[0]
    assert list(cel[0].experimental.cel_expression) == ["_flow.verdict == Verdict.DROPPED"]


def test_ip_versions_trace_ids_drop_reasons(capsys):
    assert filters("-4")[0] == [FF(ip_version=[fpb.IPv4])]
    assert filters("--ipv6")[0] == [FF(ip_version=[fpb.IPv6])]
    assert filters("--ip-version", "v4", "--ip-version", "none")[0] == [
        FF(ip_version=[fpb.IPv4, fpb.IP_NOT_USED])]
    assert filters("--trace-id", "abc")[0] == [FF(trace_id=["abc"])]
    assert filters("--ip-trace-id", "1234")[0] == [FF(ip_trace_id=[1234])]
    assert "must be greater than 0" in bad_flag(capsys, "--ip-trace-id", "0")
    assert filters("--drop-reason-desc", "POLICY_DENIED")[0] == [
        FF(drop_reason_desc=[fpb.POLICY_DENIED])]
    assert "invalid --drop-reason-desc value: NOPE" in bad_flag(capsys, "--drop-reason-desc", "NOPE")
    assert "invalid --verdict value: FOO" in bad_flag(capsys, "--verdict", "FOO")


def test_every_single_field_flag():
    one = {"--from-fqdn": "source_fqdn", "--to-fqdn": "destination_fqdn", "--from-ip": "source_ip",
           "--to-ip": "destination_ip", "--from-pod": "source_pod", "--to-pod": "destination_pod",
           "--from-label": "source_label", "--to-label": "destination_label",
           "--from-service": "source_service", "--to-service": "destination_service",
           "--from-port": "source_port", "--to-port": "destination_port", "--protocol": "protocol",
           "--node-name": "node_name", "--http-path": "http_path", "--http-method": "http_method",
           "--http-status": "http_status_code"}
    for flag, field in one.items():
        wl, bl = filters(flag, "x1")
        assert wl == [FF(**{field: ["x1"]})], flag
        wl, bl = filters("--not", flag, "x1")
        assert (wl, bl) == ([], [FF(**{field: ["x1"]})]), flag
    both = {"--fqdn": ("source_fqdn", "destination_fqdn"), "--ip": ("source_ip", "destination_ip"),
            "--pod": ("source_pod", "destination_pod"),
            "--label": ("source_label", "destination_label"),
            "--service": ("source_service", "destination_service"),
            "--port": ("source_port", "destination_port")}
    for flag, (src, dst) in both.items():
        assert filters(flag, "x1")[0] == [FF(**{src: ["x1"]}), FF(**{dst: ["x1"]})], flag


# -- namespaces (Hubble's TestNamespace) ------------------------------------------------

@pytest.mark.parametrize("argv,want", [
    (["--namespace", "cilium", "--port", "443"],
     [FF(source_pod=["cilium/"], source_port=["443"]),
      FF(destination_pod=["cilium/"], destination_port=["443"])]),
    (["--from-namespace", "cilium", "--from-port", "443"],
     [FF(source_pod=["cilium/"], source_port=["443"])]),
    (["--to-namespace", "cilium"], [FF(destination_pod=["cilium/"])]),
    (["--to-namespace", "cilium", "--port", "443"],
     [FF(destination_pod=["cilium/"], source_port=["443"]),
      FF(destination_pod=["cilium/"], destination_port=["443"])]),
    (["-n", "cilium", "--pod", "foo-9c76d6c95-tf788"],
     [FF(source_pod=["cilium/foo-9c76d6c95-tf788"]),
      FF(destination_pod=["cilium/foo-9c76d6c95-tf788"])]),
    (["--namespace", "cilium", "--service", "foo"],
     [FF(source_service=["cilium/foo"]), FF(destination_service=["cilium/foo"])]),
    (["--namespace", "cilium", "--namespace", "kube-system", "--service", "foo", "--service", "bar"],
     [FF(source_service=["cilium/foo", "kube-system/foo", "cilium/bar", "kube-system/bar"]),
      FF(destination_service=["cilium/foo", "kube-system/foo", "cilium/bar", "kube-system/bar"])]),
    (["--to-namespace", "cilium", "--to-pod", "cilium/foo-9c76d6c95-tf788"],
     [FF(destination_pod=["cilium/foo-9c76d6c95-tf788"])]),
    (["--from-namespace", "kube-system", "--to-pod", "cilium/foo-9c76d6c95-tf788"],
     [FF(source_pod=["kube-system/"], destination_pod=["cilium/foo-9c76d6c95-tf788"])]),
    (["--to-all-namespaces", "--port", "443"],
     [FF(destination_pod=["/"], source_port=["443"]),
      FF(destination_pod=["/"], destination_port=["443"])]),
    (["--to-all-namespaces", "--to-pod", "foo"], [FF(destination_pod=["/foo"])]),
    (["--to-all-namespaces", "--to-service", "bar"], [FF(destination_service=["/bar"])]),
    (["--all-namespaces", "--pod", "foo"], [FF(source_pod=["/foo"]), FF(destination_pod=["/foo"])]),
    (["-A", "--service", "bar"], [FF(source_service=["/bar"]), FF(destination_service=["/bar"])]),
    (["--namespace", "bookinfo"], [FF(source_pod=["bookinfo/"]), FF(destination_pod=["bookinfo/"])]),
])
def test_namespaces(argv, want):
    assert filters(*argv) == (want, [])


def test_not_namespace_goes_to_blacklist():
    assert filters("--not", "--namespace", "kube-system") == (
        [], [FF(source_pod=["kube-system/"]), FF(destination_pod=["kube-system/"])])


@pytest.mark.parametrize("argv,msg", [
    (["--to-namespace", "kube-system", "--to-pod", "cilium/foo-9c76d6c95-tf788"],
     'namespace conflict: "kube-system" does not contain "cilium/foo-9c76d6c95-tf788"'),
    (["--from-namespace", "kube-system", "--from-service", "cilium/foo"],
     'namespace conflict: "kube-system" does not contain "cilium/foo"'),
    (["--from-service", "cilium/foo", "--from-pod", "kube-system/hubble"],
     'namespace of service "cilium/foo" conflict with pod "kube-system"'),
])
def test_namespace_conflicts(capsys, argv, msg):
    assert msg in bad_flag(capsys, *argv)


CONFLICTS = [
    ("--port", "--to-port"), ("--port", "--from-port"), ("--identity", "--to-identity"),
    ("--identity", "--from-identity"), ("--workload", "--to-workload"),
    ("--workload", "--from-workload"), ("--fqdn", "--from-fqdn"), ("--fqdn", "--to-fqdn"),
    ("--ip", "--from-ip"), ("--ip", "--to-ip"), ("--label", "--from-label"),
    ("--label", "--to-label"), ("--service", "--from-service"), ("--service", "--to-service"),
    ("--pod", "--from-pod"), ("--pod", "--to-pod"), ("--namespace", "--from-namespace"),
    ("--namespace", "--to-namespace"), ("--ip", "--fqdn"), ("--ip", "--pod"),
    ("--ip", "--namespace"), ("--from-ip", "--from-pod"), ("--to-ip", "--to-namespace"),
    ("--pod", "--fqdn"), ("--namespace", "--from-service"), ("--namespace", "--fqdn"),
    ("--from-pod", "--namespace"), ("--to-pod", "--namespace"),
]


@pytest.mark.parametrize("a,b", CONFLICTS)
def test_flag_conflicts(capsys, a, b):
    assert "cannot be combined" in bad_flag(capsys, a, "1", b, "2")


def test_flag_without_conflict_ok():
    filters("--to-service", "foo", "--from-service", "bar", "--from-identity", "world",
            "--to-identity", "world", "--to-ip", "1.2.3.4", "--from-pod", "blib",
            "--from-port", "1172", "--to-port", "11245", "--workload", "buzz")
    # the same flag in both lists is no conflict
    filters("--port", "80", "--not", "--port", "8080")


def test_trailing_and_double_not(capsys):
    with pytest.raises(CLIError) as e:
        request("--from-ip", "1.2.3.4", "--not")
    assert "trailing --not" in str(e.value)
    assert "consecutive --not statements" in bad_flag(capsys, "--not", "--not", "--pod", "x")


# -- raw filters ------------------------------------------------------------------------

def test_allowlist_denylist_round_trip():
    allow = ['{"source_label":["k8s:io.kubernetes.pod.namespace=kube-system","reserved:host"]}',
             '{"destination_label":["k8s:io.kubernetes.pod.namespace=kube-system","reserved:host"]}']
    deny = ['{"source_label":["k8s:k8s-app=kube-dns"]}', '{"destination_label":["k8s:k8s-app=kube-dns"]}']
    r = request(*sum((["--allowlist", x] for x in allow), []), *sum((["--denylist", x] for x in deny), []))
    from webb.protojson import message_json
    assert [message_json(f) for f in r.whitelist] == allow
    assert [message_json(f) for f in r.blacklist] == deny
    # several filters in one flag value, camelCase names, and flags before raw entries
    r = request("--pod", "x", "--allowlist", '{"sourceIp":["1.1.1.1"]} {"verdict":["DROPPED"]}')
    assert list(r.whitelist)[2:] == [FF(source_ip=["1.1.1.1"]), FF(verdict=[fpb.DROPPED])]


def test_bad_raw_filter():
    with pytest.raises(CLIError) as e:
        request("--allowlist", '{"invalid":["filters"]}')
    assert str(e.value).startswith("""invalid --allowlist flag: failed to decode '{"invalid":["filters"]}': """)
    with pytest.raises(CLIError):
        request("--denylist", "{")


def test_print_raw_filters_yaml_exactly_as_hubble():
    r = request("--from-ip", "1.2.3.4/16", "--not", "--from-port", "80")
    assert raw_filters_yaml(r) == ("allowlist:\n    - '{\"source_ip\":[\"1.2.3.4/16\"]}'\n"
                                   "denylist:\n    - '{\"source_port\":[\"80\"]}'\n")
    r = request("--to-pod", "o'brien", "-t", "trace:to-endpoint", "--verdict", "DROPPED",
                "--http-path", "/a&b")
    text = raw_filters_yaml(r)
    assert text == ("allowlist:\n    - '{\"destination_pod\":[\"o''brien\"],\"verdict\":[\"DROPPED\"],"
                    "\"event_type\":[{\"type\":4,\"match_sub_type\":true}],"
                    "\"http_path\":[\"/a\\u0026b\"]}'\n")
    parsed = yaml.safe_load(text)
    back = json_format.Parse(parsed["allowlist"][0], fpb.FlowFilter())
    assert back == r.whitelist[0]
    assert raw_filters_yaml(request()) == "{}\n"


def test_print_raw_filters_command(capsys):
    from webb_cli.main import main
    with pytest.raises(SystemExit) as e:
        main(["observe", "--namespace", "bookinfo", "--verdict", "DROPPED", "--print-raw-filters",
              "--server", "localhost:1"])  # never contacted
    assert e.value.code == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert [json_format.Parse(x, fpb.FlowFilter()) for x in out["allowlist"]] == [
        FF(source_pod=["bookinfo/"], verdict=[fpb.DROPPED]),
        FF(destination_pod=["bookinfo/"], verdict=[fpb.DROPPED])]


def test_field_masks():
    r = request("-o", "json", "--field-mask", "time,verdict")
    assert list(r.field_mask.paths) == ["time", "verdict"]
    assert "source" in request("--use-default-field-masks").field_mask.paths
    assert not request("-o", "json", "--use-default-field-masks").HasField("field_mask")
    with pytest.raises(CLIError):
        request("-o", "json", "--field-mask", "time,invalid-field")

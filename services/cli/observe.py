"""`webb observe`: flows of the cluster (relay) or of one node (agent), with hubble
observe's flags, filters and output formats."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from webb import protojson
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb

from . import datapath_names as names
from .cli_parser import add_command
from .connection import add_server_flags, open_connection
from .errors import CLIError, rpc_error
from .flow_reader import read_flows
from .filter_builder import FilterBuilder, FilterFlagError
from .formats import color
from .formats.printer import OUTPUTS, PrintOptions, Printer
from .timefmt import FORMAT_NAMES, LAYOUTS, canonical_format, parse_time

DEFAULT_LAST = 20  # flows shown by a plain `webb observe`
ALL = 2**64 - 1

# Fields the human formats print (--use-default-field-masks).
DEFAULT_FIELD_MASK = [
    "time", "verdict", "drop_reason_desc", "auth_type", "ethernet", "IP", "l4", "source",
    "destination", "Type", "node_name", "source_names", "destination_names", "l7",
    "event_type", "source_service", "destination_service", "traffic_direction",
    "policy_match_type", "trace_observation_point", "ip_trace_id", "is_reply",
    "debug_capture_point", "sock_xlate_point", "Summary", "egress_allowed_by",
    "ingress_allowed_by", "egress_denied_by", "ingress_denied_by",
]

DESCRIPTION = """\
Observe flows: who talked to whom (pod, namespace, labels, identity, service), over
what (IP, TCP/UDP/ICMP, HTTP, DNS), and with which verdict. Without --follow it
prints the last 20 flows of the server's buffer and exits.

Filter flags select flows. A flow must match at least one value of a flag (repeating
a flag ORs its values) and every flag given (different flags AND). --not in front of
a filter flag excludes the flows it matches instead. --print-raw-filters shows the
FlowFilters a command line builds, as Hubble does."""

EXAMPLES = """
  webb observe                                       # the last 20 flows
  webb observe --namespace bookinfo --verdict DROPPED
  webb observe -f --pod bookinfo/productpage         # follow, from or to productpage pods
  webb observe --from-pod bookinfo/productpage --to-port 9080 --protocol tcp
  webb observe --to-label app=reviews --type trace:to-endpoint
  webb observe --http-status 5+ --http-method GET -o json
  webb observe --not --namespace kube-system --since 5m --all
  webb observe --since 2024-01-08T03:00:00Z --until 2024-01-08T03:05:00Z -o table
  webb observe --identity world --last 100 --print-node-name
  webb observe --ip 10.42.0.0/16 --not --protocol icmp --print-raw-filters
  webb observe -o jsonpb --last 1000 > flows.json; webb observe --input-file flows.json -o table
  webb observe --server localhost:4244               # one agent instead of the relay"""


def _type_help() -> str:
    rows = []
    for t in names.FLOW_EVENT_TYPES:
        if t == "trace":
            points = [names.TRACE_OBSERVATION_POINTS[k] for k in names.TRACE_SUBTYPE_HELP_ORDER]
            rows.append(f"{t:<15} {points[0]}")
            rows.extend(f"{'':<15} {p}" for p in points[1:])
        else:
            rows.append(f"{t:<15} n/a")
    return ("filter by event type TYPE[:SUBTYPE]; types and subtypes:\n"
            f"{'TYPE':<15} SUBTYPE\n" + "\n".join(rows))


def _time_help(what: str) -> str:
    return (f"flows {what} a time: relative (e.g. 3s, 4m, 1h43m) or one of:\n"
            + "\n".join(f"  {n + ':':<24}{LAYOUTS[n]}" for n in
                        ["StampMilli", "YearMonthDay", "YearMonthDayHour", "YearMonthDayHourMinute",
                         "RFC3339", "RFC3339Milli", "RFC3339Micro", "RFC3339Nano", "RFC1123Z"]
                        if n != "StampMilli"))


# (flags, filter name, takes a value, metavar, help)
FILTER_FLAGS: list[tuple[list[str], str, bool, str, str]] = [
    (["--not"], "not", False, "", "exclude the flows the next filter flag matches "
                                   "(e.g. --not --from-ip 2.2.2.2)"),
    (["--uuid"], "uuid", True, "UUID", "the flow with this unique identifier, if any"),
    (["--node-name"], "node-name", True, "NAME",
     'flows observed on these nodes (patterns, e.g. "k8s*", "test-cluster/*.company.com")'),
    (["--node-label"], "node-label", True, "SELECTOR",
     'flows observed on nodes with these labels (e.g. "key1=value1")'),
    (["--from-cluster"], "from-cluster", True, "NAME", "flows from endpoints of this cluster"),
    (["--cluster"], "cluster", True, "NAME", 'flows from or to this cluster (e.g. "prod-*")'),
    (["--to-cluster"], "to-cluster", True, "NAME", "flows to endpoints of this cluster"),
    (["--protocol"], "protocol", True, "PROTO",
     'L4 or L7 protocol: tcp, udp, icmp, icmpv4, icmpv6, sctp, http, dns, kafka'),
    (["--tcp-flags"], "tcp-flags", True, "FLAGS",
     'TCP flags, comma-separated within one flag (e.g. "syn", "syn,ack", "fin")'),
    (["-t", "--type"], "type", True, "TYPE[:SUBTYPE]", _type_help()),
    (["--verdict"], "verdict", True, "VERDICT",
     "flows with this verdict [FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, "
     "TRANSLATED]"),
    (["--drop-reason-desc"], "drop-reason-desc", True, "REASON",
     'drops with this reason (e.g. "POLICY_DENIED", "UNSUPPORTED_L3_PROTOCOL")'),
    (["--http-status"], "http-status", True, "CODE",
     'HTTP status code or prefix (e.g. "404", "5+")'),
    (["--http-method"], "http-method", True, "METHOD", 'HTTP method (e.g. "get", "post")'),
    (["--http-path"], "http-path", True, "REGEX", 'HTTP path regular expression (e.g. "/page/\\d+")'),
    (["--http-url"], "http-url", True, "REGEX",
     'HTTP URL regular expression (e.g. "http://.*cilium\\.io/page/\\d+")'),
    (["--http-header"], "http-header", True, "KEY:VALUE", 'HTTP header (e.g. "foo:bar")'),
    (["--trace-id"], "trace-id", True, "ID", "flows carrying this trace ID"),
    (["--ip-trace-id"], "ip-trace-id", True, "ID", "flows carrying this IP option trace ID"),
    (["--from-fqdn"], "from-fqdn", True, "FQDN", 'flows from this domain name (e.g. "*.cilium.io")'),
    (["--fqdn"], "fqdn", True, "FQDN", "flows from or to this domain name"),
    (["--to-fqdn"], "to-fqdn", True, "FQDN", "flows to this domain name"),
    (["--from-ip"], "from-ip", True, "IP", "flows from this address or CIDR (e.g. 1.1.1.1, 1.1.1.0/24)"),
    (["--snat-ip"], "snat-ip", True, "IP", "flows SNATed to this address or CIDR"),
    (["--ip"], "ip", True, "IP", "flows from or to this address or CIDR"),
    (["--to-ip"], "to-ip", True, "IP", "flows to this address or CIDR"),
    (["-4", "--ipv4"], "ipv4", False, "", "IPv4 flows only"),
    (["-6", "--ipv6"], "ipv6", False, "", "IPv6 flows only"),
    (["--ip-version"], "ip-version", True, "VERSION", 'IP version: "none", "v4" or "v6"'),
    (["--from-pod"], "from-pod", True, "[NS/]POD",
     "flows from pods whose name starts with POD (namespace default unless given)"),
    (["--pod"], "pod", True, "[NS/]POD", "flows from or to pods whose name starts with POD"),
    (["--to-pod"], "to-pod", True, "[NS/]POD", "flows to pods whose name starts with POD"),
    (["--from-namespace"], "from-namespace", True, "NS", "flows from this Kubernetes namespace"),
    (["-n", "--namespace"], "namespace", True, "NS", "flows from or to this Kubernetes namespace"),
    (["--to-namespace"], "to-namespace", True, "NS", "flows to this Kubernetes namespace"),
    (["--from-all-namespaces"], "from-all-namespaces", False, "", "flows from any namespace"),
    (["-A", "--all-namespaces"], "all-namespaces", False, "", "flows in any namespace"),
    (["--to-all-namespaces"], "to-all-namespaces", False, "", "flows to any namespace"),
    (["--from-label"], "from-label", True, "SELECTOR",
     'flows from endpoints with these labels (e.g. "app=reviews", "reserved:world")'),
    (["-l", "--label"], "label", True, "SELECTOR", "flows from or to endpoints with these labels"),
    (["--to-label"], "to-label", True, "SELECTOR", "flows to endpoints with these labels"),
    (["--from-service"], "from-service", True, "[NS/]SVC", "flows from this service's ClusterIP"),
    (["--service"], "service", True, "[NS/]SVC", "flows from or to this service's ClusterIP"),
    (["--to-service"], "to-service", True, "[NS/]SVC", "flows to this service's ClusterIP"),
    (["--from-port"], "from-port", True, "PORT", "flows with this source port (e.g. 8080)"),
    (["--port"], "port", True, "PORT", "flows with this source or destination port"),
    (["--to-port"], "to-port", True, "PORT", "flows with this destination port"),
    (["--from-workload"], "from-workload", True, "[KIND/]NAME", "flows from this workload"),
    (["--workload"], "workload", True, "[KIND/]NAME", "flows from or to this workload"),
    (["--to-workload"], "to-workload", True, "[KIND/]NAME", "flows to this workload"),
    (["--from-identity"], "from-identity", True, "ID",
     "flows from this security identity (number or reserved name: host, world, ...)"),
    (["--identity"], "identity", True, "ID", "flows from or to this security identity"),
    (["--to-identity"], "to-identity", True, "ID", "flows to this security identity"),
    (["--traffic-direction"], "traffic-direction", True, "DIR", "ingress or egress"),
    (["--cel-expression"], "cel-expression", True, "EXPR", "filter with a CEL expression"),
    (["--interface"], "interface", True, "NAME", "flows observed at this interface (e.g. eth0)"),
    (["--encrypted"], "encrypted", False, "", "encrypted flows only"),
    (["--unencrypted"], "unencrypted", False, "", "unencrypted flows only"),
]


class FilterAction(argparse.Action):
    """Feeds one filter flag, in command-line order, to the shared FilterBuilder."""

    def __init__(self, option_strings, dest, filter_name: str = "", takes_value: bool = True,
                 **kwargs) -> None:
        self.filter_name = filter_name
        super().__init__(option_strings, dest, nargs=None if takes_value else 0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        builder = getattr(namespace, self.dest, None)
        if builder is None:
            builder = FilterBuilder()
            setattr(namespace, self.dest, builder)
        value = values if self.nargs is None else "true"
        try:
            builder.set(self.filter_name, value)
        except FilterFlagError as e:
            raise argparse.ArgumentError(
                None, f'invalid argument "{value}" for "{option_string}" flag: {e}') from None


def _count(text: str) -> int:
    if not text.isdigit() or int(text) >= 2**64:
        raise argparse.ArgumentTypeError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    return int(text)


def add_parser(sub) -> None:
    p = add_command(sub, "observe", "observe flows (hubble observe)", DESCRIPTION, EXAMPLES)
    g = p.add_argument_group("selectors")
    g.add_argument("--all", action="store_true",
                   help="all flows in the buffer (best with filters: it may be a lot)")
    g.add_argument("--last", type=_count, default=0, metavar="N",
                   help=f"the last N flows in the buffer (default {DEFAULT_LAST})")
    g.add_argument("--first", type=_count, default=0, metavar="N",
                   help="the first N flows in the buffer")
    g.add_argument("-f", "--follow", action="store_true", help="keep printing new flows")
    g.add_argument("--since", default="", metavar="TIME", help=_time_help("since"))
    g.add_argument("--until", default="", metavar="TIME", help=_time_help("until"))

    g = p.add_argument_group("filters")
    for flags, name, takes_value, metavar, help_text in FILTER_FLAGS:
        kw = {"metavar": metavar} if takes_value else {}
        g.add_argument(*flags, action=FilterAction, dest="flow_filter", filter_name=name,
                       takes_value=takes_value, default=None, help=help_text, **kw)

    g = p.add_argument_group("raw filters")
    g.add_argument("--allowlist", action="append", default=[], metavar="JSON",
                   help="allowlist entry as JSON encoded FlowFilter(s) (repeatable)")
    g.add_argument("--denylist", action="append", default=[], metavar="JSON",
                   help="denylist entry as JSON encoded FlowFilter(s) (repeatable)")

    g = p.add_argument_group("formatting")
    g.add_argument("-o", "--output", default="compact", metavar="FORMAT",
                   help="output format, one of:\n"
                        "  compact:  one line per flow (default)\n"
                        "  dict:     each flow as KEY: value lines\n"
                        "  jsonpb:   JSON encoded GetFlowsResponse (proto3 JSON mapping)\n"
                        "  json:     alias for jsonpb\n"
                        "  table:    tab-aligned columns (not with --follow)")
    g.add_argument("--print-node-name", action="store_true", help="print the node name of flows")
    g.add_argument("--print-policy-names", action="store_true",
                   help="print the policies behind policy verdicts")
    g.add_argument("--time-format", default="StampMilli", metavar="NAME",
                   help="time format of compact, dict and table output, one of:\n"
                        + "\n".join(f"  {n + ':':<24}{LAYOUTS[n]}" for n in FORMAT_NAMES))
    g.add_argument("--numeric", action="store_true",
                   help="addresses instead of pod, service and DNS names")
    g.add_argument("--ip-translation", default="true", nargs="?", const="true",
                   metavar="true|false",
                   help="show pod, service and DNS names for addresses (default true)")
    g.add_argument("--color", default="auto", metavar="WHEN",
                   help="colorize compact and dict output: auto (default, on a terminal), "
                        "always or never")

    g = p.add_argument_group("other")
    g.add_argument("-s", "--silent-errors", action="store_true",
                   help="do not print node status warnings and errors")
    g.add_argument("--print-raw-filters", action="store_true",
                   help="print the allowlist/denylist filters and exit without contacting "
                        "the server")
    g.add_argument("--input-file", default="", metavar="FILE",
                   help="read flows (jsonpb lines) from FILE ('-' for stdin) instead of a server")
    g.add_argument("--field-mask", default="", metavar="FIELDS",
                   help="comma-separated flow fields to ask for (json output only)")
    g.add_argument("--use-default-field-masks", action="store_true",
                   help="ask only for the fields the compact, dict and table formats show")
    g.add_argument("-D", "--debug", action="store_true",
                   help="also print informational node status events")
    add_server_flags(p)


def print_options(a: argparse.Namespace) -> PrintOptions:
    output = OUTPUTS.get(a.output)
    if output is None:
        raise CLIError(f"invalid output format: {a.output}", 2)
    if output == "table" and a.follow:
        raise CLIError("table output format is not compatible with follow mode", 2)
    fmt = canonical_format(a.time_format)
    if fmt is None:
        raise CLIError(f"invalid --time-format value: {a.time_format} (one of "
                       f"{', '.join(FORMAT_NAMES)})", 2)
    if a.color.lower() not in color.COLOR_MODES:
        raise CLIError(f"invalid --color value: {a.color} (auto, always or never)", 2)
    if a.ip_translation.lower() not in ("true", "false", "1", "0"):
        raise CLIError(f'invalid argument "{a.ip_translation}" for "--ip-translation" flag', 2)
    if a.field_mask and output != "jsonpb":
        raise CLIError(f"{a.output} output format is not compatible with custom field mask", 2)
    translate = a.ip_translation.lower() in ("true", "1") and not a.numeric
    return PrintOptions(output=output, time_format=fmt,
                        color=color.enabled(a.color.lower(), sys.stdout),
                        node_name=a.print_node_name, ip_translation=translate,
                        policy_names=a.print_policy_names, debug=a.debug,
                        silent_errors=a.silent_errors)


def _raw_filters(entries: list[str], flag: str) -> list[fpb.FlowFilter]:
    out = []
    for entry in entries:
        try:
            out.extend(protojson.parse_messages(entry, fpb.FlowFilter))
        except Exception as e:  # json or protobuf parse errors
            raise CLIError(f"invalid --{flag} flag: failed to decode '{entry}': {e}", 2) from None
    return out


def build_request(a: argparse.Namespace, now: float | None = None) -> opb.GetFlowsRequest:
    """The GetFlowsRequest a command line asks for, as hubble observe builds it."""
    first, last = a.first > 0, a.last > 0
    if first and last:
        raise CLIError("cannot set both --first and --last", 2)
    if first and a.all:
        raise CLIError("cannot set both --first and --all", 2)
    if first and a.follow:
        raise CLIError("cannot set both --first and --follow", 2)
    if last and a.all:
        raise CLIError("cannot set both --last and --all", 2)
    req = opb.GetFlowsRequest(follow=a.follow, first=first)
    if a.since:
        try:
            req.since.CopyFrom(parse_time(a.since, now))
        except ValueError as e:
            raise CLIError(f"failed to parse the since time: {e}", 2) from None
    if a.until and not a.follow:  # the server stops at "now" by itself when following
        try:
            req.until.CopyFrom(parse_time(a.until, now))
        except ValueError as e:
            raise CLIError(f"failed to parse the until time: {e}", 2) from None
    number = a.first if first else a.last
    if not a.since and not (a.until and not a.follow) and not first:
        if a.all:
            number = ALL
        elif number == 0 and not a.follow and not a.input_file:
            number = DEFAULT_LAST
    req.number = number
    builder: FilterBuilder | None = a.flow_filter
    wl, bl = [], []
    if builder is not None:
        try:
            wl, bl = builder.finish()
        except FilterFlagError as e:
            raise CLIError(str(e), 2) from None
    req.whitelist.extend(wl + _raw_filters(a.allowlist, "allowlist"))
    req.blacklist.extend(bl + _raw_filters(a.denylist, "denylist"))
    paths = [x for x in a.field_mask.split(",") if x] if a.field_mask else []
    if not paths and a.use_default_field_masks and OUTPUTS.get(a.output) != "jsonpb":
        paths = list(DEFAULT_FIELD_MASK)
    if paths:
        mask = FieldMask(paths=paths)
        if not mask.IsValidForDescriptor(fpb.Flow.DESCRIPTOR):
            raise CLIError(f"failed to construct field mask: invalid field path in "
                           f"{','.join(paths)}", 2)
        req.field_mask.CopyFrom(mask)
    return req


def _yaml_quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def raw_filters_yaml(req: opb.GetFlowsRequest) -> str:
    """--print-raw-filters: the allowlist/denylist as YAML of JSON strings (as Hubble)."""
    out = ""
    for key, filters in (("allowlist", req.whitelist), ("denylist", req.blacklist)):
        if filters:
            out += f"{key}:\n" + "".join(f"    - {_yaml_quote(protojson.message_json(f))}\n"
                                         for f in filters)
    return out or "{}\n"  # YAML of an empty mapping, as Hubble prints it


def _responses_from_file(path: str, req: opb.GetFlowsRequest, warn):
    """Hubble's --input-file: GetFlowsResponse JSON lines, filtered like a server would."""
    from webb.filters import FilterError, build_filter

    try:
        keep = build_filter(list(req.whitelist), list(req.blacklist))
    except FilterError as e:
        raise CLIError(str(e), 2) from None
    try:
        stream = sys.stdin if path == "-" else open(Path(path), encoding="utf-8")
    except OSError as e:
        raise CLIError(f"cannot read --input-file '{path}': {e.strerror}") from None

    def ts(t) -> tuple[int, int]:
        return (t.seconds, t.nanos)

    selected = []
    with stream:
        for n, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                res = protojson.parse_messages(line, opb.GetFlowsResponse)[0]
            except Exception as e:
                warn(f"{path}:{n}: not a GetFlowsResponse: {e}")
                continue
            if res.WhichOneof("response_types") != "flow":
                continue
            f = res.flow
            if req.HasField("since") and ts(f.time) < ts(req.since):
                continue
            if req.HasField("until") and ts(f.time) > ts(req.until):
                continue
            if not keep(f):
                continue
            selected.append(res)
            if req.first and len(selected) >= req.number:
                break
    if req.number and not req.first:
        selected = selected[-req.number:] if req.number < len(selected) else selected
    return selected


def run(a: argparse.Namespace) -> int:
    opts = print_options(a)
    req = build_request(a)
    if a.print_raw_filters:
        sys.stdout.write(raw_filters_yaml(req))
        return 0
    printer = Printer(opts)
    if a.input_file:
        for res in _responses_from_file(a.input_file, req, lambda m: printer._error(m + "\n")):
            printer.write_response(res)
        printer.close()
        return 0
    with open_connection(a) as conn:
        try:
            read_flows(conn, req, printer.write_response, flush=a.follow, debug=a.debug)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return 0
            printer.close()
            raise rpc_error(e, conn.target, streaming=True) from None
        except KeyboardInterrupt:
            printer.close()
            return 0
        printer.close()
    return 0

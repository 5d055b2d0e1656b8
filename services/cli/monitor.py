"""`webb monitor`: live datapath events in `cilium monitor`'s one-line forms (drops,
traces, policy verdicts, L7), made from the flows of the relay or of one agent."""
from __future__ import annotations

import argparse
import sys

import grpc

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb

from . import datapath_names as names
from .cli_parser import add_command
from .connection import add_server_flags, open_connection
from .errors import rpc_error
from .flow_reader import read_flows
from .formats.monitor_line import event_kind, lost_line, monitor_line

# Event types that become flows; the others exist in cilium monitor but carry no flows.
FLOW_TYPES = {"drop": names.DROP, "trace": names.TRACE, "policy-verdict": names.POLICY_VERDICT,
              "l7": names.ACCESS_LOG}
OTHER_TYPES = ["debug", "capture", "agent", "trace-sock", "recorder"]
NO_FLOW_TYPE = 255  # asked for when only event types that never become flows are wanted

DESCRIPTION = """\
Print datapath events as they happen, one line each, in the forms of cilium monitor:

  xx drop (Policy denied) flow 0x5e1f00aa to endpoint 148, identity 22047->15745: 10.42.0.220:56148 -> 10.42.0.231:9080 tcp SYN
  -> endpoint 148 flow 0x5e1f00aa identity 22047->15745 state new ifindex lxc9a1: 10.42.0.220:56148 -> 10.42.0.231:9080 tcp SYN
  Policy verdict log: flow 0x5e1f00aa local EP ID 148, remote ID 22047, proto 6, ingress, action deny, auth: disabled, match none, ...
  <- Request http from 12 ([k8s:app=productpage ...]) to 148 ([k8s:app=reviews ...]), identity 22047->15745, verdict Forwarded GET http://reviews:9080/reviews/0 => 0

Endpoint numbers are the endpoint IDs `webb endpoint list` shows; identities are
security identities (`webb identity get`). "flow 0x..." identifies one direction of a
connection. By default the events of the whole cluster (relay); --server an agent
for one node. Ctrl-C stops."""

EXAMPLES = """
  webb monitor
  webb monitor --type drop
  webb monitor --type trace --type l7 --related-to 148
  webb monitor --from 148 -n                  # events from endpoint 148, numeric identities
  webb monitor --server localhost:4244        # one node's agent"""


def _endpoint_id(text: str) -> int:
    if not text.isdigit() or int(text) >= 2**16:
        raise argparse.ArgumentTypeError(f'invalid endpoint ID "{text}"')
    return int(text)


def _event_type(text: str) -> str:
    if text not in FLOW_TYPES and text not in OTHER_TYPES:
        raise argparse.ArgumentTypeError(
            f"Unknown type ({text}). Please use one of the following ones "
            f"[{' '.join(list(FLOW_TYPES) + OTHER_TYPES)}]")
    return text


def add_parser(sub) -> None:
    p = add_command(sub, "monitor", "live datapath events, one line each (cilium monitor)",
                    DESCRIPTION, EXAMPLES)
    p.add_argument("-t", "--type", action="append", type=_event_type, default=[], metavar="TYPE",
                   help="only these event types (repeatable): drop, trace, policy-verdict, l7")
    p.add_argument("--from", dest="from_ids", action="append", type=_endpoint_id, default=[],
                   metavar="ENDPOINT", help="only events from these endpoint IDs")
    p.add_argument("--to", dest="to_ids", action="append", type=_endpoint_id, default=[],
                   metavar="ENDPOINT", help="only events to these endpoint IDs")
    p.add_argument("--related-to", dest="related_ids", action="append", type=_endpoint_id,
                   default=[], metavar="ENDPOINT",
                   help="only events from or to these endpoint IDs")
    p.add_argument("-n", "--numeric", action="store_true",
                   help="reserved identities as numbers (2) instead of names (world)")
    p.add_argument("--node-name", action="append", default=[], metavar="NAME",
                   help="only events of these nodes (like running cilium monitor on them)")
    add_server_flags(p)


def build_request(a: argparse.Namespace) -> opb.GetFlowsRequest:
    req = opb.GetFlowsRequest(follow=True)
    flt = fpb.FlowFilter(node_name=a.node_name)
    types = [FLOW_TYPES[t] for t in a.type if t in FLOW_TYPES]
    if a.type and not types:
        # Only event types that never become flows: ask for nothing real.
        types = [NO_FLOW_TYPE]
    flt.event_type.extend(fpb.EventTypeFilter(type=t) for t in dict.fromkeys(types))
    if flt != fpb.FlowFilter():
        req.whitelist.append(flt)
    return req


def matches(f: fpb.Flow, a: argparse.Namespace) -> bool:
    """cilium monitor's --from/--to/--related-to (endpoint IDs) and --type."""
    src, dst = f.source.ID, f.destination.ID
    if a.from_ids and src not in a.from_ids:
        return False
    if a.to_ids and dst not in a.to_ids:
        return False
    if a.related_ids and src not in a.related_ids and dst not in a.related_ids:
        return False
    if a.type and event_kind(f) not in a.type:
        return False
    return event_kind(f) != ""


def run(a: argparse.Namespace) -> int:
    req = build_request(a)
    with open_connection(a) as conn:
        sys.stderr.write(f"Listening for events on {conn.target}\nPress Ctrl-C to quit\n")
        sys.stderr.flush()

        def show(res: opb.GetFlowsResponse) -> None:
            kind = res.WhichOneof("response_types")
            if kind == "flow":
                if matches(res.flow, a):
                    sys.stdout.write(monitor_line(res.flow, a.numeric) + "\n")
            elif kind == "lost_events":
                sys.stdout.write(lost_line(res) + "\n")

        try:
            read_flows(conn, req, show, flush=True)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return 0
            raise rpc_error(e, conn.target, streaming=True) from None
        except KeyboardInterrupt:
            return 0
    return 0

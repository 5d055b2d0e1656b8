"""`webb list nodes` and `webb list namespaces` (hubble list)."""
from __future__ import annotations

import argparse
import sys

from webb import protojson
from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc
from webb.api.relay import relay_pb2 as rpb
from webb.durations import format_duration

from .cli_parser import add_command
from .connection import add_server_flags, open_connection, unary
from .errors import CLIError
from .formats.flow_fields import safe
from .tabwriter import tabulate

_STATES = {rpb.NODE_CONNECTED: "connected", rpb.NODE_UNAVAILABLE: "unavailable",
           rpb.NODE_GONE: "gone", rpb.NODE_ERROR: "error"}

DESCRIPTION = "List the nodes behind the server, or the namespaces seen in recent flows."
EXAMPLES = """
  webb list nodes
  webb list nodes -o wide
  webb list namespaces
  webb list namespaces -o json"""


def _output_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="table", metavar="FORMAT",
                   help="output format, one of:\n"
                        "  table:    tab-aligned columns (default)\n"
                        "  wide:     tab-aligned columns with more information\n"
                        "  json:     JSON encoding")


def add_parser(sub) -> None:
    p = add_command(sub, "list", "list nodes or namespaces (hubble list)", DESCRIPTION, EXAMPLES)
    ls = p.add_subparsers(dest="list_what", metavar="WHAT")
    n = add_command(ls, "nodes", "list the nodes (agents) and their flow buffers",
                    "List the nodes with their state, age, flow rate and buffer use. Through the "
                    "relay every agent is a node; an agent lists itself.",
                    "  webb list nodes\n  webb list nodes -o wide\n  webb list nodes -o json",
                    aliases=["node"])
    _output_flag(n)
    add_server_flags(n)
    ns = add_command(ls, "namespaces", "list the namespaces with recent flows",
                     "List the Kubernetes namespaces seen in flows of the last hour.",
                     "  webb list namespaces\n  webb list namespaces -o wide",
                     aliases=["namespace", "ns"])
    _output_flag(ns)
    add_server_flags(ns)


def nodes_table(nodes: list[opb.Node], wide: bool) -> str:
    text = "NAME\tSTATUS\tAGE\tFLOWS/S\tCURRENT/MAX-FLOWS"
    if wide:
        text += "\tVERSION\tADDRESS\tTLS"
    text += "\n"
    for n in nodes:
        age = rate = "N/A"
        secs = (n.uptime_ns + 500_000_000) // 1_000_000_000  # Round(time.Second)
        if secs > 0:
            age = format_duration(secs * 1_000_000_000)
            rate = f"{n.seen_flows / secs:.2f}"
        ratio = "N/A"
        if n.max_flows > 0:
            ratio = f"{n.num_flows}/{n.max_flows} ({n.num_flows / n.max_flows * 100:6.2f}%)"
        text += f"{safe(n.name)}\t{_STATES.get(n.state, 'unknown').title()}\t{age}\t{rate}\t{ratio}"
        if wide:
            tls = "N/A"
            if n.HasField("tls"):
                tls = "Enabled" if n.tls.enabled else "Disabled"
            text += f"\t{safe(n.version) or 'N/A'}\t{safe(n.address)}\t{tls}"
        text += "\n"
    return tabulate(text)


def namespaces_table(namespaces: list[opb.Namespace], wide: bool) -> str:
    text = "NAMESPACE" + ("\tCLUSTER" if wide else "") + "\n"
    for ns in namespaces:
        text += safe(ns.namespace)
        if wide and ns.cluster:
            text += "\t" + safe(ns.cluster)
        text += "\n"
    return tabulate(text)


def run(a: argparse.Namespace) -> int:
    if not a.list_what:
        raise CLIError("what to list? 'webb list nodes' or 'webb list namespaces'", 2)
    if a.output not in ("table", "wide", "json"):
        raise CLIError(f"unknown output format: {a.output}", 2)
    with open_connection(a) as conn:
        stub = observer_pb2_grpc.ObserverStub(conn.channel)
        if a.list_what in ("nodes", "node"):
            items = sorted(unary(conn, stub.GetNodes, opb.GetNodesRequest()).nodes,
                           key=lambda n: n.name)
            table = nodes_table
        else:
            items = list(unary(conn, stub.GetNamespaces, opb.GetNamespacesRequest()).namespaces)
            table = namespaces_table
    if a.output == "json":
        sys.stdout.write(protojson.dumps_indent([protojson.to_dict(x) for x in items]) + "\n")
    else:
        sys.stdout.write(table(items, a.output == "wide"))
    return 0

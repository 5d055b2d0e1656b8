"""`webb endpoint list|get`: the agent's endpoints (cilium endpoint list, kubectl get
ciliumendpoints): ID, pod, security identity, labels, addresses, datapath state."""
from __future__ import annotations

import argparse
import ipaddress
import sys

from webb import protojson
from webb.api.admin import admin_pb2 as apb

from .admin_client import call
from .cli_parser import add_command
from .connection import add_server_flags, open_connection
from .errors import CLIError
from .formats.flow_fields import safe
from .tabwriter import tabulate

DESCRIPTION = """\
Endpoints: a workload's network interface with its pod, namespace, labels, security
identity and addresses. The ENDPOINT number is the one flows carry (source.ID,
destination.ID) and `webb monitor` prints ("to endpoint 148"). STATUS is ready when
the datapath is attached to the endpoint's interface. Read from an agent's admin API."""

EXAMPLES = """
  webb endpoint list
  webb endpoint list -n bookinfo -o wide
  webb endpoint get 148
  webb endpoint get bookinfo/productpage-v1-6b746f74dc-2xk9v
  webb endpoint get productpage -o json          # a unique pod name (prefix) is enough"""


def add_parser(sub) -> None:
    p = add_command(sub, "endpoint", "endpoints of an agent (cilium endpoint)", DESCRIPTION,
                    EXAMPLES)
    eps = p.add_subparsers(dest="endpoint_cmd", metavar="COMMAND")
    ls = add_command(eps, "list", "list endpoints",
                     "List the agent's endpoints, one row each, their identity labels below.",
                     "  webb endpoint list\n  webb endpoint list -n bookinfo\n"
                     "  webb endpoint list -o json", aliases=["ls"])
    ls.add_argument("-n", "--namespace", default="", metavar="NS",
                    help="only endpoints of this namespace")
    ls.add_argument("-o", "--output", default="table", choices=["table", "wide", "json"],
                    help="table (default), wide (adds node, interface, workload) or json")
    add_server_flags(ls, agent=True)
    g = add_command(eps, "get", "show one endpoint",
                    "Show one endpoint by ID, namespace/pod, or a pod name (or prefix) that is "
                    "unique on the agent.",
                    "  webb endpoint get 148\n  webb endpoint get bookinfo/details-v1-79f774bdb9-6x8cn\n"
                    "  webb endpoint get details -o json")
    g.add_argument("endpoint", metavar="ENDPOINT", help="endpoint ID, NAMESPACE/POD or POD")
    g.add_argument("-o", "--output", default="dict", choices=["dict", "table", "json"],
                   help="dict (default: KEY: value lines), table or json")
    add_server_flags(g, agent=True)


def _labels(ep: apb.Endpoint) -> list[str]:
    labels = list(ep.identity_labels) or [f"k8s:{k}={v}" for k, v in ep.labels.items()]
    return sorted(safe(x) for x in labels)


def _ips(ep: apb.Endpoint) -> tuple[str, str]:
    v4 = v6 = ""
    for ip in ep.ips:
        try:
            addr = ipaddress.ip_address(ip.split("/")[0])
        except ValueError:
            continue
        if addr.version == 4 and not v4:
            v4 = ip
        elif addr.version == 6 and not v6:
            v6 = ip
    return v6, v4


def status(ep: apb.Endpoint) -> str:
    return "ready" if ep.attached else "not-ready"


def _pod(ep: apb.Endpoint) -> str:
    return safe(f"{ep.namespace}/{ep.name}" if ep.namespace else ep.name)


def _workload(ep: apb.Endpoint) -> str:
    w = ep.workload
    return safe(f"{w.kind}/{w.name}" if w.kind else w.name)


def _enforcement(on: bool) -> str:
    return "Enabled" if on else "Disabled"


def endpoints_table(eps: list[apb.Endpoint], wide: bool = False) -> str:
    """cilium endpoint list's columns (plus the pod), labels one per line."""
    head = ("ENDPOINT\tPOD\tPOLICY (ingress)\tPOLICY (egress)\tIDENTITY\t"
            "LABELS (source:key[=value])\tIPv6\tIPv4\tSTATUS")
    head2 = "\t\tENFORCEMENT\tENFORCEMENT\t\t\t\t\t"
    if wide:
        head += "\tNODE\tINTERFACE\tWORKLOAD"
        head2 += "\t\t\t"
    text = head + "\n" + head2 + "\n"
    for ep in eps:
        v6, v4 = _ips(ep)
        labels = _labels(ep) or [""]
        row = (f"{ep.id}\t{_pod(ep)}\t{_enforcement(ep.policy_enforcement_ingress)}\t"
               f"{_enforcement(ep.policy_enforcement_egress)}\t{ep.identity}\t{labels[0]}\t"
               f"{v6}\t{v4}\t{status(ep)}")
        if wide:
            row += f"\t{safe(ep.node)}\t{safe(ep.interface)}\t{_workload(ep)}"
        text += row + "\n"
        for label in labels[1:]:
            text += f"\t\t\t\t\t{label}\t\t\t" + ("\t\t\t" if wide else "") + "\n"
    return tabulate(text, strip=True)


def _policies(on: bool, names: list[str]) -> str:
    return _enforcement(on) + (f" ({', '.join(safe(n) for n in names)})" if names else "")


def endpoint_dict(ep: apb.Endpoint) -> str:
    labels = _labels(ep)
    rows = [("ENDPOINT", str(ep.id)), ("POD", _pod(ep)), ("NODE", safe(ep.node)),
            ("IDENTITY", str(ep.identity)), ("LABELS", labels[0] if labels else ""),
            *(("", x) for x in labels[1:]),
            ("IPS", ", ".join(safe(x) for x in ep.ips)), ("INTERFACE", safe(ep.interface)),
            ("WORKLOAD", _workload(ep)), ("SERVICE ACCOUNT", safe(ep.service_account)),
            ("POLICY INGRESS", _policies(ep.policy_enforcement_ingress, list(ep.ingress_policies))),
            ("POLICY EGRESS", _policies(ep.policy_enforcement_egress, list(ep.egress_policies))),
            *((("ANNOTATIONS" if i == 0 else ""), safe(f"{k}={v}"))
              for i, (k, v) in enumerate(sorted(ep.annotations.items()))),
            ("STATUS", status(ep) + (f" ({safe(ep.attach_error)})" if ep.attach_error else ""))]
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k.rjust(width)}{':' if k else ' '} {v}\n" for k, v in rows)


def find_endpoint(eps: list[apb.Endpoint], wanted: str) -> apb.Endpoint:
    """By ID, namespace/name, exact name, or a unique name prefix."""
    if wanted.isdigit():
        hits = [e for e in eps if e.id == int(wanted)]
    elif "/" in wanted:
        ns, name = wanted.split("/", 1)
        hits = [e for e in eps if e.namespace == ns and e.name == name]
        if not hits:
            hits = [e for e in eps if e.namespace == ns and e.name.startswith(name)]
    else:
        hits = [e for e in eps if e.name == wanted]
        if not hits:
            hits = [e for e in eps if e.name.startswith(wanted)]
    if not hits:
        raise CLIError(f"endpoint {wanted} not found")
    if len(hits) > 1:
        raise CLIError(f"endpoint {wanted} is ambiguous: "
                       + ", ".join(f"{e.id} ({_pod(e)})" for e in hits))
    return hits[0]


def run(a: argparse.Namespace) -> int:
    if not a.endpoint_cmd:
        raise CLIError("'webb endpoint list' or 'webb endpoint get ENDPOINT'", 2)
    with open_connection(a) as conn:
        eps = list(call(conn, "ListEndpoints", apb.ListEndpointsRequest()).endpoints)
    eps.sort(key=lambda e: e.id)
    if a.endpoint_cmd == "get":
        ep = find_endpoint(eps, a.endpoint)
        if a.output == "json":
            sys.stdout.write(protojson.dumps_indent(protojson.to_dict(ep)) + "\n")
        elif a.output == "table":
            sys.stdout.write(endpoints_table([ep]))
        else:
            sys.stdout.write(endpoint_dict(ep))
        return 0
    if a.namespace:
        eps = [e for e in eps if e.namespace == a.namespace]
    if a.output == "json":
        sys.stdout.write(protojson.dumps_indent([protojson.to_dict(e) for e in eps]) + "\n")
    else:
        sys.stdout.write(endpoints_table(eps, a.output == "wide"))
    return 0

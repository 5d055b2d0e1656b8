"""`webb identity list|get`: security identities of an agent (cilium identity)."""
from __future__ import annotations

import argparse
import sys

from webb import protojson
from webb.api.admin import admin_pb2 as apb
from webb.labels import LabelSet, parse_select_label

from . import datapath_names as names
from .admin_client import call
from .cli_parser import add_command
from .connection import add_server_flags, open_connection
from .errors import CLIError
from .formats.flow_fields import safe
from .tabwriter import tabulate

DESCRIPTION = """\
Security identities: a number for a set of security-relevant labels, shared by every
pod with those labels and the same on every node. Reserved identities keep Cilium's
numbers (1 host, 2 world, 4 health, ...). Read from an agent's admin API."""

EXAMPLES = """
  webb identity list
  webb identity list k8s:app=reviews              # identities with these labels
  webb identity list --endpoints                  # only those of local endpoints, with counts
  webb identity get 22047
  webb identity get world -o json"""


def add_parser(sub) -> None:
    p = add_command(sub, "identity", "security identities (cilium identity)", DESCRIPTION,
                    EXAMPLES)
    ids = p.add_subparsers(dest="identity_cmd", metavar="COMMAND")
    ls = add_command(ids, "list", "list identities",
                     "List the identities the agent knows, each with its labels. LABELS "
                     "narrow the list to identities having all of them (\"k8s:app=reviews\", "
                     "or \"app=reviews\" for any source).",
                     "  webb identity list\n  webb identity list app=reviews\n"
                     "  webb identity list --endpoints -o json", aliases=["ls"])
    ls.add_argument("labels", nargs="*", metavar="LABELS", help="only identities with these labels")
    ls.add_argument("--endpoints", action="store_true",
                    help="only identities of the agent's endpoints, with their reference counts")
    ls.add_argument("-o", "--output", default="table", choices=["table", "json"],
                    help="table (default) or json")
    add_server_flags(ls, agent=True)
    g = add_command(ids, "get", "show one identity",
                    "Show the labels of one identity, by number or reserved name.",
                    "  webb identity get 22047\n  webb identity get world\n"
                    "  webb identity get 1 -o json")
    g.add_argument("id", metavar="ID", help="identity number or reserved name (host, world, ...)")
    g.add_argument("-o", "--output", default="table", choices=["table", "json"],
                   help="table (default) or json")
    add_server_flags(g, agent=True)


def _has_label(have: list[str], want: str) -> bool:
    """`--label k8s:app=x` names the source; `--label app=x` matches it from any source."""
    source, key, value = parse_select_label(want)
    return value in LabelSet(have).values(source, key)


def identities_table(idents: list[apb.Identity], refcounts: dict[int, int] | None = None) -> str:
    text = "ID\tLABELS" + ("\tREFCOUNT" if refcounts is not None else "") + "\n"
    for ident in idents:
        labels = sorted(safe(x) for x in ident.labels) or [""]
        for i, label in enumerate(labels):
            if refcounts is None:
                text += f"{ident.id}\t{label}\n" if i == 0 else f"\t{label}\n"
            else:
                text += (f"{ident.id}\t{label}\t{refcounts.get(ident.id, 0)}\t\n" if i == 0
                         else f"\t{label}\t\n")
    return tabulate(text, minwidth=5, padding=3, strip=True)


def _json(items) -> str:
    return protojson.dumps_indent(items) + "\n"


def run(a: argparse.Namespace) -> int:
    if not a.identity_cmd:
        raise CLIError("'webb identity list' or 'webb identity get ID'", 2)
    if a.identity_cmd == "get":
        try:
            ident_id = names.parse_identity(a.id)
        except ValueError as e:
            raise CLIError(f'invalid argument "{a.id}": {e}', 2) from None
        with open_connection(a) as conn:
            try:
                ident = call(conn, "GetIdentity", apb.GetIdentityRequest(id=ident_id))
            except CLIError as e:
                if "code = NotFound" in str(e):
                    raise CLIError(f"identity {ident_id} not found") from None
                raise
        sys.stdout.write(_json(protojson.to_dict(ident)) if a.output == "json"
                         else identities_table([ident]))
        return 0
    with open_connection(a) as conn:
        idents = list(call(conn, "ListIdentities", apb.ListIdentitiesRequest()).identities)
        refcounts = None
        if a.endpoints:
            eps = call(conn, "ListEndpoints", apb.ListEndpointsRequest()).endpoints
            refcounts = {}
            for ep in eps:
                refcounts[ep.identity] = refcounts.get(ep.identity, 0) + 1
            idents = [i for i in idents if i.id in refcounts]
    idents = [i for i in idents if all(_has_label(list(i.labels), w) for w in a.labels)]
    idents.sort(key=lambda i: i.id)
    if a.output == "json":
        objs = [protojson.to_dict(i) for i in idents]
        if refcounts is not None:
            objs = [{"identity": o, "refCount": refcounts[i.id]} for o, i in zip(objs, idents)]
        sys.stdout.write(_json(objs))
    else:
        sys.stdout.write(identities_table(idents, refcounts))
    return 0

"""`webb policy apply|get|delete`: network policies of the cluster, the way `kubectl apply -f`
handles CiliumNetworkPolicy and NetworkPolicy, for the demo and single hosts.

A policy is a cluster object: the agent asked (`--server`) writes it to the cluster's
policy store, which every agent watches (the demo's agents share one), so one command
reaches every node. `--local` narrows a change to the agent asked (debugging); an agent
without a store (a single host) is its own cluster. `--server` also takes several agents
(comma-separated) and `--all-nodes` every agent a relay knows.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc
import yaml

from webb.api.admin import admin_pb2 as apb
from webb.api.admin import admin_pb2_grpc
from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc

from .cli_parser import add_command
from .connection import RELAY_SERVER, add_server_flags, open_connection
from .errors import CLIError, rpc_error
from .formats.flow_fields import safe
from .tabwriter import tabulate

DESCRIPTION = """\
Network policies (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, Kubernetes
NetworkPolicy) enforced by webb's agents in their eBPF programs. An endpoint that a
policy selects is default-deny in that direction; denied packets show up as DROPPED
flows with "Policy denied". Policies are cluster objects: the agent asked (admin API,
:4244) puts them in the cluster's policy store and every agent enforces them; --local
changes the agent asked only."""

EXAMPLES = """
  webb policy apply -f reviews-l4.yaml                # the whole cluster
  webb policy apply -f p.yaml --local --server 127.0.0.2:4244   # one agent (debugging)
  webb policy apply -f p.yaml --server 127.0.0.1:4244,127.0.0.2:4244
  webb policy get -A
  webb policy get reviews -n bookinfo -o yaml
  webb policy delete reviews -n bookinfo"""

KIND_RESOURCES = {"CiliumNetworkPolicy": "ciliumnetworkpolicy.cilium.io",
                  "CiliumClusterwideNetworkPolicy": "ciliumclusterwidenetworkpolicy.cilium.io",
                  "NetworkPolicy": "networkpolicy.networking.k8s.io"}
POLICY_SUFFIXES = (".yaml", ".yml", ".json")


def add_parser(sub) -> None:
    p = add_command(sub, "policy", "network policies of agents (kubectl apply for CNPs)",
                    DESCRIPTION, EXAMPLES)
    ps = p.add_subparsers(dest="policy_cmd", metavar="COMMAND")
    ap = add_command(ps, "apply", "apply policies from files",
                     "Apply the policies in FILEs (YAML or JSON, several documents per file; "
                     "a directory means its .yaml/.yml/.json files; - is stdin). They are "
                     "applied together or, if one is malformed, not at all: the error names "
                     "the field and nothing already enforced changes.",
                     "  webb policy apply -f reviews-l4.yaml\n  cat p.yaml | webb policy apply -f -\n"
                     "  webb policy apply -f p.yaml --dry-run")
    ap.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                    help="file, directory or - (repeatable)")
    ap.add_argument("--dry-run", action="store_true", help="only validate")
    ap.add_argument("-o", "--output", default="text", choices=["text", "json"],
                    help="text (default) or json")
    _targets(ap)
    _local(ap)
    g = add_command(ps, "get", "list policies",
                    "List the agent's policies, or show one by NAME.",
                    "  webb policy get\n  webb policy get -A -o wide\n"
                    "  webb policy get reviews -n bookinfo -o yaml", aliases=["list", "ls"])
    g.add_argument("name", nargs="?", default="", metavar="NAME", help="a policy ([NS/]NAME)")
    g.add_argument("-n", "--namespace", default="", metavar="NS",
                   help="namespace (default: every namespace when listing, 'default' for NAME)")
    g.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    g.add_argument("-o", "--output", default="table", choices=["table", "wide", "yaml", "json"],
                   help="table (default), wide (adds selected endpoints), yaml or json")
    _targets(g)
    d = add_command(ps, "delete", "delete a policy",
                    "Delete the policy NAME (of any kind unless --kind is given).",
                    "  webb policy delete reviews -n bookinfo\n  webb policy delete bookinfo/reviews\n"
                    "  webb policy delete allow-dns --kind ccnp")
    d.add_argument("name", metavar="NAME", help="[NS/]NAME")
    d.add_argument("-n", "--namespace", default="", metavar="NS",
                   help="namespace (default 'default')")
    d.add_argument("--kind", default="", help="CiliumNetworkPolicy (cnp), "
                   "CiliumClusterwideNetworkPolicy (ccnp) or NetworkPolicy (netpol)")
    _targets(d)
    _local(d)


def _local(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local", action="store_true",
                   help="only the agent(s) given by --server, not the cluster's policy store "
                        "(debugging: the other nodes keep what they enforce)")


def _targets(p: argparse.ArgumentParser) -> None:
    add_server_flags(p, agent=True)
    p.add_argument("--all-nodes", action="store_true",
                   help="every agent the relay (--relay) lists in GetNodes")
    p.add_argument("--relay", default=RELAY_SERVER, metavar="ADDRESS",
                   help=f"relay for --all-nodes (default {RELAY_SERVER})")


def _servers(a: argparse.Namespace) -> list[str]:
    if not a.all_nodes:
        return [s.strip() for s in a.server.split(",") if s.strip()]
    relay = argparse.Namespace(**{**vars(a), "server": a.relay})
    with open_connection(relay) as conn:
        try:
            nodes = observer_pb2_grpc.ObserverStub(conn.channel).GetNodes(
                opb.GetNodesRequest(), timeout=conn.request_timeout).nodes
        except grpc.RpcError as e:
            raise rpc_error(e, conn.target) from None
    addrs = sorted({n.address for n in nodes if n.address})
    if not addrs:
        raise CLIError(f"the relay at {a.relay} lists no agent addresses")
    return addrs


def _call(a: argparse.Namespace, server: str, method: str, request):
    conn_args = argparse.Namespace(**{**vars(a), "server": server})
    with open_connection(conn_args) as conn:
        stub = admin_pb2_grpc.AdminStub(conn.channel)
        try:
            return getattr(stub, method)(request, timeout=conn.request_timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise CLIError(e.details()) from None
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise CLIError(e.details()) from None
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise CLIError(f"{conn.target} does not serve webb's policy API "
                               "(policy commands talk to an agent: --server <agent>:4244)") from None
            raise rpc_error(e, conn.target) from None


def read_documents(paths: list[str]) -> tuple[str, list[str]]:
    """The documents of every file, as one multi-document text, and the files read."""
    texts, names = [], []
    for p in paths:
        if p == "-":
            texts.append(sys.stdin.read())
            names.append("<stdin>")
            continue
        path = Path(p)
        files = (sorted(f for f in path.iterdir() if f.suffix in POLICY_SUFFIXES)
                 if path.is_dir() else [path])
        for f in files:
            try:
                texts.append(f.read_text(encoding="utf-8"))
            except OSError as e:
                raise CLIError(f"cannot read {f}: {e.strerror or e}") from None
            names.append(str(f))
    if not texts:
        raise CLIError("no policy files found")
    return "\n---\n".join(t.strip("\n") for t in texts) + "\n", names


def _resource(p: apb.Policy) -> str:
    return KIND_RESOURCES.get(p.kind, p.kind.lower())


def _split_name(name: str, namespace: str) -> tuple[str, str]:
    if "/" in name:
        ns, name = name.split("/", 1)
        return ns, name
    return namespace, name


def _apply(a: argparse.Namespace, servers: list[str]) -> int:
    text, files = read_documents(a.filename)
    out = []
    for i, server in enumerate(servers):
        before = {}
        if not a.dry_run:
            for p in _call(a, server, "ListPolicies", apb.ListPoliciesRequest()).policies:
                before[(p.kind, p.namespace, p.name)] = p.revision
        try:
            resp = _call(a, server, "ApplyPolicies",
                         apb.ApplyPoliciesRequest(documents=text, dry_run=a.dry_run,
                                                  local=a.local))
        except CLIError as e:
            where = files[0] if len(files) == 1 else ", ".join(files)
            prefix = f"{server}: " if len(servers) > 1 and i else ""
            raise CLIError(f"{prefix}error validating {where}: {e}") from None
        for p in resp.policies:
            key = (p.kind, p.namespace, p.name)
            if a.dry_run:
                what = "valid (dry run)"
            elif key not in before:
                what = "created"
            elif before[key] == p.revision:
                what = "unchanged"
            else:
                what = "configured"
            out.append((server, p, what))
    if a.output == "json":
        sys.stdout.write(json.dumps([{"server": s, "kind": p.kind, "namespace": p.namespace,
                                      "name": p.name, "revision": p.revision, "result": w}
                                     for s, p, w in out], indent=2) + "\n")
        return 0
    for server, p, what in out:
        prefix = f"{server}: " if len(servers) > 1 else ""
        sys.stdout.write(f"{prefix}{_resource(p)}/{safe(p.name)} {what}\n")
    return 0


def _get(a: argparse.Namespace, servers: list[str]) -> int:
    ns, name = _split_name(a.name, a.namespace)
    rows: list[tuple[str, apb.Policy]] = []
    for server in servers:
        resp = _call(a, server, "ListPolicies",
                     apb.ListPoliciesRequest(namespace="" if a.all_namespaces else ns))
        for p in resp.policies:
            if name and p.name != name:
                continue
            if name and not a.all_namespaces and p.namespace != (ns or "default") and p.namespace:
                continue
            rows.append((server, p))
    if name and not rows:
        raise CLIError(f"policy {ns or 'default'}/{name} not found")
    if a.output == "json":
        sys.stdout.write(json.dumps([_as_dict(s, p, len(servers) > 1) for s, p in rows],
                                    indent=2) + "\n")
    elif a.output == "yaml":
        docs = [json.loads(p.document) for _, p in rows]
        sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False) if docs else "")
    else:
        sys.stdout.write(policies_table([p for _, p in rows], a.output == "wide",
                                        [s for s, _ in rows] if len(servers) > 1 else None))
    return 0


def _as_dict(server: str, p: apb.Policy, with_server: bool) -> dict:
    d = {"kind": p.kind, "namespace": p.namespace, "name": p.name, "revision": p.revision,
         "source": p.source, "labels": list(p.labels), "rules": p.rule_count,
         "ingress_endpoints": list(p.ingress_endpoints),
         "egress_endpoints": list(p.egress_endpoints), "document": json.loads(p.document)}
    if with_server:
        d["server"] = server
    return d


def l7_summary(document: str) -> str:
    """The L7 rules of a policy document, e.g. "HTTP 9080/TCP (2 rules)", or "-"."""
    try:
        doc = json.loads(document)
    except ValueError:
        return "-"
    specs = [doc.get("spec")] + list(doc.get("specs") or [])
    out: list[str] = []
    for spec in specs:
        if not isinstance(spec, dict):
            continue
        for key in ("ingress", "egress"):
            for rule in spec.get(key) or []:
                if not isinstance(rule, dict):
                    continue
                if rule.get("toFQDNs"):
                    out.append("toFQDNs")
                for tp in rule.get("toPorts") or []:
                    rules = tp.get("rules") if isinstance(tp, dict) else None
                    if not isinstance(rules, dict):
                        continue
                    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'ANY')}"
                                     for p in tp.get("ports") or [] if isinstance(p, dict))
                    for kind in ("http", "dns"):
                        if rules.get(kind):
                            n = len(rules[kind])
                            out.append(f"{kind.upper()} {ports} ({n} rule{'s' if n > 1 else ''})")
    return "; ".join(dict.fromkeys(out)) or "-"


def policies_table(pols: list[apb.Policy], wide: bool = False,
                   servers: list[str] | None = None) -> str:
    head = "NAMESPACE\tNAME\tKIND\tREVISION\tRULES\tINGRESS\tEGRESS\tSOURCE"
    if wide:
        head += "\tL7\tSELECTS (ingress | egress)"
    if servers:
        head = "AGENT\t" + head
    text = head + "\n"
    for i, p in enumerate(pols):
        row = (f"{safe(p.namespace) or '<cluster>'}\t{safe(p.name)}\t{p.kind}\t{p.revision}\t"
               f"{p.rule_count}\t{len(p.ingress_endpoints)}\t{len(p.egress_endpoints)}\t"
               f"{safe(p.source)}")
        if wide:
            row += (f"\t{safe(l7_summary(p.document))}"
                    f"\t{', '.join(map(safe, p.ingress_endpoints)) or '-'} | "
                    f"{', '.join(map(safe, p.egress_endpoints)) or '-'}")
        if servers:
            row = f"{servers[i]}\t{row}"
        text += row + "\n"
    return tabulate(text, strip=True)


def _delete(a: argparse.Namespace, servers: list[str]) -> int:
    ns, name = _split_name(a.name, a.namespace)
    for server in servers:
        resp = _call(a, server, "DeletePolicy",
                     apb.DeletePolicyRequest(name=name, namespace=ns, kind=a.kind,
                                             local=a.local))
        prefix = f"{server}: " if len(servers) > 1 else ""
        for p in resp.deleted:
            sys.stdout.write(f'{prefix}{_resource(p)} "{safe(p.name)}" deleted\n')
    return 0


def run(a: argparse.Namespace) -> int:
    if not getattr(a, "policy_cmd", None):
        raise CLIError("'webb policy apply -f FILE', 'webb policy get' or "
                       "'webb policy delete NAME'", 2)
    servers = _servers(a)
    cmd = {"apply": _apply, "get": _get, "list": _get, "ls": _get, "delete": _delete}
    return cmd[a.policy_cmd](a, servers)

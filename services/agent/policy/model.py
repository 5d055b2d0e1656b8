"""Network policies as webb enforces them: CiliumNetworkPolicy and
CiliumClusterwideNetworkPolicy (cilium.io/v2) and Kubernetes NetworkPolicy
(networking.k8s.io/v1), validated and brought into one form.

Semantics follow Cilium's: a rule with a peer part (fromEndpoints, fromCIDR,
fromCIDRSet, fromEntities, or their egress twins) and/or a port part (toPorts)
allows (or, in ingressDeny/egressDeny, denies) what both parts describe; a rule
with neither part (`ingress: [{}]`) allows nothing but still puts the endpoint into
default deny. CNP selectors only see the policy's namespace unless they name the
namespace label. Errors name the field, like `spec.ingress[0].toPorts[0].ports[0].port`.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Union

import yaml

from webb.regex import RegexError, compile_re2

from .selector import (NAMESPACE_KEY, NAMESPACE_LABELS_PREFIX, WILDCARD, Requirement, Selector,
                       in_namespace, parse_selector, split_key)

KIND_CNP = "CiliumNetworkPolicy"
KIND_CCNP = "CiliumClusterwideNetworkPolicy"
KIND_KNP = "NetworkPolicy"
API_VERSIONS = {KIND_CNP: "cilium.io/v2", KIND_CCNP: "cilium.io/v2", KIND_KNP: "networking.k8s.io/v1"}
KIND_ALIASES = {"cnp": KIND_CNP, "ciliumnetworkpolicy": KIND_CNP, "ccnp": KIND_CCNP,
                "ciliumclusterwidenetworkpolicy": KIND_CCNP, "netpol": KIND_KNP,
                "networkpolicy": KIND_KNP}

PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}
ANY_PROTOCOLS = (6, 17, 132)  # what Cilium's protocol ANY covers
MAX_PORTS = 40  # per toPorts entry, as in Cilium

ENTITIES = ("all", "world", "cluster", "host", "remote-node", "init", "health", "unmanaged",
            "kube-apiserver", "ingress", "none", "world-ipv4", "world-ipv6")

INGRESS, EGRESS = "ingress", "egress"

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when there is one

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class PolicyError(ValueError):
    """A policy document that cannot be enforced as written."""


@dataclass(frozen=True)
class HeaderMatch:
    """A request header that must be present (value None) or have exactly this value."""

    name: str
    value: str | None = None

    def text(self) -> str:
        return self.name if self.value is None else f"{self.name}: {self.value}"


@dataclass(frozen=True)
class HTTPRule:
    """One entry of `rules.http`: every field given must match (Cilium's PortRuleHTTP).

    method, path and host are RE2 patterns matched against the whole value (as
    Envoy's safe_regex does in Cilium): `GET` does not match `GETX`, and the path is
    the request target as sent, query included."""

    method: str = ""
    path: str = ""
    host: str = ""
    headers: tuple[HeaderMatch, ...] = ()

    def text(self) -> str:
        parts = [f"{k}={v}" for k, v in (("method", self.method), ("path", self.path),
                                          ("host", self.host)) if v]
        parts += [f"header({h.text()})" for h in self.headers]
        return " ".join(parts) or "any request"


@dataclass(frozen=True)
class DNSRule:
    """`rules.dns` / `toFQDNs` entry: an exact name or a pattern with `*`."""

    match_name: str = ""
    match_pattern: str = ""


@dataclass(frozen=True)
class PortRange:
    protocol: int | None  # None: TCP, UDP and SCTP (Cilium's ANY)
    start: int            # 0: every port
    end: int
    # L7 rules of the toPorts entry: None means L3/L4 only; otherwise requests on
    # this port are allowed only if one of the rules matches (HTTP through the proxy).
    http: tuple[HTTPRule, ...] | None = None
    # DNS rules (egress, port 53): queries are allowed only if one matches (the proxy
    # answers the others REFUSED).
    dns: tuple[DNSRule, ...] | None = None

    def text(self) -> str:
        proto = PROTOCOL_NAMES.get(self.protocol, "ANY") if self.protocol else "ANY"
        if self.start == 0:
            return f"*/{proto}"
        port = str(self.start) if self.end == self.start else f"{self.start}-{self.end}"
        return f"{port}/{proto}" + (" (HTTP rules)" if self.http is not None else "") + (
            " (DNS rules)" if self.dns is not None else "")


@dataclass(frozen=True)
class CIDR:
    network: Network
    excepts: tuple[Network, ...] = ()

    def text(self) -> str:
        return str(self.network) + (f" except {', '.join(map(str, self.excepts))}"
                                    if self.excepts else "")


@dataclass(frozen=True)
class Peer:
    """One peer of a rule: endpoints by selector, addresses by CIDR, or an entity."""

    selector: Selector | None = None
    cidr: CIDR | None = None
    entity: str = ""
    fqdn: DNSRule | None = None  # toFQDNs: the addresses DNS answers gave for the names

    def text(self) -> str:
        if self.selector is not None:
            return f"endpoints({self.selector.text()})"
        if self.fqdn is not None:
            return f"fqdn({self.fqdn.match_name or self.fqdn.match_pattern})"
        if self.cidr is not None:
            return f"cidr({self.cidr.text()})"
        return f"entity({self.entity})"


@dataclass(frozen=True)
class Rule:
    direction: str  # INGRESS or EGRESS
    deny: bool
    peers: tuple[Peer, ...] | None  # None: any peer; (): none (a rule that allows nothing)
    ports: tuple[PortRange, ...] | None  # None: any protocol and port


@dataclass(frozen=True)
class Spec:
    """One rule of Cilium's API: whom it selects and what it allows or denies."""

    subject: Selector
    rules: tuple[Rule, ...]
    default_deny_ingress: bool
    default_deny_egress: bool
    description: str = ""


@dataclass
class Policy:
    kind: str
    name: str
    namespace: str  # "" for cluster-wide policies
    specs: tuple[Spec, ...]
    document: dict[str, Any] = field(default_factory=dict, repr=False)
    revision: int = 0
    source: str = "api"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def labels(self) -> list[str]:
        """The labels Cilium gives a policy from Kubernetes (flow.Policy.labels)."""
        out = [f"k8s:io.cilium.k8s.policy.derived-from={self.kind}",
               f"k8s:io.cilium.k8s.policy.name={self.name}"]
        if self.namespace:
            out.append(f"k8s:io.cilium.k8s.policy.namespace={self.namespace}")
        uid = (self.document.get("metadata") or {}).get("uid")
        if uid:
            out.append(f"k8s:io.cilium.k8s.policy.uid={uid}")
        return out

    def rule_count(self) -> int:
        return sum(len(s.rules) for s in self.specs)


# -- documents ---------------------------------------------------------------------------

def parse_documents(text: str) -> list[Policy]:
    """Every policy of a (multi-document) YAML or JSON text; one error rejects all."""
    try:
        docs = [d for d in yaml.load_all(text, Loader=_LOADER) if d is not None]
    except yaml.YAMLError as e:
        raise PolicyError(f"not valid YAML: {e}") from None
    items: list[Any] = []
    for d in docs:
        if isinstance(d, Mapping) and d.get("kind") == "List" and isinstance(d.get("items"), list):
            items.extend(d["items"])
        else:
            items.append(d)
    if not items:
        raise PolicyError("no policy in the input")
    out = []
    seen: set[tuple[str, str, str]] = set()
    for i, doc in enumerate(items):
        where = f"document {i + 1}" if len(items) > 1 else ""
        try:
            pol = parse_policy(doc)
        except PolicyError as e:
            raise PolicyError(f"{where}: {e}" if where else str(e)) from None
        if pol.key in seen:
            raise PolicyError(f"{where}: {pol.kind} {pol.ref!r} appears twice in the input")
        seen.add(pol.key)
        out.append(pol)
    return out


def parse_policy(doc: Any) -> Policy:
    if not isinstance(doc, Mapping):
        raise PolicyError("a policy must be a mapping with apiVersion, kind, metadata and spec")
    kind = doc.get("kind")
    if kind not in API_VERSIONS:
        raise PolicyError(f"kind: {kind!r} is not supported (one of {', '.join(API_VERSIONS)})")
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        raise PolicyError(f"{kind}: metadata: required, with a name")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{kind}: metadata.name: required string")
    if len(name) > 253 or not _NAME.match(name):
        raise PolicyError(f"{kind} {name!r}: metadata.name: must be lower case letters, digits, "
                          "'-' and '.', starting and ending with a letter or digit")
    what = f"{kind} {name!r}"
    if doc.get("apiVersion") != API_VERSIONS[kind]:
        raise PolicyError(f"{what}: apiVersion: must be {API_VERSIONS[kind]} for {kind}, "
                          f"got {doc.get('apiVersion')!r}")
    namespace = ""
    if kind != KIND_CCNP:
        namespace = meta.get("namespace") or "default"
        if not isinstance(namespace, str) or not _NAME.match(namespace):
            raise PolicyError(f"{what}: metadata.namespace: {namespace!r} is not a namespace name")
    elif meta.get("namespace"):
        raise PolicyError(f"{what}: metadata.namespace: a cluster-wide policy has no namespace")
    try:
        if kind == KIND_KNP:
            _only(doc, ("apiVersion", "kind", "metadata", "spec", "status"), "")
            specs = (_k8s_spec(doc.get("spec"), namespace),)
        else:
            _only(doc, ("apiVersion", "kind", "metadata", "spec", "specs", "status"), "")
            specs = _cilium_specs(doc, namespace)
    except PolicyError as e:
        raise PolicyError(f"{what}: {e}") from None
    return Policy(kind, name, namespace, specs, document=_plain(doc))


def _plain(doc: Any) -> Any:
    if isinstance(doc, Mapping):
        return {str(k): _plain(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_plain(v) for v in doc]
    return doc


def _only(raw: Mapping, allowed: Iterable[str], path: str,
          unsupported: Mapping[str, str] | None = None) -> None:
    """Rejects unknown fields (typos must not silently weaken a policy)."""
    for k in raw:
        if unsupported and k in unsupported:
            raise PolicyError(f"{_join(path, k)}: {unsupported[k]}")
        if k not in allowed:
            raise PolicyError(f"{_join(path, k)}: unknown field")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else str(name)


def _list(raw: Mapping, key: str, path: str) -> list:
    v = raw.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise PolicyError(f"{_join(path, key)}: must be a list")
    return v


def _mapping(v: Any, path: str) -> Mapping:
    if not isinstance(v, Mapping):
        raise PolicyError(f"{path}: must be a mapping")
    return v


# -- CiliumNetworkPolicy -----------------------------------------------------------------

_TLS = "TLS interception is not supported by webb (HTTP rules apply to plain HTTP/1.x)"
_UNSUPPORTED_RULE = {
    "nodeSelector": "host policies (nodeSelector) are not supported by webb",
    "log": "policy logging is not supported by webb",
}
_UNSUPPORTED_PEER = {
    "fromRequires": "is deprecated in Cilium and not supported by webb",
    "toRequires": "is deprecated in Cilium and not supported by webb",
    "fromGroups": "cloud provider groups are not supported by webb",
    "toGroups": "cloud provider groups are not supported by webb",
    "fromNodes": "node selectors are not supported by webb (use the remote-node entity)",
    "toNodes": "node selectors are not supported by webb (use the remote-node entity)",
    "toServices": "service-based policy is not supported by webb yet (use toEndpoints)",
    "icmps": "ICMP rules are not supported by webb yet",
    "authentication": "mutual authentication is not supported by webb",
}
_UNSUPPORTED_PORT_RULE = {
    "serverNames": _TLS, "listener": "Envoy listeners are not supported by webb",
    "terminatingTLS": _TLS, "originatingTLS": _TLS,
}
_UNSUPPORTED_L7 = {
    "kafka": "Kafka rules are not supported by webb",
    "l7proto": "generic L7 parsers (l7proto, l7) are not supported by webb",
    "l7": "generic L7 parsers (l7proto, l7) are not supported by webb",
}
# Accepted and checked for errors, but webb does not enforce them yet: rejected at
# apply time rather than ignored (an unenforced rule would silently allow).
MAX_HTTP_RULES = 256  # per toPorts entry


def _cilium_specs(doc: Mapping, namespace: str) -> tuple[Spec, ...]:
    raws: list[tuple[Any, str]] = []
    if doc.get("spec") is not None:
        raws.append((doc["spec"], "spec"))
    for i, r in enumerate(_list(doc, "specs", "")):
        raws.append((r, f"specs[{i}]"))
    if not raws:
        raise PolicyError("spec: required (or specs)")
    return tuple(_cilium_rule(r, p, namespace) for r, p in raws)


def _cilium_rule(raw: Any, path: str, namespace: str) -> Spec:
    raw = _mapping(raw, path)
    _only(raw, ("endpointSelector", "ingress", "ingressDeny", "egress", "egressDeny", "labels",
                "description", "enableDefaultDeny"), path, _UNSUPPORTED_RULE)
    if "endpointSelector" not in raw:
        raise PolicyError(f"{path}.endpointSelector: required (use {{}} to select every endpoint)")
    subject = parse_selector(raw.get("endpointSelector") or {}, f"{path}.endpointSelector",
                             PolicyError)
    if namespace:  # a CNP only ever selects endpoints of its own namespace
        subject = subject.and_(in_namespace(namespace))
    rules: list[Rule] = []
    for key, direction, deny in (("ingress", INGRESS, False), ("ingressDeny", INGRESS, True),
                                 ("egress", EGRESS, False), ("egressDeny", EGRESS, True)):
        for i, r in enumerate(_list(raw, key, path)):
            rules.append(_cilium_peer_rule(r, f"{path}.{key}[{i}]", direction, deny, namespace))
    dd = raw.get("enableDefaultDeny") or {}
    dd = _mapping(dd, f"{path}.enableDefaultDeny")
    _only(dd, ("ingress", "egress"), f"{path}.enableDefaultDeny")
    has_in = bool(_list(raw, "ingress", path) or _list(raw, "ingressDeny", path))
    has_eg = bool(_list(raw, "egress", path) or _list(raw, "egressDeny", path))
    return Spec(subject, tuple(rules),
                _bool(dd.get("ingress"), has_in, f"{path}.enableDefaultDeny.ingress"),
                _bool(dd.get("egress"), has_eg, f"{path}.enableDefaultDeny.egress"),
                str(raw.get("description") or ""))


def _bool(v: Any, default: bool, path: str) -> bool:
    if v is None:
        return default
    if not isinstance(v, bool):
        raise PolicyError(f"{path}: must be true or false")
    return v


def _cilium_peer_rule(raw: Any, path: str, direction: str, deny: bool, namespace: str) -> Rule:
    raw = _mapping(raw, path)
    pre = "from" if direction == INGRESS else "to"
    l3 = [f"{pre}Endpoints", f"{pre}CIDR", f"{pre}CIDRSet", f"{pre}Entities"]
    if direction == EGRESS:
        l3.append("toFQDNs")
    _only(raw, (*l3, "toPorts"), path, _UNSUPPORTED_PEER)
    given = [k for k in l3 if _list(raw, k, path)]
    if len(given) > 1:
        raise PolicyError(f"{path}: combining {given[0]} and {given[1]} in one rule is not "
                          "supported (as in Cilium): write two rules")
    peers: tuple[Peer, ...] | None
    if given:
        k = given[0]
        items = _list(raw, k, path)
        if k.endswith("Endpoints"):
            peers = tuple(Peer(selector=_peer_selector(s, f"{path}.{k}[{i}]", namespace))
                          for i, s in enumerate(items))
        elif k == "toFQDNs":
            peers = tuple(Peer(fqdn=_dns_rule(f, f"{path}.{k}[{i}]"))
                          for i, f in enumerate(items))
        elif k.endswith("CIDRSet"):
            peers = tuple(Peer(cidr=_cidr_rule(c, f"{path}.{k}[{i}]"))
                          for i, c in enumerate(items))
        elif k.endswith("CIDR"):
            peers = tuple(Peer(cidr=CIDR(_network(c, f"{path}.{k}[{i}]")))
                          for i, c in enumerate(items))
        else:
            for i, e in enumerate(items):
                if e not in ENTITIES:
                    raise PolicyError(f"{path}.{k}[{i}]: unknown entity {e!r} "
                                      f"(one of {', '.join(ENTITIES)})")
            peers = tuple(Peer(entity=e) for e in items)
    else:
        peers = None
    port_rules = _list(raw, "toPorts", path)
    ports: tuple[PortRange, ...] | None = None
    if port_rules:
        out: list[PortRange] = []
        for i, pr in enumerate(port_rules):
            pp = f"{path}.toPorts[{i}]"
            pr = _mapping(pr, pp)
            _only(pr, ("ports", "rules"), pp, _UNSUPPORTED_PORT_RULE)
            plist = _list(pr, "ports", pp)
            if not plist:
                raise PolicyError(f"{pp}.ports: required (a list of port and protocol)")
            if len(plist) > MAX_PORTS:
                raise PolicyError(f"{pp}.ports: too many ports, the maximum is {MAX_PORTS}")
            parsed = [_cilium_port(port, f"{pp}.ports[{j}]") for j, port in enumerate(plist)]
            if isinstance(pr.get("rules"), Mapping) and "dns" in pr["rules"]:
                dns = _dns_rules(pr, pp, parsed, direction, deny)
                out.extend(replace(x, dns=dns) for x in parsed)
            else:
                http = _l7_rules(pr, pp, parsed, direction, deny)
                out.extend(replace(x, http=http) for x in parsed)
        ports = tuple(out)
    if peers is None and ports is None:
        peers = ()  # `{}`: allows nothing, only enables default deny
    return Rule(direction, deny, peers, ports)


def _l7_rules(raw: Mapping, path: str, ports: list[PortRange], direction: str,
              deny: bool) -> tuple[HTTPRule, ...] | None:
    """The `rules` of a toPorts entry: HTTP rules, or None when there are none."""
    if raw.get("rules") is None:
        return None
    rp = f"{path}.rules"
    rules = _mapping(raw["rules"], rp)
    _only(rules, ("http", "dns"), rp, _UNSUPPORTED_L7)
    if "http" in rules and "dns" in rules:
        raise PolicyError(f"{rp}: http and dns rules cannot share a toPorts entry")
    if deny:
        raise PolicyError(f"{rp}: L7 rules are not allowed in deny rules (as in Cilium)")
    items = _list(rules, "http", rp)
    if not items:
        raise PolicyError(f"{rp}.http: must list at least one rule ({{}} allows every request)")
    if len(items) > MAX_HTTP_RULES:
        raise PolicyError(f"{rp}.http: too many rules, the maximum is {MAX_HTTP_RULES}")
    http = tuple(_http_rule(h, f"{rp}.http[{i}]") for i, h in enumerate(items))
    for j, pr in enumerate(ports):
        where = f"{path}.ports[{j}]"
        if pr.protocol not in (None, PROTOCOLS["TCP"]):
            raise PolicyError(f"{where}.protocol: HTTP rules need TCP (or ANY)")
        if pr.start == 0:
            raise PolicyError(f"{where}.port: HTTP rules need a port (not 0, every port)")
        if pr.end != pr.start:
            raise PolicyError(f"{where}.endPort: HTTP rules apply to single ports, not ranges")
    return http


def _dns_rules(raw: Mapping, path: str, ports: list[PortRange], direction: str,
               deny: bool) -> tuple[DNSRule, ...]:
    """`rules.dns` of a toPorts entry (egress, port 53, UDP/TCP/ANY)."""
    rp = f"{path}.rules"
    rules = _mapping(raw["rules"], rp)
    _only(rules, ("http", "dns"), rp, _UNSUPPORTED_L7)
    if "http" in rules:
        raise PolicyError(f"{rp}: http and dns rules cannot share a toPorts entry")
    if deny:
        raise PolicyError(f"{rp}: L7 rules are not allowed in deny rules (as in Cilium)")
    items = _list(rules, "dns", rp)
    if not items:
        raise PolicyError(f"{rp}.dns: must list at least one matchName or matchPattern")
    if len(items) > MAX_HTTP_RULES:
        raise PolicyError(f"{rp}.dns: too many rules, the maximum is {MAX_HTTP_RULES}")
    out = tuple(_dns_rule(d, f"{rp}.dns[{i}]") for i, d in enumerate(items))
    for j, pr in enumerate(ports):
        if pr.start != 53 or pr.end != 53:
            raise PolicyError(f"{path}.ports[{j}]: DNS rules apply to port 53 only")
        if pr.protocol not in (None, PROTOCOLS["TCP"], PROTOCOLS["UDP"]):
            raise PolicyError(f"{path}.ports[{j}].protocol: DNS rules need UDP, TCP or ANY")
    if direction != EGRESS:
        raise PolicyError(f"{rp}.dns: DNS rules apply to egress only (as in Cilium)")
    return out


def _regex(raw: Mapping, key: str, path: str) -> str:
    v = raw.get(key)
    if v is None or v == "":
        return ""
    if not isinstance(v, str):
        raise PolicyError(f"{path}.{key}: must be a string (a regular expression)")
    try:
        compile_re2(v, f"{path}.{key}")
    except RegexError as e:
        raise PolicyError(str(e)) from None
    return v


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _header_name(v: Any, path: str) -> str:
    if not isinstance(v, str) or not _HEADER_NAME.match(v):
        raise PolicyError(f"{path}: {v!r} is not an HTTP header name")
    return v


def _http_rule(raw: Any, path: str) -> HTTPRule:
    raw = _mapping(raw if raw is not None else {}, path)
    _only(raw, ("method", "path", "host", "headers", "headerMatches"), path)
    headers: list[HeaderMatch] = []
    for i, h in enumerate(_list(raw, "headers", path)):
        hp = f"{path}.headers[{i}]"
        if not isinstance(h, str) or not h.strip():
            raise PolicyError(f"{hp}: must be a header name, or 'Name: value'")
        # Cilium splits at the first space: "X-Key: true" is a value match
        # (the ':' trimmed), a lone name a presence match.
        parts = h.strip().split(" ", 1)
        if len(parts) == 2:
            headers.append(HeaderMatch(_header_name(parts[0].rstrip(":"), hp), parts[1]))
        else:
            headers.append(HeaderMatch(_header_name(parts[0].rstrip(":"), hp)))
    for i, m in enumerate(_list(raw, "headerMatches", path)):
        mp = f"{path}.headerMatches[{i}]"
        m = _mapping(m, mp)
        _only(m, ("name", "value"), mp, {
            "secret": "header values from Kubernetes secrets are not supported by webb",
            "mismatch": "mismatch actions (LOG, ADD, DELETE, REPLACE) are not supported by "
                        "webb: a mismatch denies the request"})
        name = _header_name(m.get("name"), f"{mp}.name")
        value = m.get("value")
        if value is not None and not isinstance(value, str):
            raise PolicyError(f"{mp}.value: must be a string")
        headers.append(HeaderMatch(name, value if value else None))
    return HTTPRule(_regex(raw, "method", path), _regex(raw, "path", path),
                    _regex(raw, "host", path), tuple(headers))


_DNS_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_DNS_PATTERN = re.compile(r"^[A-Za-z0-9_.*-]+$")


def _dns_rule(raw: Any, path: str) -> DNSRule:
    raw = _mapping(raw, path)
    _only(raw, ("matchName", "matchPattern"), path)
    name, pattern = raw.get("matchName") or "", raw.get("matchPattern") or ""
    if not name and not pattern:
        raise PolicyError(f"{path}: needs matchName or matchPattern")
    if name and (not isinstance(name, str) or not _DNS_NAME.match(name) or len(name) > 255):
        raise PolicyError(f"{path}.matchName: {name!r} is not a DNS name")
    if pattern and (not isinstance(pattern, str) or not _DNS_PATTERN.match(pattern)
                    or len(pattern) > 255):
        raise PolicyError(f"{path}.matchPattern: {pattern!r} is not a DNS name pattern "
                          "(letters, digits, '-', '.', '_' and '*')")
    return DNSRule(name, pattern)


def _peer_selector(raw: Any, path: str, namespace: str) -> Selector:
    sel = parse_selector(raw if raw is not None else {}, path, PolicyError)
    if namespace and not sel.has_key(NAMESPACE_KEY) and not sel.has_source("reserved"):
        sel = sel.and_(in_namespace(namespace))
    return sel


def _network(raw: Any, path: str) -> Network:
    if not isinstance(raw, str) or not raw:
        raise PolicyError(f"{path}: must be an address or a CIDR such as 10.0.0.0/8")
    try:
        return ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise PolicyError(f"{path}: {raw!r} is not an address or CIDR") from None


def _cidr_rule(raw: Any, path: str) -> CIDR:
    raw = _mapping(raw, path)
    _only(raw, ("cidr", "except"), path,
          {"cidrGroupRef": "CIDR groups are not supported by webb",
           "cidrGroupSelector": "CIDR groups are not supported by webb"})
    if "cidr" not in raw:
        raise PolicyError(f"{path}.cidr: required")
    if not isinstance(raw["cidr"], str) or "/" not in raw["cidr"]:
        raise PolicyError(f"{path}.cidr: must be a CIDR such as 10.0.0.0/8, got {raw['cidr']!r}")
    net = _network(raw["cidr"], f"{path}.cidr")
    excepts = []
    for i, e in enumerate(_list(raw, "except", path)):
        ex = _network(e, f"{path}.except[{i}]")
        if ex.version != net.version or not ex.subnet_of(net):  # type: ignore[arg-type]
            raise PolicyError(f"{path}.except[{i}]: {e} is not inside {raw['cidr']}")
        excepts.append(ex)
    return CIDR(net, tuple(excepts))


def _port_number(raw: Any, path: str) -> int:
    if isinstance(raw, bool):
        raise PolicyError(f"{path}: must be a port number")
    if isinstance(raw, int):
        n = raw
    elif isinstance(raw, str) and raw.strip().isdigit():
        n = int(raw.strip())
    elif isinstance(raw, str) and raw:
        raise PolicyError(f"{path}: named port {raw!r} is not supported by webb; use the number")
    else:
        raise PolicyError(f"{path}: must be a port number")
    if not 0 <= n <= 65535:
        raise PolicyError(f"{path}: {n} is not a port number (0-65535)")
    return n


def _protocol(raw: Any, path: str, default: str, allow_any: bool) -> int | None:
    if raw is None:
        raw = default
    if not isinstance(raw, str):
        raise PolicyError(f"{path}: must be a protocol name")
    name = raw.upper()
    if name == "ANY" and allow_any:
        return None
    if name not in PROTOCOLS:
        choices = ", ".join([*PROTOCOLS, *(["ANY"] if allow_any else [])])
        raise PolicyError(f"{path}: protocol {raw!r} is not supported (one of {choices})")
    return PROTOCOLS[name]


def _end_port(raw: Mapping, start: int, path: str) -> int:
    end = raw.get("endPort")
    if end is None:
        return start
    if isinstance(end, bool) or not isinstance(end, int):
        raise PolicyError(f"{path}.endPort: must be a port number")
    if start == 0:
        raise PolicyError(f"{path}.endPort: needs a port to start the range")
    if not start <= end <= 65535:
        raise PolicyError(f"{path}.endPort: {end} must be between port ({start}) and 65535")
    return end


def _cilium_port(raw: Any, path: str) -> PortRange:
    raw = _mapping(raw, path)
    _only(raw, ("port", "endPort", "protocol"), path)
    if "port" not in raw or raw["port"] in (None, ""):
        raise PolicyError(f"{path}.port: required (0 for every port)")
    start = _port_number(raw["port"], f"{path}.port")
    end = _end_port(raw, start, path)
    proto = _protocol(raw.get("protocol"), f"{path}.protocol", "ANY", True)
    return PortRange(proto, start, end if start else 65535)


# -- Kubernetes NetworkPolicy --------------------------------------------------------------

def _k8s_spec(raw: Any, namespace: str) -> Spec:
    raw = _mapping(raw, "spec")
    _only(raw, ("podSelector", "policyTypes", "ingress", "egress"), "spec")
    if "podSelector" not in raw:
        raise PolicyError("spec.podSelector: required (use {} to select every pod of the namespace)")
    subject = parse_selector(raw.get("podSelector") or {}, "spec.podSelector", PolicyError)
    subject = subject.and_(in_namespace(namespace))
    types = raw.get("policyTypes")
    if types is None:
        types = ["Ingress"] + (["Egress"] if raw.get("egress") else [])
    if not isinstance(types, list):
        raise PolicyError("spec.policyTypes: must be a list of Ingress and Egress")
    for i, t in enumerate(types):
        if t not in ("Ingress", "Egress"):
            raise PolicyError(f"spec.policyTypes[{i}]: {t!r} is not Ingress or Egress")
    rules: list[Rule] = []
    for key, direction, peer_key in (("ingress", INGRESS, "from"), ("egress", EGRESS, "to")):
        items = _list(raw, key, "spec")
        if direction.capitalize() not in types:
            continue  # rules of a direction the policy does not govern have no effect
        for i, r in enumerate(items):
            p = f"spec.{key}[{i}]"
            r = _mapping(r if r is not None else {}, p)
            _only(r, (peer_key, "ports"), p)
            peers_raw = _list(r, peer_key, p)
            peers = tuple(_k8s_peer(x, f"{p}.{peer_key}[{j}]", namespace)
                          for j, x in enumerate(peers_raw)) or None
            ports_raw = _list(r, "ports", p)
            ports = tuple(_k8s_port(x, f"{p}.ports[{j}]") for j, x in enumerate(ports_raw)) or None
            rules.append(Rule(direction, False, peers, ports))
    return Spec(subject, tuple(rules), "Ingress" in types, "Egress" in types)


def _namespace_requirements(sel: Selector) -> tuple[Requirement, ...]:
    """A namespaceSelector as requirements on pods' namespace labels."""
    return tuple(Requirement("k8s", NAMESPACE_LABELS_PREFIX + r.key, r.operator, r.values)
                 for r in sel.requirements) + (Requirement("k8s", NAMESPACE_KEY, "Exists"),)


def _k8s_peer(raw: Any, path: str, namespace: str) -> Peer:
    raw = _mapping(raw, path)
    _only(raw, ("podSelector", "namespaceSelector", "ipBlock"), path)
    if "ipBlock" in raw:
        if "podSelector" in raw or "namespaceSelector" in raw:
            raise PolicyError(f"{path}: ipBlock cannot be combined with podSelector or "
                              "namespaceSelector in one peer")
        return Peer(cidr=_cidr_rule(raw["ipBlock"], f"{path}.ipBlock"))
    if "podSelector" not in raw and "namespaceSelector" not in raw:
        raise PolicyError(f"{path}: needs podSelector, namespaceSelector or ipBlock")
    pods = parse_selector(raw.get("podSelector") or {}, f"{path}.podSelector", PolicyError)
    if "namespaceSelector" in raw:
        ns = parse_selector(raw.get("namespaceSelector") or {}, f"{path}.namespaceSelector",
                            PolicyError)
        for r in ns.requirements:
            if r.source not in ("any", "k8s"):
                raise PolicyError(f"{path}.namespaceSelector: label sources are not allowed")
        return Peer(selector=pods.and_(*_namespace_requirements(ns)))
    return Peer(selector=pods.and_(in_namespace(namespace)))


def _k8s_port(raw: Any, path: str) -> PortRange:
    raw = _mapping(raw, path)
    _only(raw, ("protocol", "port", "endPort"), path)
    proto = _protocol(raw.get("protocol"), f"{path}.protocol", "TCP", False)
    if raw.get("port") in (None, ""):
        if raw.get("endPort") is not None:
            raise PolicyError(f"{path}.endPort: needs a port to start the range")
        return PortRange(proto, 0, 65535)
    start = _port_number(raw["port"], f"{path}.port")
    if start == 0:
        raise PolicyError(f"{path}.port: 0 is not a port number (leave port out for every port)")
    return PortRange(proto, start, _end_port(raw, start, path))


def normalize_kind(kind: str) -> str:
    """A kind as users type it (cnp, NetworkPolicy, ...) -> its canonical name."""
    if kind in API_VERSIONS:
        return kind
    k = KIND_ALIASES.get(kind.lower())
    if k is None:
        raise PolicyError(f"unknown policy kind {kind!r} (one of {', '.join(API_VERSIONS)})")
    return k


__all__ = ["CIDR", "DNSRule", "EGRESS", "HTTPRule", "HeaderMatch", "INGRESS", "KIND_CCNP", "KIND_CNP", "KIND_KNP", "Peer", "Policy",
           "PolicyError", "PortRange", "Rule", "Spec", "WILDCARD", "parse_documents",
           "parse_policy", "normalize_kind", "split_key"]

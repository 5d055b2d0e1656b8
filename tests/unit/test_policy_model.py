"""Policy documents: CiliumNetworkPolicy and NetworkPolicy parsing, Cilium's semantics,
and errors that name the field."""
from __future__ import annotations

import ipaddress

import pytest

from webb_agent.policy.model import (KIND_CCNP, DNSRule, KIND_CNP, KIND_KNP, PolicyError, PortRange,
                                     normalize_kind, parse_documents)
from webb_agent.policy.selector import LabelSet, parse_selector

CNP = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: reviews, namespace: bookinfo}
spec:
  endpointSelector: {matchLabels: {app: reviews}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: productpage}}]
    toPorts:
    - ports: [{port: "9080", protocol: TCP}]
"""


def one(text: str):
    (p,) = parse_documents(text)
    return p


def labels(*xs: str) -> LabelSet:
    return LabelSet(xs)


def test_tutorial_policy():
    p = one(CNP)
    assert (p.kind, p.namespace, p.name) == (KIND_CNP, "bookinfo", "reviews")
    (spec,) = p.specs
    assert spec.default_deny_ingress and not spec.default_deny_egress
    (rule,) = spec.rules
    assert rule.direction == "ingress" and not rule.deny
    assert rule.ports == (PortRange(6, 9080, 9080),)
    sel = rule.peers[0].selector
    # The peer selector only sees the policy's namespace.
    assert sel.matches(labels("k8s:app=productpage", "k8s:io.kubernetes.pod.namespace=bookinfo"))
    assert not sel.matches(labels("k8s:app=productpage", "k8s:io.kubernetes.pod.namespace=other"))
    assert spec.subject.matches(labels("k8s:app=reviews", "k8s:io.kubernetes.pod.namespace=bookinfo"))
    assert not spec.subject.matches(labels("k8s:app=reviews", "k8s:io.kubernetes.pod.namespace=x"))
    assert "k8s:io.cilium.k8s.policy.name=reviews" in p.labels()


def test_selector_sources_and_expressions():
    s = parse_selector({"matchLabels": {"k8s:app": "a", "tier": "web"},
                        "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]},
                                             {"key": "any:team", "operator": "Exists"}]},
                       "sel", PolicyError)
    assert s.matches(labels("k8s:app=a", "container:tier=web", "k8s:team=x"))
    assert not s.matches(labels("container:app=a", "k8s:tier=web", "k8s:team=x"))  # wrong source
    assert not s.matches(labels("k8s:app=a", "k8s:tier=web", "k8s:team=x", "k8s:env=prod"))
    assert not s.matches(labels("k8s:app=a", "k8s:tier=web"))
    r = parse_selector({"matchLabels": {"reserved:host": ""}}, "s", PolicyError)
    assert r.matches(labels("reserved:host")) and not r.matches(labels("reserved:world"))


def test_namespace_label_lifts_the_namespace_restriction():
    p = one(CNP.replace("{app: productpage}",
                        "{app: productpage, k8s:io.kubernetes.pod.namespace: shop}"))
    sel = p.specs[0].rules[0].peers[0].selector
    assert sel.matches(labels("k8s:app=productpage", "k8s:io.kubernetes.pod.namespace=shop"))
    assert not sel.matches(labels("k8s:app=productpage", "k8s:io.kubernetes.pod.namespace=bookinfo"))


def test_empty_rule_only_enables_default_deny_and_to_ports_alone_is_any_peer():
    p = one("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: x}
spec:
  endpointSelector: {}
  ingress: [{}]
  egress:
  - toPorts: [{ports: [{port: "53", protocol: ANY}]}]
  egressDeny:
  - toEntities: [world]
""")
    spec = p.specs[0]
    assert p.namespace == "default"
    ing, eg, deny = spec.rules
    assert ing.peers == () and ing.ports is None
    assert eg.peers is None and eg.ports == (PortRange(None, 53, 53),)
    assert deny.deny and deny.peers[0].entity == "world"
    assert spec.default_deny_ingress and spec.default_deny_egress


def test_enable_default_deny_and_deny_only_policies():
    base = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: x}
spec:
  endpointSelector: {}
  ingressDeny: [{fromEntities: [world]}]
"""
    assert one(base).specs[0].default_deny_ingress  # Cilium: any ingress section
    off = one(base.replace("  ingressDeny", "  enableDefaultDeny: {ingress: false}\n  ingressDeny"))
    assert not off.specs[0].default_deny_ingress


def test_cidr_set_and_port_range():
    p = one("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: x, namespace: a}
spec:
  endpointSelector: {}
  egress:
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]
    toPorts: [{ports: [{port: "8000", endPort: 8080, protocol: udp}]}]
  - toCIDR: [192.0.2.1, "2001:db8::/32"]
""")
    r1, r2 = p.specs[0].rules
    c = r1.peers[0].cidr
    assert c.network == ipaddress.ip_network("10.0.0.0/8")
    assert c.excepts == (ipaddress.ip_network("10.96.0.0/12"),)
    assert r1.ports == (PortRange(17, 8000, 8080),)
    assert [str(x.cidr.network) for x in r2.peers] == ["192.0.2.1/32", "2001:db8::/32"]


def test_cluster_wide_policy_has_no_namespace():
    p = one("""
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: all-dns}
specs:
- endpointSelector: {}
  egress:
  - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
""")
    assert p.kind == KIND_CCNP and p.namespace == ""
    sel = p.specs[0].rules[0].peers[0].selector
    assert sel.matches(labels("k8s:k8s-app=kube-dns", "k8s:io.kubernetes.pod.namespace=kube-system"))


def test_kubernetes_network_policy():
    p = one("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: api}}
      namespaceSelector: {matchLabels: {team: blue}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports:
    - {protocol: TCP, port: 5432}
    - {port: 6000, endPort: 6010}
  - {}
""")
    assert p.kind == KIND_KNP
    spec = p.specs[0]
    assert spec.default_deny_ingress and spec.default_deny_egress  # egress: no rules at all
    r1, r2 = spec.rules
    sel = r1.peers[0].selector
    pod_in = labels("k8s:app=api", "k8s:io.kubernetes.pod.namespace=x",
                    "k8s:io.cilium.k8s.namespace.labels.team=blue")
    assert sel.matches(pod_in)
    assert not sel.matches(labels("k8s:app=api", "k8s:io.kubernetes.pod.namespace=x",
                                  "k8s:io.cilium.k8s.namespace.labels.team=red"))
    assert r1.peers[1].cidr.excepts == (ipaddress.ip_network("10.1.0.0/16"),)
    assert r1.ports == (PortRange(6, 5432, 5432), PortRange(6, 6000, 6010))
    assert r2.peers is None and r2.ports is None  # `{}` allows everything


def test_network_policy_types_default():
    p = one("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {}
""")
    s = p.specs[0]
    assert s.default_deny_ingress and not s.default_deny_egress and s.rules == ()


@pytest.mark.parametrize("change,message", [
    (("port: \"9080\"", "port: \"http\""),
     'spec.ingress[0].toPorts[0].ports[0].port: named port \'http\' is not supported'),
    (("port: \"9080\"", "port: \"70000\""), "ports[0].port: 70000 is not a port number"),
    (("protocol: TCP", "protocol: ICMP"), "ports[0].protocol: protocol 'ICMP' is not supported"),
    (("fromEndpoints", "fromEndpoint"), "spec.ingress[0].fromEndpoint: unknown field"),
    (("  ingress:", "  ingres:"), "spec.ingres: unknown field"),
    (("    toPorts:", "    fromCIDR: [10.0.0.0/8]\n    toPorts:"),
     "combining fromEndpoints and fromCIDR"),
    (("toPorts:", "icmps: []\n    toPorts:"), "spec.ingress[0].icmps: ICMP rules are not supported"),
    (("    - ports:", "    - rules: {http: [{method: 'GET('}]}\n      ports:"),
     "spec.ingress[0].toPorts[0].rules.http[0].method: invalid regular expression 'GET('"),
    (("    - ports:", "    - rules: {kafka: [{topic: x}]}\n      ports:"),
     "spec.ingress[0].toPorts[0].rules.kafka: Kafka rules are not supported"),
    (("apiVersion: cilium.io/v2", "apiVersion: cilium.io/v1"), "apiVersion: must be cilium.io/v2"),
    (("name: reviews,", "name: Reviews_1,"), "metadata.name: must be lower case"),
    (("endpointSelector: {matchLabels: {app: reviews}}", "nodeSelector: {}"),
     "spec.nodeSelector: host policies"),
    (("endpointSelector: {matchLabels: {app: reviews}}", "description: x"),
     "spec.endpointSelector: required"),
    (("{app: productpage}", "{app: [x]}"), "matchLabels.app: value must be a string"),
])
def test_errors_name_the_field(change, message):
    old, new = change
    assert old in CNP
    with pytest.raises(PolicyError) as e:
        parse_documents(CNP.replace(old, new))
    assert message in str(e.value)
    assert "CiliumNetworkPolicy" in str(e.value)


@pytest.mark.parametrize("text,message", [
    ("kind: Pod\nmetadata: {name: x}", "kind: 'Pod' is not supported"),
    ("- a\n- b", "a policy must be a mapping"),
    ("a: [b", "not valid YAML"),
    ("", "no policy in the input"),
    ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\n",
     "spec: required (or specs)"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\n"
     "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, "
     "except: [11.0.0.0/16]}}]}]}", "spec.ingress[0].from[0].ipBlock.except[0]: 11.0.0.0/16 "
                                    "is not inside 10.0.0.0/8"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\n"
     "spec: {podSelector: {}, ingress: [{from: [{}]}]}", "from[0]: needs podSelector"),
    ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\n"
     "spec: {endpointSelector: {}, egress: [{toEntities: [everything]}]}",
     "spec.egress[0].toEntities[0]: unknown entity 'everything'"),
    ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\n"
     "spec: {endpointSelector: {}, egress: [{toPorts: [{ports: [{port: '90', endPort: 80}]}]}]}",
     "endPort: 80 must be between port (90) and 65535"),
    ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\n"
     "spec: {endpointSelector: {matchExpressions: [{key: a, operator: Is}]}}",
     "spec.endpointSelector.matchExpressions[0].operator: 'Is' is not one of"),
])
def test_more_errors(text, message):
    with pytest.raises(PolicyError) as e:
        parse_documents(text)
    assert message in str(e.value)


def test_multi_document_batch_names_the_bad_document():
    bad = CNP.replace("9080", "x80").replace("name: reviews", "name: other")
    with pytest.raises(PolicyError) as e:
        parse_documents(CNP + "---\n" + bad)
    assert str(e.value).startswith("document 2: CiliumNetworkPolicy 'other'")
    with pytest.raises(PolicyError) as e:
        parse_documents(CNP + "---\n" + CNP)
    assert "appears twice" in str(e.value)
    items = "apiVersion: v1\nkind: List\nitems:\n" + "".join(
        "- " + "\n  ".join(CNP.replace("reviews,", f"r{i},").strip().splitlines()) + "\n"
        for i in range(2))
    assert [p.name for p in parse_documents(items)] == ["r0", "r1"]


def test_kind_aliases():
    assert normalize_kind("cnp") == KIND_CNP and normalize_kind("netpol") == KIND_KNP
    with pytest.raises(PolicyError):
        normalize_kind("pod")


L7_CNP = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: reviews-l7, namespace: bookinfo}
spec:
  endpointSelector: {matchLabels: {app: reviews}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: productpage}}]
    toPorts:
    - ports: [{port: "9080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/reviews/.*", host: "reviews(:9080)?"}
        - method: POST
          headers: ["X-Token: abc def", "X-Trace"]
          headerMatches: [{name: X-Env, value: prod}, {name: X-Any}]
        - {}
"""


def test_http_rules_are_parsed_with_their_port():
    (p,) = parse_documents(L7_CNP)
    (rule,) = p.specs[0].rules
    (port,) = rule.ports
    assert (port.protocol, port.start, port.end) == (6, 9080, 9080)
    r1, r2, r3 = port.http
    assert (r1.method, r1.path, r1.host, r1.headers) == ("GET", "/reviews/.*", "reviews(:9080)?", ())
    assert [(h.name, h.value) for h in r2.headers] == [
        ("X-Token", "abc def"), ("X-Trace", None), ("X-Env", "prod"), ("X-Any", None)]
    assert r3.text() == "any request"
    assert "9080/TCP (HTTP rules)" == port.text()


@pytest.mark.parametrize("change,message", [
    (("protocol: TCP", "protocol: UDP"), "ports[0].protocol: HTTP rules need TCP"),
    (('port: "9080", protocol', 'port: "9080", endPort: 9090, protocol'),
     "ports[0].endPort: HTTP rules apply to single ports"),
    (("method: GET,", "method: '(a+',"), "rules.http[0].method: invalid regular expression"),
    (("path: \"/reviews/.*\"", "path: '(?<=x)y'"), "rules.http[0].path: invalid regular"),
    (("headerMatches: [{name: X-Env, value: prod}",
      "headerMatches: [{name: X-Env, value: prod, mismatch: LOG}"),
     "headerMatches[0].mismatch: mismatch actions"),
    (("headerMatches: [{name: X-Env, value: prod}",
      "headerMatches: [{name: X-Env, secret: {name: s}}"), "headerMatches[0].secret: header"),
    (('headers: ["X-Token: abc def", "X-Trace"]', 'headers: ["X@Y: x"]'),
     "headers[0]: 'X@Y' is not an HTTP header name"),
    (("fromEndpoints", "toEndpoints"),
     "spec.ingress[0].toEndpoints: unknown field"),
])
def test_http_rule_errors_name_the_field(change, message):
    old, new = change
    assert old in L7_CNP
    with pytest.raises(PolicyError) as e:
        parse_documents(L7_CNP.replace(old, new))
    assert message in str(e.value)


def test_egress_http_rules_are_accepted():
    egress_http = L7_CNP.replace("  ingress:", "  egress:").replace("fromEndpoints", "toEndpoints")
    (pol,) = parse_documents(egress_http)
    (rule,) = pol.specs[0].rules
    assert rule.direction == "egress" and rule.ports[0].http


def test_dns_rules_and_to_fqdns_are_checked():
    dns = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns}
spec:
  endpointSelector: {}
  egress:
  - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*.cilium.io"}, {matchName: "api.github.com"}]
  - toFQDNs: [{matchName: api.github.com}]
"""
    dns_only = dns.replace("  - toFQDNs: [{matchName: api.github.com}]\n", "")
    (pol,) = parse_documents(dns_only)
    (rule,) = pol.specs[0].rules
    assert [p.dns for p in rule.ports] == [
        (DNSRule("", "*.cilium.io"), DNSRule("api.github.com", ""))]
    with pytest.raises(PolicyError, match=r"rules.dns: DNS rules apply to egress only"):
        parse_documents(dns_only.replace("egress:", "ingress:").replace("toEndpoints",
                                                                          "fromEndpoints"))
    with pytest.raises(PolicyError, match=r"dns\[0\].matchPattern: '\*\.ci lium' is not"):
        parse_documents(dns.replace('"*.cilium.io"', '"*.ci lium"'))
    with pytest.raises(PolicyError, match=r"ports\[0\]: DNS rules apply to port 53 only"):
        parse_documents(dns.replace('port: "53"', 'port: "54"'))
    fqdn_only = dns.replace("""  - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*.cilium.io"}, {matchName: "api.github.com"}]
""", "")
    (pol,) = parse_documents(fqdn_only)
    assert [p.fqdn for p in pol.specs[0].rules[0].peers] == [DNSRule("api.github.com", "")]
    with pytest.raises(PolicyError, match=r"toFQDNs\[0\]: needs matchName or matchPattern"):
        parse_documents(fqdn_only.replace("{matchName: api.github.com}", "{}"))
    with pytest.raises(PolicyError, match=r"ingress\[0\].toFQDNs: unknown field"):
        parse_documents(fqdn_only.replace("egress:", "ingress:"))

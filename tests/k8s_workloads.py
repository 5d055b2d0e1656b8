"""What the kubelet tests run on their one-node cluster (tests/k8s_node.py), as the
manifests a user would apply: webb from its chart (rendered by the real Helm engine,
helm-python-sdk), a cluster DNS pod (tests/k8s/cluster_dns.py), and bookinfo
(productpage, details, reviews v1-v3, ratings: the demo's services, webb_cli.demo.bookinfo)
with a ClusterIP Service each and the demo's load generator.

bookinfo, the DNS pod and the load generator run in the webb-relay image (Debian's
python3 with webb installed, built offline by scripts/build_images.py): it has the
code, so no image of their own is needed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "webb"
WEBB_NS = "webb"
RELEASE = "webb"
BOOKINFO_NS = "bookinfo"
APP_VERSION = next(l.split(":", 1)[1].strip().strip('"')
                   for l in (CHART / "Chart.yaml").read_text().splitlines()
                   if l.startswith("appVersion:"))
PY_IMAGE = f"webb-relay:{APP_VERSION}"
BOOKINFO = [("productpage", "v1"), ("details", "v1"), ("reviews", "v1"), ("reviews", "v2"),
            ("reviews", "v3"), ("ratings", "v1")]


def namespace(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def chart_crds() -> list[dict]:
    import helm_python as helm
    with helm.Chart.load(CHART) as chart:
        return [yaml.safe_load(c["data"]) for c in chart.crds]


def render_chart(values: dict[str, Any]) -> list[dict]:
    """The chart's manifests as `helm install webb charts/webb -n webb` makes them."""
    import helm_python as helm
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values=values, name=RELEASE, namespace=WEBB_NS, is_install=True)
    return [d for path, text in sorted(out.items()) if path.endswith(".yaml")
            for d in yaml.safe_load_all(text) if d]


def cilium_crds() -> list[dict]:
    """CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (the tests' copy)."""
    return [d for d in yaml.safe_load_all((ROOT / "tests/k8s/ciliumnetworkpolicies-crd.yaml").read_text()) if d]


def _py_container(name: str, args: list[str], port: int | None = None) -> dict:
    c: dict[str, Any] = {"name": name, "image": PY_IMAGE, "imagePullPolicy": "IfNotPresent",
                         "command": ["python3", *args],
                         "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
                         "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False}}
    if port:
        c["ports"] = [{"containerPort": port, "name": "http"}]
        c["readinessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 2}
    return c


def cluster_dns() -> list[dict]:
    """kube-dns's part: Service 10.96.0.10 (the kubelet's clusterDNS) in kube-system."""
    labels = {"k8s-app": "kube-dns"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "cluster-dns", "namespace": "kube-system"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "webb-test:cluster-dns"},
         "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "webb-test:cluster-dns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "webb-test:cluster-dns"},
         "subjects": [{"kind": "ServiceAccount", "name": "cluster-dns", "namespace": "kube-system"}]},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "cluster-dns", "namespace": "kube-system"},
         "data": {"cluster_dns.py": (ROOT / "tests/k8s/cluster_dns.py").read_text()}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "cluster-dns", "namespace": "kube-system", "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels},
             "spec": {"serviceAccountName": "cluster-dns", "terminationGracePeriodSeconds": 1,
                      "dnsPolicy": "Default",
                      "containers": [_py_container("dns", ["/dns/cluster_dns.py"], 5353) | {
                          "volumeMounts": [{"name": "code", "mountPath": "/dns"}]}],
                      "volumes": [{"name": "code", "configMap": {"name": "cluster-dns"}}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
         "spec": {"clusterIP": "10.96.0.10", "selector": labels, "ports": [
             {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"},
             {"name": "dns-tcp", "port": 53, "targetPort": 5353, "protocol": "TCP"}]}},
    ]


def bookinfo(loadgen_rate: float = 2.0) -> list[dict]:
    docs: list[dict] = [namespace(BOOKINFO_NS)]
    for app in sorted({a for a, _ in BOOKINFO}):
        docs.append({"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": {"name": f"bookinfo-{app}", "namespace": BOOKINFO_NS}})
        docs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": app, "namespace": BOOKINFO_NS, "labels": {"app": app}},
                     "spec": {"selector": {"app": app},
                              "ports": [{"name": "http", "port": 9080, "targetPort": 9080}]}})
    for app, version in BOOKINFO:
        labels = {"app": app, "version": version}
        docs.append({"apiVersion": "apps/v1", "kind": "Deployment",
                     "metadata": {"name": f"{app}-{version}", "namespace": BOOKINFO_NS,
                                  "labels": labels},
                     "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
                         "metadata": {"labels": labels},
                         "spec": {"serviceAccountName": f"bookinfo-{app}",
                                  "terminationGracePeriodSeconds": 1,
                                  "containers": [_py_container(app, [
                                      "-m", "webb_cli.demo.bookinfo", "--service", app,
                                      "--version", version], 9080)]}}}})
    labels = {"app": "loadgen"}
    docs.append({"apiVersion": "apps/v1", "kind": "Deployment",
                 "metadata": {"name": "loadgen", "namespace": "default", "labels": labels},
                 "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
                     "metadata": {"labels": labels},
                     "spec": {"terminationGracePeriodSeconds": 1, "containers": [_py_container(
                         "loadgen", ["-m", "webb_cli.demo.loadgen", "--rate", str(loadgen_rate),
                                     "--ping-every", "0"])]}}}})
    return docs

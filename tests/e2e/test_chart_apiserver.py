"""The Helm chart against a real Kubernetes 1.20 API server (the chart's kubeVersion floor):
every manifest rendered for the default and several non-default values is sent as a
server-side dry-run create (?dryRun=All: validation, defaulting and admission run, nothing
is stored), and must come back with every field that was sent: 1.20 drops unknown fields
of built-in kinds silently instead of refusing them, so a field it does not know shows
as missing from the answer. Then the agent's RBAC is created for real and the API server's
own authorizer (SubjectAccessReview) is asked what the agent's ServiceAccount may do.

The chart's CRD (crds/) is installed for real first. ServiceMonitor's published CRD is not
available offline, so a stand-in CRD of the same group, version, kind and scope that keeps
unknown fields is installed instead: the API server then checks that the object is a
well-formed namespaced monitoring.coreos.com/v1 ServiceMonitor; its fields are checked
by tests/unit/test_chart.py.

The cluster (etcd, kube-apiserver, kube-controller-manager on loopback) comes from
tests/k8s_cluster.py and is removed with everything in it when the module ends.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from k8s_cluster import KubeAPIError, KubeCluster, kube_cluster

import helm_python as helm  # helm-python-sdk, in the test extra

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "webb"
NS = "webb-chart"
RELEASE = "webb"

# Plural names of the kinds the chart renders; a new kind fails the test until added here.
PLURALS = {"ServiceAccount": "serviceaccounts", "Secret": "secrets", "ConfigMap": "configmaps",
           "Service": "services", "DaemonSet": "daemonsets", "Deployment": "deployments",
           "ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings",
           "ServiceMonitor": "servicemonitors",
           "CustomResourceDefinition": "customresourcedefinitions"}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "tls-off": {"tls": {"enabled": False}},
    "tls-from-secrets": {"tls": {"method": "secret", "secrets": {
        "agent": "a", "relayClient": "b", "relayServer": "c"}},
        "relay": {"tls": {"enabled": True}}, "metrics": {"enabled": False}},
    "relay-tls-generated": {"relay": {"tls": {"enabled": True}}, "metrics": {"enabled": False}},
    "servicemonitor": {"metrics": {"serviceMonitor": {"enabled": True,
                                                      "labels": {"release": "prometheus"}}}},
    "history": {"history": {"enabled": True, "maxBytes": "2GiB", "maxAge": "12h"}},
    "privileged": {"agent": {"privileged": True, "hostPID": True,
                             "hostPaths": {"bpffs": {"enabled": True}}}},
    "agent-only": {"relay": {"enabled": False}, "ui": {"enabled": False},
                   "metrics": {"enabled": False}, "dashboards": {"enabled": False},
                   "agent": {"installCRDs": True, "priorityClassName": "system-node-critical"}},
}

# A stand-in for the Prometheus Operator's ServiceMonitor CRD (see the module docstring).
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList",
                       "plural": "servicemonitors", "singular": "servicemonitor"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                 "openAPIV3Schema": {"type": "object",
                                     "x-kubernetes-preserve-unknown-fields": True}}}]},
}


def collection(doc: dict[str, Any]) -> str:
    kind = doc["kind"]
    assert kind in PLURALS, f"add {kind} to PLURALS"
    api = doc["apiVersion"]
    base = "/api/v1" if api == "v1" else f"/apis/{api}"
    if kind in CLUSTER_SCOPED:
        return f"{base}/{PLURALS[kind]}"
    return f"{base}/namespaces/{doc['metadata']['namespace']}/{PLURALS[kind]}"


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values=values, name=RELEASE, namespace=NS, is_install=True)
    return [d for path, text in sorted(out.items()) if path.endswith(".yaml")
            for d in yaml.safe_load_all(text) if d]


def dropped(sent: Any, got: Any, path: str = "") -> list[str]:
    """Fields that were sent but are not in the API server's answer. Zero values (false,
    0, "", empty) may be left out of an answer (Go's omitempty) and do not count."""
    if isinstance(sent, dict):
        if not isinstance(got, dict):
            return [path or "."]
        out = []
        for k, v in sent.items():
            if k not in got:
                if v not in (False, 0, "", [], {}, None):
                    out.append(f"{path}.{k}")
            else:
                out += dropped(v, got[k], f"{path}.{k}")
        return out
    if isinstance(sent, list):
        if not isinstance(got, list) or len(got) != len(sent):
            return [path]
        return [p for i, (s, g) in enumerate(zip(sent, got)) for p in dropped(s, g, f"{path}[{i}]")]
    return []


def privileged_refused_by_policy(e: KubeAPIError) -> bool:
    """The test API server runs without --allow-privileged (kube-apiserver's default;
    kubeadm and managed clusters turn it on), so it refuses privileged containers. It
    validates the whole object first: when that refusal is the only cause, everything
    else in the object was accepted."""
    causes = ((e.body or {}).get("details") or {}).get("causes") or []
    return e.status == 422 and bool(causes) and all(
        c.get("field", "").endswith(".securityContext.privileged")
        and "disallowed by cluster policy" in c.get("message", "") for c in causes)


def wait_served(kc: KubeCluster, group_version: str, plural: str) -> None:
    def served() -> bool:
        try:
            doc = kc.api("GET", f"/apis/{group_version}")
        except KubeAPIError:
            return False
        return any(r.get("name") == plural for r in doc.get("resources", []))
    kc.wait(served, 60, f"{plural}.{group_version} served")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[KubeCluster]:
    with kube_cluster(tmp_path_factory.mktemp("kube")) as kc:
        kc.api("POST", "/api/v1/namespaces",
               {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        with helm.Chart.load(CHART) as chart:
            crds = [yaml.safe_load(c["data"]) for c in chart.crds]
        for crd in crds + [SERVICE_MONITOR_CRD]:
            kc.api("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
            wait_served(kc, f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}",
                        crd["spec"]["names"]["plural"])
        yield kc


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_api_server_accepts_every_manifest(cluster, config):
    docs = render(CONFIGS[config])
    assert len(docs) > 5
    for doc in docs:
        what = f"{config}: {doc['kind']}/{doc['metadata']['name']}"
        try:
            got = cluster.api("POST", collection(doc), doc, query={"dryRun": "All"})
        except KubeAPIError as e:
            if privileged_refused_by_policy(e):
                continue
            pytest.fail(f"{what} refused by the API server: {e}")
        assert got["kind"] == doc["kind"] and got["metadata"]["name"] == doc["metadata"]["name"]
        missing = dropped(doc, got)
        assert not missing, f"{what}: Kubernetes 1.20 dropped fields it does not know: {missing}"
    # nothing was stored
    names = [s["metadata"]["name"] for s in
             cluster.api("GET", f"/api/v1/namespaces/{NS}/services")["items"]]
    assert names == []


def test_a_field_1_20_does_not_know_would_be_caught(cluster):
    """The check above works on this API server: a misspelt field is dropped, and seen."""
    import copy
    ds = next(d for d in render({}) if d["kind"] == "DaemonSet")
    bad = copy.deepcopy(ds)
    pod = bad["spec"]["template"]["spec"]
    pod["containers"][0]["volumeMount"] = pod["containers"][0].pop("volumeMounts")
    got = cluster.api("POST", collection(bad), bad, query={"dryRun": "All"})
    assert dropped(bad, got) == [".spec.template.spec.containers[0].volumeMount"]


def test_agent_identity_objects_fit_the_chart_crd(cluster):
    """The objects the agent creates are accepted by the CRD the chart installs."""
    from webb_agent.k8s.identity_crd import RESOURCE, to_object
    obj = to_object(4242, ("k8s:app=reviews", "k8s:io.kubernetes.pod.namespace=demo"))
    got = cluster.api("POST", RESOURCE.path(), obj, query={"dryRun": "All"})
    assert got["security-labels"] == obj["security-labels"]


def _allowed(kc: KubeCluster, user: str, verb: str, group: str, resource: str,
             namespace: str = "") -> bool:
    attrs = {"verb": verb, "group": group, "resource": resource}
    if namespace:
        attrs["namespace"] = namespace
    review = kc.api("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": ["system:serviceaccounts",
                                          f"system:serviceaccounts:{NS}", "system:authenticated"],
                 "resourceAttributes": attrs}})
    return bool(review["status"].get("allowed"))


def test_agent_rbac_allows_what_the_agent_does_and_nothing_more(cluster):
    docs = render({})
    rbac = [d for d in docs if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
    created = []
    try:
        for d in rbac:
            cluster.api("POST", collection(d), d)
            created.append(d)
        sa = next(d for d in rbac if d["kind"] == "ServiceAccount"
                  and d["metadata"]["name"] == f"{RELEASE}-agent")
        user = f"system:serviceaccount:{NS}:{sa['metadata']['name']}"

        def ok(verb: str, group: str, resource: str, namespace: str = "") -> bool:
            return cluster.wait(lambda: _allowed(cluster, user, verb, group, resource, namespace)
                                or None, 10, f"{verb} {resource}") is True

        # what the agent's Kubernetes mode reads and writes (services/agent/k8s/)
        for verb in ("get", "list", "watch"):
            for group, resource in [("", "pods"), ("", "namespaces"), ("", "services"),
                                    ("", "nodes"), ("discovery.k8s.io", "endpointslices"),
                                    ("networking.k8s.io", "networkpolicies"),
                                    ("cilium.io", "ciliumnetworkpolicies"),
                                    ("cilium.io", "ciliumclusterwidenetworkpolicies"),
                                    ("webb.io", "webbidentities")]:
                assert ok(verb, group, resource), f"{verb} {group}/{resource}"
        assert ok("get", "apps", "replicasets", "shop")
        assert ok("create", "webb.io", "webbidentities")
        assert ok("delete", "webb.io", "webbidentities")
        # and what it must not do
        for verb, group, resource in [("get", "", "secrets"), ("list", "", "secrets"),
                                      ("create", "", "pods"), ("delete", "", "pods"),
                                      ("update", "webb.io", "webbidentities"),
                                      ("list", "apps", "replicasets"),
                                      ("update", "apps", "deployments"),
                                      ("patch", "", "nodes"),
                                      ("create", "apiextensions.k8s.io",
                                       "customresourcedefinitions"),
                                      ("create", "rbac.authorization.k8s.io", "clusterroles")]:
            assert not _allowed(cluster, user, verb, group, resource, NS), \
                f"the agent may {verb} {group}/{resource}"
        # the relay, ui and metrics ServiceAccounts have no rights at all
        for component in ("relay", "ui", "metrics"):
            other = f"system:serviceaccount:{NS}:{RELEASE}-{component}"
            assert not _allowed(cluster, other, "list", "", "pods", NS)
            assert not _allowed(cluster, other, "get", "", "secrets", NS)
    finally:
        for d in reversed(created):
            try:
                cluster.api("DELETE", f"{collection(d)}/{d['metadata']['name']}")
            except KubeAPIError as e:
                if e.status != 404:
                    raise


def test_helm_install_upgrade_uninstall(cluster):
    """A real `helm install` into the 1.20 API server (Helm's own code: kubeVersion check,
    crds/, creation order), then `helm upgrade`, which must keep the generated
    certificates (the chart looks the existing Secrets up), then `helm uninstall`."""
    ns = "webb-helm"
    config = helm.Config(kubeconfig_path=cluster.kubeconfig, namespace=ns)
    values = {"metrics": {"serviceMonitor": {"enabled": True}}}
    secrets = f"/api/v1/namespaces/{ns}/secrets"
    try:
        release = config.install(CHART, RELEASE, values, namespace=ns, create_namespace=True,
                                 timeout=120)
        assert release["status"] == "deployed", release
        ds = cluster.api("GET", f"/apis/apps/v1/namespaces/{ns}/daemonsets/{RELEASE}-agent")
        assert ds["spec"]["template"]["spec"]["hostNetwork"] is True
        for name in ("relay", "ui", "metrics"):
            svc = cluster.api("GET", f"/api/v1/namespaces/{ns}/services/{RELEASE}-{name}")
            assert svc["spec"]["clusterIP"]
        cluster.api("GET", f"/apis/monitoring.coreos.com/v1/namespaces/{ns}/servicemonitors/"
                           f"{RELEASE}-metrics")
        cluster.api("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                           "webbidentities.webb.io")
        before = {n: cluster.api("GET", f"{secrets}/{RELEASE}-{n}")["data"]
                  for n in ("ca", "agent-certs", "relay-client-certs")}

        release = config.upgrade(CHART, RELEASE, {**values, "agent": {"ringCapacity": 8191}},
                                 namespace=ns, timeout=120)
        assert release["revision"] == 2 and release["status"] == "deployed"
        after = {n: cluster.api("GET", f"{secrets}/{RELEASE}-{n}")["data"] for n in before}
        assert after == before, "helm upgrade replaced the certificates"
        ds = cluster.api("GET", f"/apis/apps/v1/namespaces/{ns}/daemonsets/{RELEASE}-agent")
        assert "8191" in ds["spec"]["template"]["spec"]["containers"][0]["args"]
        # A new cluster name needs an agent certificate for the new names (same CA).
        release = config.upgrade(CHART, RELEASE, {**values, "clusterName": "east"},
                                 namespace=ns, timeout=120)
        assert release["status"] == "deployed"
        renamed = {n: cluster.api("GET", f"{secrets}/{RELEASE}-{n}") for n in before}
        assert renamed["ca"]["data"] == before["ca"]
        agent = renamed["agent-certs"]
        assert agent["data"]["tls.crt"] != before["agent-certs"]["tls.crt"]
        assert agent["metadata"]["annotations"]["webb.io/tls-names"] == "*.east.webb-grpc.local"

        config.uninstall(RELEASE, timeout=120)
        with pytest.raises(KubeAPIError) as e:
            cluster.api("GET", f"/apis/apps/v1/namespaces/{ns}/daemonsets/{RELEASE}-agent")
        assert e.value.status == 404
        with pytest.raises(KubeAPIError) as e:
            cluster.api("GET", f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{RELEASE}-agent")
        assert e.value.status == 404
    finally:
        config.uninstall(RELEASE, ignore_not_found=True, timeout=120)
        config.close()
        try:
            cluster.api("DELETE", f"/api/v1/namespaces/{ns}")
        except KubeAPIError as e:
            if e.status != 404:
                raise

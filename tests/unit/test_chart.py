"""The Helm chart (charts/webb), rendered by the real Helm engine (helm-python-sdk, Helm's
Go code as a library) for the default values and several non-default ones. Every
rendered manifest is validated against Kubernetes' own OpenAPI schemas in strict mode
(kubernetes-validate: unknown fields fail) for 1.20 (the chart's floor) and the newest
version the installed package ships; then the content that matters is checked: the
agent's privileges and mounts, the Services' ports, least-privilege RBAC, dashboards,
TLS certificates (by real TLS handshakes), and that every component accepts the
arguments the chart gives it (each service's own argument parser).

ServiceMonitor (monitoring.coreos.com/v1) is not a Kubernetes kind, so it has no schema
here and its published CRD is not available offline: its fields are checked by the
assertions below, and tests/e2e/test_chart_apiserver.py sends it to a real API server.
"""
from __future__ import annotations

import copy
import json
import re
import shlex
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

import helm_python as helm  # helm-python-sdk and kubernetes-validate: the test extra
import kubernetes_validate.utils as kv_utils

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "webb"
NS = "webb-test"
RELEASE = "webb"

# Kubernetes versions whose schemas each manifest must satisfy: the chart's kubeVersion
# floor, and the newest the installed kubernetes-validate ships.
SCHEMA_VERSIONS = ["1.20.0", kv_utils.latest_version()]
# Kinds that are not Kubernetes' own (see the module docstring).
NON_KUBERNETES_KINDS = {"ServiceMonitor"}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}

HUBBLE_RECOMMENDED_METRICS = (
    "dns,drop,tcp,flow,port-distribution,icmp,httpV2:exemplars=true;labelsContext=source_ip,"
    "source_namespace,source_workload,destination_ip,destination_namespace,"
    "destination_workload,traffic_direction")

# Non-default configurations that must render and validate as well as the defaults.
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "tls-off": {"tls": {"enabled": False}},
    "tls-from-secrets": {"tls": {"method": "secret", "secrets": {
        "agent": "my-agent-certs", "relayClient": "my-relay-client", "relayServer": "my-relay-server"}},
        "relay": {"tls": {"enabled": True}}, "metrics": {"enabled": False}},
    "relay-tls-generated": {"relay": {"tls": {"enabled": True}}, "metrics": {"enabled": False}},
    "servicemonitor": {"metrics": {"serviceMonitor": {
        "enabled": True, "labels": {"release": "kube-prometheus-stack"}, "scrapeTimeout": "5s"}}},
    "dashboards-off": {"dashboards": {"enabled": False}},
    "history": {"history": {"enabled": True, "hostPath": "/data/webb-history",
                            "maxBytes": "512MiB", "maxAge": "6h"}},
    "privileged": {"agent": {"privileged": True, "hostPID": True,
                             "hostPaths": {"bpffs": {"enabled": True}}}},
    "custom-metrics": {"metrics": {"options": "dns:query;ignoreAAAA,drop,flow:sourceContext=pod",
                                   "enableOpenMetrics": False}},
    "metrics-preset": {"metrics": {"options": "", "preset": "dashboards"}},
    "agent-only": {"relay": {"enabled": False}, "ui": {"enabled": False},
                   "metrics": {"enabled": False}, "dashboards": {"enabled": False},
                   "clusterName": "east", "agent": {"ringCapacity": 4095, "installCRDs": True,
                             "extraArgs": ["--report-interval", "5"],
                             "identityGC": {"interval": "30s", "grace": "1h30m"},
                             "priorityClassName": "system-node-critical",
                             "serviceAccount": {"name": "custom-agent-sa"}},
                   "history": {"enabled": True, "maxBytes": 1073741824}},
}


def render(values: dict[str, Any] | None = None, name: str = RELEASE,
           namespace: str = NS) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values=values, name=name, namespace=namespace, is_install=True)


def manifests(values: dict[str, Any] | None = None, **kw: Any) -> list[dict[str, Any]]:
    out = render(values, **kw)
    return [doc for path, text in sorted(out.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def find(docs: list[dict], kind: str, suffix: str = "") -> dict:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(hits) == 1, f"expected one {kind} *{suffix}, got {[d['metadata']['name'] for d in hits]}"
    return hits[0]


def container(workload: dict) -> dict:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def args_of(workload: dict) -> list[str]:
    """The container's arguments with $(VAR) expanded from its env, as the kubelet does."""
    c = container(workload)
    env = {e["name"]: e.get("value", f"<{e['name']}>") for e in c.get("env", [])}
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a)
            for a in c.get("args", [])]


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} not in {args}"
    return args[args.index(name) + 1]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: manifests(values) for name, values in CONFIGS.items()}


# --- Kubernetes schemas -------------------------------------------------------------------

def test_schemas_cover_the_chart_floor():
    assert kv_utils.all_versions()[0].startswith("1.20."), (
        "kubernetes-validate must ship Kubernetes 1.20 schemas (pyproject pins a version that does)")


def test_validation_is_strict():
    """The check below would catch a misspelt field: strict schemas reject unknown ones."""
    ds = find(manifests(), "DaemonSet", "-agent")
    bad = copy.deepcopy(ds)
    container(bad)["volumeMount"] = container(bad).pop("volumeMounts")
    for version in SCHEMA_VERSIONS:
        kv_utils.validate(ds, version, strict=True)
        with pytest.raises(kv_utils.ValidationError):
            kv_utils.validate(bad, version, strict=True)


def test_every_manifest_validates_against_kubernetes_schemas(rendered):
    seen: set[str] = set()
    checked = 0
    for config, docs in rendered.items():
        for doc in docs:
            if doc["kind"] in NON_KUBERNETES_KINDS:
                continue
            key = json.dumps(doc, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            for version in SCHEMA_VERSIONS:
                try:
                    kv_utils.validate(doc, version, strict=True)
                except kv_utils.ValidationError as e:
                    pytest.fail(f"{config}: {doc['kind']}/{doc['metadata']['name']} invalid for "
                                f"Kubernetes {version} at {'.'.join(map(str, e.path))}: {e.message}")
                checked += 1
    assert checked > 2 * 20


def test_everything_is_namespaced_and_named_after_the_release(rendered):
    for config, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        assert {"DaemonSet", "ClusterRole", "ClusterRoleBinding", "Service"} <= kinds, config
        for d in docs:
            meta = d["metadata"]
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]), meta["name"]
            if d["kind"] == "ServiceAccount" and config == "agent-only":
                assert meta["name"] == "custom-agent-sa"
            else:
                assert meta["name"].startswith(f"{RELEASE}-"), meta["name"]
            if d["kind"] in CLUSTER_SCOPED:
                assert "namespace" not in meta
            else:
                assert meta["namespace"] == NS, f"{config}: {d['kind']}/{meta['name']}"


def test_long_release_names_give_valid_names():
    release = "a-release-name-of-fifty-three-characters-is-helms-max"
    assert len(release) == 53
    docs = manifests({"relay": {"tls": {"enabled": True}}, "metrics": {"enabled": False}},
                     name=release)
    names = [d["metadata"]["name"] for d in docs]
    for n in names:
        assert len(n) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", n), n
    assert len(set((d["kind"], n) for d, n in zip(docs, names))) == len(docs)
    for version in SCHEMA_VERSIONS:
        for d in docs:
            kv_utils.validate(d, version, strict=True)


# --- helm lint -----------------------------------------------------------------------------

@pytest.mark.parametrize("config", ["default", "tls-from-secrets", "servicemonitor", "history",
                                    "privileged", "agent-only"])
def test_helm_lint_passes(config):
    for kube in ("v1.20.0", None):
        report = helm.lint(CHART, CONFIGS[config], strict=True, namespace=NS, kube_version=kube)
        assert report["errors"] == [], report
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert problems == [], problems


# --- the agent -----------------------------------------------------------------------------

def test_agent_daemonset_defaults(rendered):
    docs = rendered["default"]
    ds = find(docs, "DaemonSet", "-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["hostPID"] is False
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["serviceAccountName"] == find(docs, "ServiceAccount", "-agent")["metadata"]["name"]

    c = container(ds)
    env = {e["name"]: e for e in c["env"]}
    assert env["WEBB_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    raw = c["args"]
    assert raw[:4] == ["--k8s", "--node-name", "$(WEBB_NODE_NAME)", "--listen-address"]
    assert flag(raw, "--listen-address") == ":4244"
    assert flag(raw, "--ring-capacity") == "65535"

    sc = c["securityContext"]
    assert sc["privileged"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert sc["capabilities"]["add"] == values["agent"]["capabilities"]
    assert set(sc["capabilities"]["add"]) == {"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN",
                                              "SYS_RESOURCE", "IPC_LOCK"}
    assert sc["capabilities"]["drop"] == ["ALL"]

    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    expect = {"/sys/kernel/tracing": False, "/sys/kernel/debug": False,
              "/lib/modules": True, "/usr/src": True, "/var/run/webb": False,
              "/run/netns": True}
    for path, read_only in expect.items():
        (vol,) = [n for n, p in host.items() if p == path]
        assert mounts[vol]["mountPath"] == path
        assert mounts[vol].get("readOnly", False) is read_only, path
    assert mounts["netns"]["mountPropagation"] == "HostToContainer"  # pods made later
    assert "/sys/fs/bpf" not in host.values()  # nothing is pinned: off unless asked for
    assert [p["containerPort"] for p in c["ports"]] == [4244]


def test_agent_options(rendered):
    ds = find(rendered["privileged"], "DaemonSet", "-agent")
    pod = ds["spec"]["template"]["spec"]
    assert container(ds)["securityContext"] == {"privileged": True}
    assert pod["hostPID"] is True
    bpffs = [v for v in pod["volumes"] if v.get("hostPath", {}).get("path") == "/sys/fs/bpf"]
    assert len(bpffs) == 1
    (m,) = [m for m in container(ds)["volumeMounts"] if m["name"] == bpffs[0]["name"]]
    assert m["mountPath"] == "/sys/fs/bpf" and m["mountPropagation"] == "HostToContainer"

    ds = find(rendered["agent-only"], "DaemonSet", "-agent")
    args = args_of(ds)
    assert flag(args, "--ring-capacity") == "4095"
    assert args[-2:] == ["--report-interval", "5"]
    assert ds["spec"]["template"]["spec"]["priorityClassName"] == "system-node-critical"
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == "custom-agent-sa"
    assert flag(args, "--cluster-name") == "east"
    assert flag(args, "--history-max-bytes") == "1073741824"  # an integer, not 1.073741824e+09
    assert (flag(args, "--identity-gc-interval"), flag(args, "--identity-gc-grace")) == ("30s", "1h30m")
    default = args_of(find(rendered["default"], "DaemonSet", "-agent"))
    assert (flag(default, "--identity-gc-interval"), flag(default, "--identity-gc-grace")) == ("1m", "15m")


def test_identity_crd_comes_with_the_chart(rendered):
    """The chart installs the agents' identity CRD, the same one the agent would create, so
    the agent runs with --no-install-crds and needs no right on CustomResourceDefinitions."""
    from webb_agent.k8s.identity_crd import IDENTITY_CRD
    with helm.Chart.load(CHART) as chart:
        crds = chart.crds
    assert [yaml.safe_load(c["data"]) for c in crds] == [IDENTITY_CRD]
    for version in SCHEMA_VERSIONS:
        kv_utils.validate(IDENTITY_CRD, version, strict=True)
    docs = rendered["default"]
    assert "--no-install-crds" in args_of(find(docs, "DaemonSet", "-agent"))
    assert flag(args_of(find(docs, "DaemonSet", "-agent")), "--cluster-name") == "default"
    rules = find(docs, "ClusterRole", "-agent")["rules"]
    assert not [r for r in rules if "apiextensions.k8s.io" in r["apiGroups"]]
    # agent.installCRDs: the agent creates it, with exactly that right added
    docs = rendered["agent-only"]
    assert "--no-install-crds" not in args_of(find(docs, "DaemonSet", "-agent"))
    rules = find(docs, "ClusterRole", "-agent")["rules"]
    assert [r for r in rules if "apiextensions.k8s.io" in r["apiGroups"]] == [
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
         "verbs": ["create"]}]


def test_history_values_reach_the_agent(rendered):
    assert "--history-dir" not in args_of(find(rendered["default"], "DaemonSet", "-agent"))
    ds = find(rendered["history"], "DaemonSet", "-agent")
    args = args_of(ds)
    directory = flag(args, "--history-dir")
    assert flag(args, "--history-max-bytes") == "512MiB"
    assert flag(args, "--history-max-age") == "6h"
    (m,) = [m for m in container(ds)["volumeMounts"] if m["mountPath"] == directory]
    (v,) = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == m["name"]]
    assert v["hostPath"] == {"path": "/data/webb-history", "type": "DirectoryOrCreate"}
    assert not m.get("readOnly", False)


# --- Services ------------------------------------------------------------------------------

def _target(docs: list[dict], svc: dict, port: dict) -> tuple[str, int]:
    """The workload a Service port reaches and the container port it lands on."""
    selector = svc["spec"]["selector"]
    hits = [w for w in docs if w["kind"] in ("Deployment", "DaemonSet")
            and selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
    assert len(hits) == 1, f"{svc['metadata']['name']} selects {len(hits)} workloads"
    target = port["targetPort"]
    if isinstance(target, str):
        (target,) = [p["containerPort"] for p in container(hits[0])["ports"] if p["name"] == target]
    return hits[0]["metadata"]["name"], target


@pytest.mark.parametrize("config,service,port,workload,target", [
    ("default", "-relay", 80, "-relay", 4245),
    ("default", "-ui", 80, "-ui", 12000),
    ("default", "-metrics", 9965, "-metrics", 9965),
    ("default", "-peer", 443, "-agent", 4244),
    ("tls-off", "-peer", 80, "-agent", 4244),
])
def test_service_ports(rendered, config, service, port, workload, target):
    docs = rendered[config]
    svc = find(docs, "Service", service)
    (p,) = svc["spec"]["ports"]
    assert p["port"] == port and p["protocol"] == "TCP"
    name, container_port = _target(docs, svc, p)
    assert name.endswith(workload) and container_port == target


def test_relay_follows_the_peer_service(rendered):
    for config in ("default", "tls-off"):
        docs = rendered[config]
        peer = find(docs, "Service", "-peer")
        args = args_of(find(docs, "Deployment", "-relay"))
        assert flag(args, "--listen-address") == ":4245"
        assert flag(args, "--peer-service") == (
            f"{peer['metadata']['name']}.{NS}.svc.cluster.local:{peer['spec']['ports'][0]['port']}")


def test_ui_and_metrics_read_from_the_relay_service(rendered):
    docs = rendered["default"]
    relay = find(docs, "Service", "-relay")
    address = f"{relay['metadata']['name']}.{NS}.svc.cluster.local:{relay['spec']['ports'][0]['port']}"
    assert flag(args_of(find(docs, "Deployment", "-ui")), "--server") == address
    margs = args_of(find(docs, "Deployment", "-metrics"))
    assert flag(margs, "--server") == address
    assert flag(margs, "--metrics") == HUBBLE_RECOMMENDED_METRICS
    assert "--enable-openmetrics" in margs

    margs = args_of(find(rendered["custom-metrics"], "Deployment", "-metrics"))
    assert flag(margs, "--metrics") == "dns:query;ignoreAAAA,drop,flow:sourceContext=pod"
    assert "--enable-openmetrics" not in margs
    margs = args_of(find(rendered["metrics-preset"], "Deployment", "-metrics"))
    assert flag(margs, "--preset") == "dashboards" and "--metrics" not in margs


def test_unprivileged_components(rendered):
    for name in ("-relay", "-ui", "-metrics"):
        d = find(rendered["default"], "Deployment", name)
        pod = d["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        sc = container(d)["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert "hostNetwork" not in pod
        assert not [v for v in pod["volumes"] if "hostPath" in v]


# --- RBAC ----------------------------------------------------------------------------------

def test_rbac_is_least_privilege(rendered):
    for config, docs in rendered.items():
        roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]
        assert [r["metadata"]["name"] for r in roles] == [f"{RELEASE}-agent"], config
        rules = roles[0]["rules"]
        granted: dict[tuple[str, str], set[str]] = {}
        for r in rules:
            assert set(r) == {"apiGroups", "resources", "verbs"}, r  # no nonResourceURLs, names
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in r[field], r
            for g in r["apiGroups"]:
                for res in r["resources"]:
                    granted.setdefault((g, res), set()).update(r["verbs"])
        read = {"get", "list", "watch"}
        assert granted == {
            ("", "pods"): read, ("", "namespaces"): read, ("", "services"): read,
            ("", "nodes"): read, ("discovery.k8s.io", "endpointslices"): read,
            ("apps", "replicasets"): {"get"},
            ("networking.k8s.io", "networkpolicies"): read,
            ("cilium.io", "ciliumnetworkpolicies"): read,
            ("cilium.io", "ciliumclusterwidenetworkpolicies"): read,
            ("webb.io", "webbidentities"): read | {"create", "delete"},
            **({("apiextensions.k8s.io", "customresourcedefinitions"): {"create"}}
               if config == "agent-only" else {}),
        }
        binding = find(docs, "ClusterRoleBinding", "-agent")
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                      "kind": "ClusterRole", "name": roles[0]["metadata"]["name"]}
        sa = find(docs, "DaemonSet", "-agent")["spec"]["template"]["spec"]["serviceAccountName"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NS}]
        assert not [d for d in docs if d["kind"] == "RoleBinding"]


# --- dashboards and ServiceMonitor ---------------------------------------------------------

def test_dashboards_are_configmaps_with_the_sidecar_label(rendered):
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert files
    maps = [d for d in rendered["default"] if d["kind"] == "ConfigMap"]
    assert len(maps) == len(files)
    by_key = {}
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        (key,) = m["data"]
        by_key[key] = json.loads(m["data"][key])
    assert by_key == {f.name: json.loads(f.read_text()) for f in files}
    assert not [d for d in rendered["dashboards-off"] if d["kind"] == "ConfigMap"]


def test_service_monitor(rendered):
    assert not [d for d in rendered["default"] if d["kind"] == "ServiceMonitor"]
    docs = rendered["servicemonitor"]
    sm = find(docs, "ServiceMonitor", "-metrics")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    svc = find(docs, "Service", "-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    others = [d for d in docs if d["kind"] == "Service" and d is not svc]
    assert all(not sm["spec"]["selector"]["matchLabels"].items() <= o["metadata"]["labels"].items()
               for o in others)
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NS]}
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in [p["name"] for p in svc["spec"]["ports"]]
    assert ep["path"] == "/metrics" and ep["interval"] == "10s" and ep["scrapeTimeout"] == "5s"


# --- TLS -----------------------------------------------------------------------------------

def _secret_files(docs: list[dict], workload: dict, volume: str, tmp: Path) -> dict[str, Path]:
    """The files a Secret volume of the workload would hold, written to tmp."""
    import base64
    (v,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == volume]
    secret = find(docs, "Secret", v["secret"]["secretName"])
    out = {}
    for key, data in secret["data"].items():
        p = tmp / f"{workload['metadata']['name']}-{volume}-{key}"
        p.write_bytes(base64.b64decode(data))
        out[key] = p
    return out


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_name: str) -> dict:
    """A real TLS handshake over a socket pair (no network); returns the peer certificate
    the server saw from the client (empty without client authentication)."""
    a, b = socket.socketpair()
    seen: dict[str, Any] = {}
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as s:
                seen.update(s.getpeercert() or {})
                s.sendall(b"ok")
        except BaseException as e:  # reported by the client side below
            errors.append(e)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client.wrap_socket(b, server_hostname=server_name) as c:
            assert c.recv(2) == b"ok"
    finally:
        t.join(10)
    assert not errors, errors
    return seen


def test_generated_certificates_give_working_mtls(rendered, tmp_path):
    docs = rendered["default"]
    agent = find(docs, "DaemonSet", "-agent")
    relay = find(docs, "Deployment", "-relay")
    agent_files = _secret_files(docs, agent, "tls", tmp_path)
    relay_files = _secret_files(docs, relay, "agent-tls", tmp_path)
    a_args, r_args = args_of(agent), args_of(relay)
    mounted = {m["name"]: m["mountPath"] for m in container(agent)["volumeMounts"]}
    assert flag(a_args, "--tls-cert") == f"{mounted['tls']}/tls.crt"
    assert flag(a_args, "--tls-client-ca") == f"{mounted['tls']}/ca.crt"
    rmounted = {m["name"]: m["mountPath"] for m in container(relay)["volumeMounts"]}
    assert flag(r_args, "--agent-tls-ca") == f"{rmounted['agent-tls']}/ca.crt"

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(agent_files["tls.crt"], agent_files["tls.key"])
    server.load_verify_locations(agent_files["ca.crt"])
    server.verify_mode = ssl.CERT_REQUIRED  # the agent's --tls-client-ca
    client = ssl.create_default_context(cafile=str(relay_files["ca.crt"]))
    client.load_cert_chain(relay_files["tls.crt"], relay_files["tls.key"])
    peer = _handshake(server, client, flag(r_args, "--agent-tls-server-name"))
    assert peer["subject"]

    # Without the relay's client certificate the agent refuses the connection.
    anonymous = ssl.create_default_context(cafile=str(relay_files["ca.crt"]))
    with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
        _handshake(server, anonymous, flag(r_args, "--agent-tls-server-name"))
    # And a name the agents' certificate was not made for does not verify.
    with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
        _handshake(server, client, "webb-agent.example.org")


def test_generated_relay_certificate_matches_the_ui(rendered, tmp_path):
    docs = rendered["relay-tls-generated"]
    relay = find(docs, "Deployment", "-relay")
    ui = find(docs, "Deployment", "-ui")
    server_files = _secret_files(docs, relay, "server-tls", tmp_path)
    ui_files = _secret_files(docs, ui, "relay-ca", tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(server_files["tls.crt"], server_files["tls.key"])
    client = ssl.create_default_context(cafile=str(ui_files["ca.crt"]))
    _handshake(server, client, flag(args_of(ui), "--tls-server-name"))
    _handshake(server, client, "localhost")  # kubectl port-forward, as NOTES.txt says


def test_existing_secrets_are_used_as_they_are(rendered):
    docs = rendered["tls-from-secrets"]
    assert not [d for d in docs if d["kind"] == "Secret"]
    vols = {}
    for w in docs:
        if w["kind"] in ("Deployment", "DaemonSet"):
            for v in w["spec"]["template"]["spec"]["volumes"]:
                if "secret" in v:
                    vols[(w["metadata"]["name"], v["name"])] = v["secret"]["secretName"]
    assert vols == {(f"{RELEASE}-agent", "tls"): "my-agent-certs",
                    (f"{RELEASE}-relay", "agent-tls"): "my-relay-client",
                    (f"{RELEASE}-relay", "server-tls"): "my-relay-server",
                    (f"{RELEASE}-ui", "relay-ca"): "my-relay-server"}


def test_tls_off_means_plaintext_everywhere(rendered):
    docs = rendered["tls-off"]
    assert not [d for d in docs if d["kind"] == "Secret"]
    for w in docs:
        if w["kind"] in ("Deployment", "DaemonSet"):
            assert not [a for a in args_of(w) if "tls" in a], w["metadata"]["name"]


# --- the arguments each component gets are ones it accepts ---------------------------------

def _pod_files(docs: list[dict], workload: dict, tmp: Path, stand_in: list[dict]) -> dict[str, Path]:
    """What the kubelet would mount for the container, made under tmp: Secret volumes as
    files (from the rendered Secret; for a user's existing Secret, from stand_in's
    generated one), hostPath and emptyDir volumes as directories. Returns
    mountPath -> local directory."""
    import base64
    vols = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    out: dict[str, Path] = {}
    for m in container(workload).get("volumeMounts", []):
        v = vols[m["name"]]
        local = tmp / workload["metadata"]["name"] / m["name"]
        local.mkdir(parents=True)
        if "secret" in v:
            name = v["secret"]["secretName"]
            secrets = [d for d in docs + stand_in if d["kind"] == "Secret"
                       and d["metadata"]["name"] == name]
            if not secrets:  # an existing Secret of the user: any certificate will do here
                secrets = [d for d in stand_in if d["kind"] == "Secret"
                           and d["type"] == "kubernetes.io/tls"]
            data = secrets[0]["data"]
            items = v["secret"].get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                (local / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))
        out[m["mountPath"]] = local
    return out


def _local_args(args: list[str], mounts: dict[str, Path]) -> list[str]:
    def local(a: str) -> str:
        for path, d in mounts.items():
            if a == path or a.startswith(path + "/"):
                return str(d) + a[len(path):]
        return a
    return [local(a) for a in args]


def _accepts(component: str, args: list[str]) -> None:
    """Parse args with the component's own command-line parser (as its main() does first)."""
    if component == "agent":
        from webb_agent.main import parse_args as agent_args
        agent_args(args)
    elif component == "relay":
        from webb_relay.main import parse_args as relay_args
        from webb_relay.tls import agent_tls, server_credentials
        cfg = relay_args(args)  # then what Relay() reads first: the certificate files
        server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        agent_tls(cfg.agent_tls_ca, cfg.agent_tls_cert, cfg.agent_tls_key,
                  cfg.agent_tls_server_name)
    elif component == "ui":
        from webb_ui.main import build_parser, split_address
        a = build_parser().parse_args(args)
        split_address(a.listen_address, 12000)
        if a.tls_ca:
            assert b"-----BEGIN CERTIFICATE" in Path(a.tls_ca).read_bytes()
    elif component == "metrics":
        from webb_metrics.main import parse_args as metrics_args
        from webb_metrics.pipeline import Pipeline
        Pipeline(metrics_args(args).specs)  # every handler's options, as main() checks
    else:
        raise AssertionError(component)


@pytest.mark.parametrize("config,component", [
    (config, component) for config in sorted(CONFIGS)
    for component in ("agent", "relay", "ui", "metrics")
    if component == "agent" or CONFIGS[config].get(component, {}).get("enabled", True)])
def test_components_accept_their_arguments(rendered, config, component, tmp_path):
    kind = "DaemonSet" if component == "agent" else "Deployment"
    docs = rendered[config]
    (workload,) = [w for w in docs
                   if w["kind"] == kind and w["metadata"]["name"] == f"{RELEASE}-{component}"]
    mounts = _pod_files(docs, workload, tmp_path, rendered["relay-tls-generated"])
    args = _local_args(args_of(workload), mounts)
    try:
        _accepts(component, args)
    except SystemExit as e:
        pytest.fail(f"webb-{component} rejects the chart's arguments (exit {e.code}): "
                    f"{shlex.join(args)}")


# --- bad values fail with the key's name ---------------------------------------------------

@pytest.mark.parametrize("values,error,message", [
    ({"agent": {"ringCapacity": 1000}}, "HelmValuesError", "ringCapacity"),
    ({"agent": {"ringCapcity": 1023}}, "HelmValuesError", "ringCapcity"),
    ({"agent": {"capabilities": ["CAP_BPF"]}}, "HelmValuesError", "capabilities"),
    ({"tls": {"method": "certmanager"}}, "HelmValuesError", "method"),
    ({"history": {"maxAge": "one day"}}, "HelmValuesError", "maxAge"),
    ({"agent": {"identityGC": {"grace": "15 minutes"}}}, "HelmValuesError", "grace"),
    ({"history": {"maxBytes": "lots"}}, "HelmValuesError", "maxBytes"),
    ({"tls": {"method": "secret"}}, "HelmRenderError", "tls.secrets."),
    ({"relay": {"tls": {"enabled": True}}}, "HelmRenderError", "metrics"),
    ({"relay": {"enabled": False}}, "HelmRenderError", "relay.enabled"),
])
def test_bad_values_fail_clearly(values, error, message):
    with pytest.raises(getattr(helm, error)) as e:
        render(values)
    assert message in str(e.value)


def test_notes_tell_how_to_reach_ui_and_relay():
    notes = render()["webb/templates/NOTES.txt"]
    assert f"kubectl port-forward -n {NS} svc/{RELEASE}-ui 12000:80" in notes
    assert f"kubectl port-forward -n {NS} svc/{RELEASE}-relay 4245:80" in notes
    assert "hubble observe --server localhost:4245" in notes


def test_chart_metadata():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["kubeVersion"] == ">=1.20.0-0"
    assert yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["options"] == \
        HUBBLE_RECOMMENDED_METRICS

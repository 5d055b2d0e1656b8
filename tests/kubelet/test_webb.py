"""webb installed by its chart on a real one-node cluster (tests/k8s_node.py), with each
CNI: the agent DaemonSet runs as a real pod with exactly the chart's privileges and host
mounts and attaches to the veths the CNI made; relay, UI and exporter run as
Deployments; bookinfo runs as real pods behind ClusterIP Services with cluster DNS.
Flows read over `kubectl port-forward` to the relay carry pod names, labels,
identities, workloads and Service names from the API, and the tutorial's L4
CiliumNetworkPolicy, applied through the API server, drops details -> reviews with
"Policy denied". Then what a cluster user does: port-forward to the relay, pods
recreated (with the same labels, and with other labels: the old identity is
garbage-collected), and the agent DaemonSet restarted under an open follow. The
restart test runs last: it replaces the agent pod the fixture found.
"""
from __future__ import annotations

import calendar
import json
import re
import subprocess
import time
from typing import Iterator

import grpc
import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp

from k8s_cluster import KubeAPIError
from k8s_node import KubeNode, kube_node
from k8s_workloads import (BOOKINFO, BOOKINFO_NS, ROOT, WEBB_NS, bookinfo, chart_crds,
                           cilium_crds, cluster_dns, namespace, render_chart)
from support import FollowStream
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc
from webb.api.relay import relay_pb2 as rpb

pytestmark = [pytest.mark.root, pytest.mark.kubelet]

IMAGES = ("pause", "busybox", "agent", "relay", "ui", "metrics")
GC_INTERVAL, GC_GRACE = 2, 10  # seconds: the chart's agent.identityGC in these tests
# Linux capability numbers (include/uapi/linux/capability.h) of the chart's list.
CAP_NUMBERS = {"NET_ADMIN": 12, "IPC_LOCK": 14, "SYS_ADMIN": 21, "SYS_RESOURCE": 24,
               "PERFMON": 38, "BPF": 39}


def agent_capabilities() -> list[str]:
    """The chart's capability list, less what this machine's root does not hold: the
    runtime cannot grant a capability outside its own bounding set ("unable to apply
    caps: operation not permitted"). Here that is SYS_RESOURCE, which the agent needs
    only on kernels before 5.11 (memlock accounting of BPF maps)."""
    chart = yaml.safe_load((ROOT / "charts/webb/values.yaml").read_text())["agent"]["capabilities"]
    bounding = int(re.search(r"^CapBnd:\s*([0-9a-f]+)", open("/proc/self/status").read(), re.M)
                   .group(1), 16)
    return [c for c in chart if bounding & (1 << CAP_NUMBERS[c])]


class PortForward:
    """`kubectl port-forward` to a Service: the local port it reports, stopped on exit."""

    def __init__(self, node: KubeNode, ns: str, target: str, port: int) -> None:
        self.proc = subprocess.Popen(
            [node.bins["kubectl"], f"--kubeconfig={node.kc.kubeconfig}", "port-forward", "-n", ns,
             target, f":{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        m = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
        if not m:
            self.close()
            raise RuntimeError(f"kubectl port-forward: {line}")
        self.port = int(m.group(1))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module", params=["bridge", "ptp"])
def cluster(request, tmp_path_factory) -> Iterator[dict]:
    cni = request.param
    t0 = time.monotonic()
    with kube_node(tmp_path_factory.mktemp(f"webb-{cni}"), cni=cni, images=IMAGES) as node:
        node.apply(chart_crds() + cilium_crds())
        node.kubectl("wait", "--for=condition=established", "--timeout=60s",
                     "crd/webbidentities.webb.io", "crd/ciliumnetworkpolicies.cilium.io")
        node.apply(cluster_dns())
        # The chart as a user installs it, with the history on the node's disk (a host
        # path under the test's directory) for the restart test.
        history = node.dir / "history"
        # Identity GC as a user would tune it, short enough for the relabel test.
        values = {"history": {"enabled": True, "hostPath": str(history)},
                  "agent": {"capabilities": agent_capabilities(),
                            "identityGC": {"interval": f"{GC_INTERVAL}s", "grace": f"{GC_GRACE}s"}}}
        node.apply([namespace(WEBB_NS)] + render_chart(values))
        node.apply(bookinfo())
        node.pods_ready("kube-system", "k8s-app=kube-dns", 1)
        agents = node.pods_ready(WEBB_NS, "app.kubernetes.io/component=agent", 1, timeout=300)
        for comp in ("relay", "ui", "metrics"):
            node.pods_ready(WEBB_NS, f"app.kubernetes.io/component={comp}", 1)
        for app, version in BOOKINFO:
            node.pods_ready(BOOKINFO_NS, f"app={app},version={version}", 1)
        node.timings["webb and bookinfo ready"] = time.monotonic() - t0
        pf = PortForward(node, WEBB_NS, "svc/webb-relay", 80)
        channel = grpc.insecure_channel(f"127.0.0.1:{pf.port}")
        try:
            print(f"\nbring-up ({cni}):", {k: round(v, 1) for k, v in node.timings.items()})
            yield {"node": node, "cni": cni, "relay": channel, "pf": pf,
                   "agent_pod": agents[0], "history": history}
        finally:
            channel.close()
            pf.close()


def flows(cluster: dict, since: Timestamp | None = None, number: int = 2000,
          until: Timestamp | None = None, **filt) -> list[fpb.Flow]:
    req = opb.GetFlowsRequest(whitelist=[fpb.FlowFilter(**filt)] if filt else [])
    if since is not None:  # everything since then (Hubble: no number with since)
        req.since.CopyFrom(since)
        if until is not None:
            req.until.CopyFrom(until)
    else:
        req.number = number
    stub = observer_pb2_grpc.ObserverStub(cluster["relay"])
    return [r.flow for r in stub.GetFlows(req, timeout=20) if r.HasField("flow")]


def wait_flows(cluster: dict, what: str, timeout: float = 90, **kw) -> list[fpb.Flow]:
    node: KubeNode = cluster["node"]

    def got() -> list[fpb.Flow] | None:
        try:
            return flows(cluster, **kw) or None
        except grpc.RpcError as e:  # the relay still finding its agent
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return None
            raise
    return node.wait(got, timeout, what)


def test_agent_pod_has_exactly_the_charts_privileges(cluster):
    node: KubeNode = cluster["node"]
    pod = cluster["agent_pod"]
    name = pod["metadata"]["name"]
    spec = pod["spec"]
    assert spec["hostNetwork"] is True and not spec.get("hostPID")
    sc = spec["containers"][0]["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"]
    chart_caps = agent_capabilities()
    assert sorted(sc["capabilities"]["add"]) == sorted(chart_caps)
    # What the kernel gave the agent's process: those capabilities, and no others.
    status = node.kubectl("exec", "-n", WEBB_NS, name, "--", "cat", "/proc/1/status")
    eff = int(re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    assert eff == sum(1 << CAP_NUMBERS[c] for c in chart_caps), hex(eff)
    # The chart's host mounts, and nothing else from the host.
    host_paths = sorted(v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v)
    values = yaml.safe_load((ROOT / "charts/webb/values.yaml").read_text())["agent"]["hostPaths"]
    expected = sorted([values[k] for k in ("tracefs", "debugfs", "modules", "kernelSources",
                                           "run", "netns")] + [str(cluster["history"])])
    assert host_paths == expected


def test_agent_attaches_to_the_pods_veths(cluster):
    """Every bookinfo pod's host-side interface carries the agent's TC programs: the
    route to the pod names it (ptp), or it is a port of the bridge (bridge)."""
    node: KubeNode = cluster["node"]
    pods = node.kc.api("GET", f"/api/v1/namespaces/{BOOKINFO_NS}/pods")["items"]

    def host_ifs() -> set[str]:
        if cluster["cni"] == "bridge":
            return {p["ifname"] for p in
                    json.loads(node.run(["ip", "-j", "link", "show", "master", "cni0"]).stdout)}
        return {json.loads(node.run(["ip", "-j", "route", "get", p["status"]["podIP"]]).stdout)[0]["dev"]
                for p in pods}

    def unattached() -> list[str]:
        return [i for i in sorted(host_ifs())
                if "bpf" not in node.run(["tc", "filter", "show", "dev", i, "ingress"]).stdout]
    ifs = host_ifs()
    assert len(ifs) >= len(pods)
    node.wait(lambda: not unattached(), 120, "TC programs on every bookinfo pod's veth")


def test_flows_carry_pods_labels_identities_workloads_and_services(cluster):
    fl = wait_flows(cluster, "productpage -> details flows over the relay",
                    source_pod=[f"{BOOKINFO_NS}/productpage-v1"],
                    destination_pod=[f"{BOOKINFO_NS}/details-v1"])
    f = next((x for x in fl if x.destination_service.name), fl[0])
    assert f.source.namespace == BOOKINFO_NS and f.source.pod_name.startswith("productpage-v1-")
    assert "k8s:app=productpage" in f.source.labels
    assert f.destination.pod_name.startswith("details-v1-")
    assert "k8s:app=details" in f.destination.labels
    assert f.source.identity >= 256 and f.destination.identity >= 256
    assert f.source.identity != f.destination.identity
    assert [(w.name, w.kind) for w in f.source.workloads] == [("productpage-v1", "Deployment")]
    named = [x for x in fl if x.destination_service.name]
    assert named, "no flow named the details Service"
    assert (named[0].destination_service.name, named[0].destination_service.namespace) == (
        "details", BOOKINFO_NS)
    assert f.node_name == cluster["node"].name
    # the agent keeps its history on the node's disk (the chart's hostPath)
    assert any(p.is_file() for p in cluster["history"].rglob("*")), "no history on the node"
    # DNS through the cluster DNS pod: bookinfo resolves the Services' names
    dns = wait_flows(cluster, "DNS flows to the cluster DNS pod",
                     source_pod=[f"{BOOKINFO_NS}/productpage-v1"],
                     destination_pod=["kube-system/cluster-dns"])
    assert dns[0].destination.namespace == "kube-system"


def test_l4_policy_drops_details_to_reviews(cluster):
    node: KubeNode = cluster["node"]
    t0 = Timestamp()
    t0.GetCurrentTime()
    node.apply((ROOT / "examples/reviews-l4.yaml").read_text())
    details = node.pods_ready(BOOKINFO_NS, "app=details", 1)[0]["metadata"]["name"]
    productpage = node.pods_ready(BOOKINFO_NS, "app=productpage", 1)[0]["metadata"]["name"]
    get = ("import sys, urllib.request\n"
           "try:\n"
           "    urllib.request.urlopen('http://reviews:9080/reviews/0', timeout=3).read()\n"
           "    print('reached')\n"
           "except Exception as e:\n"
           "    print('failed', type(e).__name__)\n")

    def call(pod: str) -> str:
        return node.kubectl("exec", "-n", BOOKINFO_NS, pod, "--", "python3", "-c", get).strip()
    # the policy takes effect once the agent has it: details is refused, productpage not
    node.wait(lambda: call(details).startswith("failed"), 90, "details -> reviews refused")
    assert call(productpage) == "reached"
    try:
        drops = wait_flows(cluster, "the DROPPED flow", since=t0, verdict=[fpb.DROPPED],
                           source_pod=[f"{BOOKINFO_NS}/details-v1"])
    except AssertionError:
        seen = flows(cluster, since=t0, verdict=[fpb.DROPPED])
        print("DROPPED since t0:", [(f.source.pod_name, f.IP.source, f.destination.pod_name,
                                     f.IP.destination, f.drop_reason_desc) for f in seen[:20]])
        seen = flows(cluster, since=t0, source_pod=[f"{BOOKINFO_NS}/details-v1"])
        print("from details since t0:", [(f.IP.destination, f.verdict, f.destination.pod_name,
                                          f.Type) for f in seen[:20]])
        raise
    d = drops[0]
    assert d.drop_reason_desc == fpb.POLICY_DENIED
    assert "k8s:app=reviews" in d.destination.labels and d.l4.TCP.destination_port == 9080
    assert [(p.name, p.namespace) for p in d.ingress_denied_by] == [("reviews", BOOKINFO_NS)]
    node.kubectl("delete", "-f", str(ROOT / "examples/reviews-l4.yaml"))


def test_port_forward_gives_grpcurl_and_webb_observe(cluster):
    """What a user types on a cluster: kubectl port-forward to the relay, then grpcurl
    (server reflection) and `webb observe` on the local port."""
    import sys
    from pathlib import Path
    bin_dir = Path(sys.executable).parent
    addr = f"127.0.0.1:{cluster['pf'].port}"
    out = subprocess.run([str(bin_dir / "grpcurl"), "-plaintext", addr, "list"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "observer.Observer" in out.stdout, out.stderr

    def observe() -> list[dict]:
        obs = subprocess.run([str(bin_dir / "webb"), "observe", "--server", addr, "--last", "50",
                              "--from-pod", f"{BOOKINFO_NS}/productpage", "-o", "json"],
                             capture_output=True, text=True, timeout=60)
        assert obs.returncode == 0, obs.stderr
        return [json.loads(l) for l in obs.stdout.splitlines() if l.strip()]
    # the load generator's first calls may still be on their way
    lines = cluster["node"].wait(observe, 60, "webb observe showing productpage's flows")
    assert all(l["flow"]["source"]["pod_name"].startswith("productpage-v1-") for l in lines), lines[:2]


def test_pod_recreated_with_a_new_ip_is_named_right(cluster):
    """details' pod deleted: its Deployment makes a new one with a new address, and the
    flows to it name the new pod."""
    node: KubeNode = cluster["node"]
    old = node.pods_ready(BOOKINFO_NS, "app=details", 1)[0]
    node.kubectl("delete", "pod", "-n", BOOKINFO_NS, old["metadata"]["name"], "--wait=true")

    def replaced() -> dict | None:
        pods = node.pods_ready(BOOKINFO_NS, "app=details", 1)
        new = [p for p in pods if p["metadata"]["name"] != old["metadata"]["name"]]
        return new[0] if new else None
    new = node.wait(replaced, 120, "the new details pod Ready")
    assert new["status"]["podIP"] != old["status"]["podIP"]
    t0 = Timestamp()
    t0.GetCurrentTime()
    fl = wait_flows(cluster, "flows to the new details pod", since=t0,
                    destination_pod=[f"{BOOKINFO_NS}/details-v1"],
                    destination_ip=[new["status"]["podIP"]])
    assert {f.destination.pod_name for f in fl} == {new["metadata"]["name"]}
    assert "k8s:app=details" in fl[0].destination.labels


def test_pod_recreated_with_other_labels_gets_a_new_identity_and_the_old_is_collected(cluster):
    """A pod deleted and created again under the same name with other labels: its new
    flows carry a new identity (a new WebbIdentity object with the new labels), and the
    old identity, which no pod uses any more, is garbage-collected after the chart's
    agent.identityGC.grace; identities still in use stay."""
    node: KubeNode = cluster["node"]
    details = node.kc.api("GET", f"/api/v1/namespaces/{BOOKINFO_NS}/services/details")
    url = f"{details['spec']['clusterIP']} 9080"

    def create(rev: str) -> dict:
        node.apply([{"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": "idgc", "namespace": "default",
                                  "labels": {"app": "idgc", "rev": rev}},
                     "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
                         "name": "main", "image": "webb.test/busybox:1",
                         "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}}])
        return node.wait_pod_ready("default", "idgc")

    def traffic(pod: dict) -> fpb.Flow:
        """A flow of the pod calling details (the agent attaches to its veth first)."""
        t0 = Timestamp()
        t0.GetCurrentTime()
        ip = pod["status"]["podIP"]

        def sent() -> list[fpb.Flow] | None:
            node.kubectl("exec", "-n", "default", "idgc", "--", "sh", "-c",
                         f"printf 'GET /details/0 HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {url}",
                         check=False, timeout=30)
            return [f for f in flows(cluster, since=t0, source_pod=["default/idgc"])
                    if f.IP.source == ip and f.destination.pod_name.startswith("details-v1-")]
        return node.wait(sent, 120, f"flows from idgc ({ip}) to details")[0]

    def identity(num: int) -> dict | None:
        try:
            return node.kc.api("GET", f"/apis/webb.io/v1/webbidentities/{num}")
        except KubeAPIError as e:
            if e.status == 404:
                return None
            raise
    try:
        first = create("one")
        old = traffic(first)
        assert "k8s:rev=one" in old.source.labels
        old_id = old.source.identity
        assert identity(old_id)["security-labels"]["k8s:rev"] == "one"

        node.kubectl("delete", "pod", "-n", "default", "idgc", "--wait=true")
        second = create("two")
        assert second["metadata"]["uid"] != first["metadata"]["uid"]
        assert second["status"]["podIP"] != first["status"]["podIP"]
        new = traffic(second)
        assert "k8s:rev=two" in new.source.labels and "k8s:rev=one" not in new.source.labels
        assert new.source.identity >= 256 and new.source.identity != old_id
        assert identity(new.source.identity)["security-labels"]["k8s:rev"] == "two"

        # No pod has the old label set any more: collected after the grace period.
        node.wait(lambda: identity(old_id) is None, GC_GRACE + 10 * GC_INTERVAL + 30,
                  f"the unused identity {old_id} garbage-collected")
        # what pods still use is kept: the new identity, details'
        assert identity(new.source.identity) is not None
        assert identity(new.destination.identity) is not None
    finally:
        node.kubectl("delete", "pod", "-n", "default", "idgc", "--ignore-not-found",
                     "--wait=true")


def test_agent_daemonset_restarted_mid_follow(cluster):
    """`kubectl rollout restart` of the agent DaemonSet while a client follows through
    the relay: the relay reports the node's stream failing, then connected again, the
    follow goes on with the new agent's flows, and the flows recorded before the restart
    are still answered (from the history on the node's host path) by the new agent."""
    node: KubeNode = cluster["node"]
    ds = node.kc.api("GET", f"/apis/apps/v1/namespaces/{WEBB_NS}/daemonsets/webb-agent")
    old_pods = {p["metadata"]["name"] for p in node.pods_ready(
        WEBB_NS, "app.kubernetes.io/component=agent", 1)}
    t0 = Timestamp()
    t0.GetCurrentTime()
    follow = FollowStream(observer_pb2_grpc.ObserverStub(cluster["relay"]), timeout=600,
                          since=t0)
    try:
        # The load generator's traffic: productpage -> details, through the follow.
        def pp_details(start: int = 0) -> list[fpb.Flow]:
            return [f for f in follow.flows(start)
                    if f.source.pod_name.startswith("productpage-v1-")
                    and f.destination.pod_name.startswith("details-v1-")]
        node.wait(lambda: len(pp_details()) >= 5, 90, "productpage -> details flows in the follow")
        assert follow.statuses()[0][:2] == (rpb.NODE_CONNECTED, {node.name})
        before = pp_details()
        assert all(f.uuid for f in before)
        mark = len(follow.items)
        restarted = time.time()
        node.kubectl("rollout", "restart", "-n", WEBB_NS, "daemonset/webb-agent")

        # The relay reports the node's stream ending with an error, and later the node
        # connected again (it joins the open stream from where it stopped). The
        # DaemonSet controller starts the new pod as soon as the old one is terminating,
        # so the new agent may serve within the relay's error aggregation window: the
        # error must come first all the same.
        def mine() -> list[tuple[int, list[str], str]]:
            return [s for s in follow.statuses(mark) if node.name in s[1]]
        try:
            node.wait(lambda: rpb.NODE_CONNECTED in [s[0] for s in mine()], 180,
                      "NODE_CONNECTED for the node again in the follow")
            assert mine()[0][0] == rpb.NODE_ERROR, "the node was reported lost before it rejoined"
        except AssertionError as e:
            # what a failure in a whole-suite run needs to be understood afterwards
            relay_log = node.kubectl("logs", "-n", WEBB_NS, "deploy/webb-relay", "--tail=200",
                                     check=False)
            pods = node.kubectl("get", "pods", "-n", WEBB_NS, "-o", "wide", check=False)
            agents = node.kc.api("GET", f"/api/v1/namespaces/{WEBB_NS}/pods",
                                 query={"labelSelector": "app.kubernetes.io/component=agent"})
            agent = "\n".join(node.describe(WEBB_NS, p["metadata"]["name"])
                              for p in agents["items"])
            raise AssertionError(
                f"{e}\nstatuses: {[(rpb.NodeState.Name(s[0]), s[1], s[2]) for s in mine()]}"
                f"\nfollow error: {follow.error!r}\n--- relay ---\n{relay_log}"
                f"\n--- pods ---\n{pods}\n--- agent ---\n{agent}") from None
        back = time.time_ns()  # the new agent is serving (the node's clock is the host's)
        new = node.pods_ready(WEBB_NS, "app.kubernetes.io/component=agent", 1)
        created = calendar.timegm(time.strptime(new[0]["metadata"]["creationTimestamp"],
                                                "%Y-%m-%dT%H:%M:%SZ"))
        st = [(rpb.NodeState.Name(r.node_status.state_change), r.node_status.message,
               round(r.time.ToNanoseconds() / 1e9 - restarted, 1))
              for r in follow.items[mark:] if r.HasField("node_status")]
        print(f"\nafter the restart (s since it): new agent pod created at "
              f"{created - restarted:.0f}, node status {st}")
        errors = [s for s in follow.statuses(mark) if s[0] == rpb.NODE_ERROR]
        assert all(s[2] for s in errors), "a NODE_ERROR says what happened"
        assert not {p["metadata"]["name"] for p in new} & old_pods, "the agent pod was replaced"
        assert ds["metadata"]["generation"] < node.kc.api(
            "GET", f"/apis/apps/v1/namespaces/{WEBB_NS}/daemonsets/webb-agent")["metadata"]["generation"]

        # The follow goes on: flows the new agent recorded after the restart arrive.
        node.wait(lambda: any(f.time.ToNanoseconds() > back for f in pp_details(mark)),
                  120, "the new agent's flows in the same follow")
        assert follow.error is None, follow.error

        # The history on the node's disk survived: what the old agent recorded before
        # the restart is answered again, same flows (UUIDs), by the new one.
        since, until = Timestamp(), Timestamp()
        since.CopyFrom(before[0].time)
        until.FromNanoseconds(max(f.time.ToNanoseconds() for f in before) + 1)
        again = flows(cluster, since=since, until=until,
                      source_pod=[f"{BOOKINFO_NS}/productpage-v1"],
                      destination_pod=[f"{BOOKINFO_NS}/details-v1"])
        assert {f.uuid for f in before} <= {f.uuid for f in again}
    finally:
        follow.close()

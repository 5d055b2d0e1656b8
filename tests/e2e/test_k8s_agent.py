"""The agent in Kubernetes mode against a real API server and controller manager
(Kubernetes 1.20.2, tests/k8s_cluster.py), with real eBPF on network-namespace pods.

There is no kubelet: the test plays it, creating Nodes and Pods and writing pod
status (IPs, Running, Ready) through the status subresource, with the pods' IPs
on network namespaces built by webb.netlab. Two agents (nodes n1 and n2) run as
real processes and serve TCP with mTLS only; the tests talk to them over their
plaintext unix sockets, and a relay reaches them over mTLS through one peer address.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from k8s_cluster import CertAuthority, KubeAPIError, KubeCluster, free_port, kube_cluster
from support import (BIN, NO_BDP, TRAFFIC, RelayProc, ServiceProc, lab_prefix, run_in, start_in,
                     wait_for)
from webb.api.admin import admin_pb2, admin_pb2_grpc
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc
from webb.api.peer import peer_pb2, peer_pb2_grpc
from webb.netlab import NetLab

pytestmark = pytest.mark.root

PREFIX = lab_prefix("wtk")
MANIFESTS = Path(__file__).resolve().parent.parent / "k8s"
NODE_IPS = {"n1": "127.0.0.11", "n2": "127.0.0.12"}  # loopback: the agents listen there
GC_GRACE = 3
# k8s pod name -> (namespace, lab node, host index, labels)
PODS = {
    "web": ("shop", "n1", 10, {"app": "web"}),
    "client": ("shop", "n1", 11, {"app": "client"}),
    "outsider": ("other", "n1", 12, {"app": "outsider"}),
    "db": ("shop", "n2", 10, {"app": "db"}),
}
NAMESPACES = {"shop": {"team": "shop"}, "other": {"team": "other"}}


# -- the cluster, as a kubelet would keep it ----------------------------------------------

def ns_path(kind: str, ns: str = "", name: str = "", group: str = "") -> str:
    base = f"/apis/{group}" if group else "/api/v1"
    return f"{base}{f'/namespaces/{ns}' if ns else ''}/{kind}{f'/{name}' if name else ''}"


def merge_patch(kc: KubeCluster, path: str, body: dict) -> Any:
    return kc.api("PATCH", path, body, content_type="application/merge-patch+json")


def create_node(kc: KubeCluster, name: str, ip: str, external_ip: str) -> None:
    kc.api("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    merge_patch(kc, f"/api/v1/nodes/{name}/status", {"status": {
        "addresses": [{"type": "InternalIP", "address": ip},
                      {"type": "ExternalIP", "address": external_ip},
                      {"type": "Hostname", "address": name}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "played by the test"}]}})


def create_namespace(kc: KubeCluster, name: str, labels: dict[str, str]) -> None:
    kc.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": name, "labels": labels}})
    # Pods need the namespace's default ServiceAccount, made by the controller manager.
    kc.wait(lambda: kc.api("GET", ns_path("serviceaccounts", name, "default")), 30,
            f"ServiceAccount {name}/default")


def pod_spec(node: str = "") -> dict:
    spec = {"containers": [{"name": "main", "image": "example.invalid/none"}],
            "automountServiceAccountToken": False}
    if node:
        spec["nodeName"] = node
    return spec


def set_running(kc: KubeCluster, ns: str, name: str, ip4: str, ip6: str, node_ip: str) -> None:
    """What the kubelet reports once the CNI gave the pod its addresses."""
    merge_patch(kc, ns_path("pods", ns, name) + "/status", {"status": {
        "phase": "Running", "podIP": ip4, "podIPs": [{"ip": ip4}, {"ip": ip6}], "hostIP": node_ip,
        "conditions": [{"type": "Ready", "status": "True"},
                       {"type": "ContainersReady", "status": "True"}]}})


def create_pod(kc: KubeCluster, lab: NetLab, name: str, ns: str, node: str,
               labels: dict[str, str]) -> None:
    kc.api("POST", ns_path("pods", ns), {"apiVersion": "v1", "kind": "Pod",
                                         "metadata": {"name": name, "namespace": ns, "labels": labels},
                                         "spec": pod_spec(node)})
    p = lab.pods[name]
    set_running(kc, ns, name, p.ip4, p.ip6, NODE_IPS[node])


def install_crds(kc: KubeCluster, path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        assert doc["kind"] == "CustomResourceDefinition"
        kc.api("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", doc)


# -- the agents ------------------------------------------------------------------------------

class KubeAgent(ServiceProc):
    """webb-agent --k8s for one node: TCP on the node's loopback address with mTLS,
    checked and queried over its plaintext unix socket."""

    kind = "agent"

    def __init__(self, workdir: Path, node: str, netns: str, port: int, kubeconfig: str,
                 tls: dict[str, str]) -> None:
        self.node, self.ip = node, NODE_IPS[node]
        self.sock = str(workdir / f"k8s-agent-{node}.sock")
        args = [str(BIN / "webb-agent"), "--k8s", "--kubeconfig", kubeconfig,
                "--node-name", node, "--netns", netns, "--listen-address", f"{self.ip}:{port}",
                "--unix-socket", self.sock, "--ring-capacity", "4095", "--log-level", "info",
                "--identity-gc-interval", "1", "--identity-gc-grace", str(GC_GRACE),
                "--tls-cert", tls["cert"], "--tls-key", tls["key"], "--tls-client-ca", tls["ca"]]
        super().__init__(args, port, workdir / f"k8s-agent-{node}.log")

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def start(self, timeout: float = 120.0):  # type: ignore[no-untyped-def]
        if self.proc is None or self.proc.poll() is not None:
            self.spawn()
        self.channel = grpc.insecure_channel(f"unix://{self.sock}", options=NO_BDP)
        health = health_pb2_grpc.HealthStub(self.channel)

        def serving() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: "
                                     f"{self.log.read_text()[-3000:]}")
            r = health.Check(health_pb2.HealthCheckRequest(service="observer.Observer"), timeout=1)
            return r.status == health_pb2.HealthCheckResponse.SERVING
        wait_for(serving, timeout, 0.3, f"agent {self.node} health")
        return self

    @property
    def admin(self) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(self.channel)

    def endpoints(self) -> dict[str, admin_pb2.Endpoint]:
        eps = self.admin.ListEndpoints(admin_pb2.ListEndpointsRequest(), timeout=5).endpoints
        return {e.name: e for e in eps}

    def wait_identity(self, num: int, label: str, timeout: float = 30.0) -> None:
        """Until this agent resolves identity `num` to labels including `label`."""
        def knows() -> bool:
            try:
                got = self.admin.GetIdentity(admin_pb2.GetIdentityRequest(id=num), timeout=5)
            except grpc.RpcError:
                return False
            return label in got.labels
        wait_for(knows, timeout, 0.2, f"identity {num} ({label}) known")

    def wait_endpoints(self, pred, what: str, timeout: float = 30.0) -> dict[str, admin_pb2.Endpoint]:  # type: ignore[no-untyped-def]
        return wait_for(lambda: (lambda eps: eps if pred(eps) else None)(self.endpoints()),
                        timeout, 0.2, f"{self.node}: {what}")

    def flows(self, **req: Any) -> list[fpb.Flow]:
        stub = observer_pb2_grpc.ObserverStub(self.channel)
        return [r.flow for r in stub.GetFlows(opb.GetFlowsRequest(**req), timeout=10)
                if r.HasField("flow")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("k8s-agent")


@pytest.fixture(scope="module")
def kc(workdir):
    with kube_cluster(workdir) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def lab():
    lab = NetLab(PREFIX)
    lab.cleanup()
    try:
        nodes = {"n1": lab.add_node("n1", 1), "n2": lab.add_node("n2", 2)}
        for name, (_, node, idx, _) in PODS.items():
            lab.add_pod(nodes[node], name, idx)
        lab.add_pod(nodes["n1"], "temp", 13)   # created in Kubernetes by a test
        lab.add_pod(nodes["n2"], "api", 11)    # a Deployment's pod, made by the controllers
        yield lab
    finally:
        lab.cleanup()


@pytest.fixture(scope="module")
def tls(workdir) -> dict[str, str]:
    ca = CertAuthority(workdir / "agent-pki", "agents-ca")
    # One wildcard certificate for every agent: the relay verifies each against the name
    # its peer notification carries (<node>.default.webb-grpc.local); the addresses are
    # there for the relay's first dial of the peer service, by address.
    cert, key = ca.issue("agent", "agents.webb.test", dns=("*.default.webb-grpc.local",),
                         ips=tuple(NODE_IPS.values()))
    ccert, ckey = ca.issue("relay", "relay.webb.test", client=True)
    return {"ca": str(ca.cert), "cert": str(cert), "key": str(key),
            "client_cert": str(ccert), "client_key": str(ckey)}


@pytest.fixture(scope="module")
def cluster(kc, lab):
    """Nodes, namespaces, the CiliumNetworkPolicy CRD and the first pods."""
    install_crds(kc, MANIFESTS / "ciliumnetworkpolicies-crd.yaml")
    for node, ip in NODE_IPS.items():
        create_node(kc, node, ip, lab.nodes[node].ip)  # ExternalIP: its underlay address
    for ns, labels in NAMESPACES.items():
        create_namespace(kc, ns, labels)
    for name, (ns, node, _, labels) in PODS.items():
        create_pod(kc, lab, name, ns, node, labels)
    kc.wait(lambda: any(r["name"] == "ciliumnetworkpolicies" for r in
                        kc.api("GET", "/apis/cilium.io/v2")["resources"]), 30, "CNP CRD served")
    return kc


@pytest.fixture(scope="module")
def agents(cluster, lab, workdir, tls):
    port = free_port()
    a = {n: KubeAgent(workdir, n, lab.nodes[n].netns, port, cluster.kubeconfig, tls)
         for n in ("n1", "n2")}
    try:
        for ag in a.values():   # at once: they race for the same identities
            ag.spawn()
        for ag in a.values():
            ag.start()
        yield a
    finally:
        for ag in a.values():
            ag.stop()


def identity_objects(kc: KubeCluster) -> dict[int, dict[str, str]]:
    items = kc.api("GET", "/apis/webb.io/v1/webbidentities")["items"]
    return {int(o["metadata"]["name"]): o["security-labels"] for o in items}


def attached(names: set[str]):  # type: ignore[no-untyped-def]
    return lambda eps: names <= {n for n, e in eps.items() if e.attached}


# -- tests -----------------------------------------------------------------------------------
def test_interface_found_by_route_and_by_the_pod_namespace_peer(lab):
    """Both ways of finding a pod's host-side veth, run where the agent runs them: in
    the node's namespace (a thread of its own, as the agent's netlink thread)."""
    from concurrent.futures import ThreadPoolExecutor

    from pyroute2 import IPRoute

    from webb_agent.datapath.netns import enter_netns
    from webb_agent.k8s.interfaces import host_interface, netns_peer_interface, route_interface

    node = lab.nodes["n1"]
    web, db = lab.pods["web"], lab.pods["db"]

    def in_node() -> tuple[str, str, str, str]:
        enter_netns(node.netns)
        with IPRoute() as ipr:
            return (route_interface(ipr, web.ip4),
                    netns_peer_interface(ipr, web.ip4, node.netns, skip=(node.netns,)),
                    route_interface(ipr, db.ip4),  # another node's pod: via the underlay
                    host_interface(ipr, (db.ip4, db.ip6), node.netns))
    with ThreadPoolExecutor(1) as ex:
        by_route, by_peer, remote_route, remote_any = ex.submit(in_node).result(60)
    assert by_route == web.host_if
    assert by_peer == web.host_if  # as a bridge CNI's pod would be found
    assert remote_route == "" and remote_any == ""  # never another node's pod


def test_identity_allocators_racing_in_a_tiny_range(kc):
    """Runs first, before the agents (whose collectors would take these identities).

    Two allocators (as two agents would) against the API server, in a range of four
    numbers so that label sets collide on purpose: racing for the same labels they
    agree; different labels never share a number; the collector spares numbers on
    the probe path of identities in use."""
    import asyncio

    from webb_agent.k8s.client import KubeClient
    from webb_agent.k8s.identity_crd import CRDIdentityAllocator, IdentityError

    sets = [(f"k8s:app=tiny{i}", "k8s:io.kubernetes.pod.namespace=tiny") for i in range(4)]

    async def run() -> None:
        clients = [await KubeClient.connect(kc.kubeconfig) for _ in range(2)]
        allocs = [CRDIdentityAllocator(low=60000, high=60003) for _ in range(2)]
        tasks = []
        try:
            for al, cl in zip(allocs, clients):
                inf = await al.start(cl)
                tasks.append(asyncio.create_task(inf.run()))
                await inf.synced.wait()
            got = await asyncio.gather(*(al.ensure(s) for s in sets for al in allocs))
            by_set = [got[2 * i:2 * i + 2] for i in range(len(sets))]
            assert all(a.id == b.id for a, b in by_set)            # agreement
            assert len({a.id for a, _ in by_set}) == len(sets)      # no sharing
            assert {a.id for a, _ in by_set} == {60000, 60001, 60002, 60003}
            with pytest.raises(IdentityError):                       # the range is full
                await allocs[0].ensure(("k8s:app=one-too-many",))
            # Only the last set is in use. Whatever lies on its probe path survives.
            allocs[0].in_use = lambda: {tuple(sorted(sets[3]))}
            await allocs[0].collect(grace_s=0)
            deleted = await allocs[0].collect(grace_s=0)
            objs = identity_objects(kc)
            keep = by_set[3][0].id
            assert keep in objs and keep not in deleted
            path = allocs[0]._protected({tuple(sorted(sets[3]))})
            assert keep in path
            assert {n for n in objs if 60000 <= n <= 60003} == path
            # ... and a fresh allocator still finds the set in use at its number.
            fresh = CRDIdentityAllocator(low=60000, high=60003)
            cl = await KubeClient.connect(kc.kubeconfig)
            clients.append(cl)
            inf = await fresh.start(cl)
            tasks.append(asyncio.create_task(inf.run()))
            await inf.synced.wait()
            assert (await fresh.ensure(sets[3])).id == keep
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for cl in clients:
                await cl.close()
    asyncio.run(run())



def test_a_gap_on_the_probe_path_does_not_give_a_second_number(kc):
    """A label set whose identity sits past a free number on its probe path (a number
    collected while another agent probed past it) is found by its label hash, not
    given the free number by an allocator that has not seen it yet."""
    import asyncio

    from webb_agent.k8s.client import KubeClient
    from webb_agent.k8s.identity_crd import (RESOURCE, CRDIdentityAllocator, first_candidate,
                                             probe, to_object)
    from webb_agent.stores.identities import label_key

    low, high = 60100, 60103
    key = label_key(["k8s:app=gapped", "k8s:io.kubernetes.pod.namespace=tiny"])
    start = first_candidate(key, low, high)
    second = probe(start, 1, low, high)
    kc.api("POST", RESOURCE.path(), to_object(second, key))  # the first stays free

    async def run() -> int:
        cl = await KubeClient.connect(kc.kubeconfig)
        try:
            fresh = CRDIdentityAllocator(low=low, high=high)
            await fresh.start(cl)  # its watch never runs: nothing cached
            return (await fresh.ensure(key)).id
        finally:
            await cl.close()
    assert asyncio.run(run()) == second
    assert probe(start, 0, low, high) not in identity_objects(kc)


def test_pods_become_endpoints_with_cluster_wide_identities(agents, lab, cluster):
    a1, a2 = agents["n1"], agents["n2"]
    eps1 = a1.wait_endpoints(attached({"web", "client", "outsider"}), "local pods attached")
    eps2 = a2.wait_endpoints(attached({"db"}), "db attached")
    # Each agent attaches its own node's pods, found by the route to the pod IP.
    assert eps1["web"].interface == lab.pods["web"].host_if
    assert eps2["db"].interface == lab.pods["db"].host_if
    # Each lists its own node's pods only (as cilium endpoint list), with IDs.
    assert set(eps1) == {"web", "client", "outsider"} and set(eps2) == {"db"}
    assert all(e.id for e in [*eps1.values(), *eps2.values()])
    assert set(eps1["web"].ips) == {lab.pods["web"].ip4, lab.pods["web"].ip6}
    assert eps1["outsider"].namespace == "other"
    # Both agents agree on every identity; different label sets, different numbers.
    ids = {**{n: e.identity for n, e in eps1.items()}, "db": eps2["db"].identity}
    for n, num in ids.items():
        for a in (a1, a2):
            a.wait_identity(num, f"k8s:app={PODS[n][3]['app']}")
    assert len(set(ids.values())) == len(PODS) and min(ids.values()) >= 256
    # ... because they are the API server's WebbIdentity objects.
    objs = identity_objects(cluster)
    for n, num in ids.items():
        assert objs[num]["k8s:app"] == PODS[n][3]["app"]
        assert objs[num]["k8s:io.kubernetes.pod.namespace"] == PODS[n][0]


def test_flows_carry_pod_metadata(agents, lab):
    a1, p = agents["n1"], lab.pods
    srv = start_in(lab, p["web"].netns, "tcp-server", "8080", "--count", "1")
    run_in(lab, p["client"].netns, "tcp-client", p["web"].ip4, "8080")
    srv.wait(10)
    flows = wait_for(lambda: [f for f in a1.flows() if f.l4.TCP.destination_port == 8080
                              and f.source.pod_name == "client"], 10, 0.2, "client->web flows")
    f = flows[0]
    assert f.destination.pod_name == "web" and f.destination.namespace == "shop"
    assert "k8s:app=client" in f.source.labels and f.node_name == "n1"
    eps = a1.endpoints()
    assert f.source.identity == eps["client"].identity
    assert f.destination.identity == eps["web"].identity


def test_node_addresses_are_host_and_remote_node(agents, lab):
    """Traffic from the other node's address is reserved:remote-node, from this
    node's own reserved:host: both known from the Node objects."""
    a1, web = agents["n1"], lab.pods["web"]
    lab.exec(lab.nodes["n2"].netns, "ping", "-c", "1", "-W", "2", web.ip4, check=False)
    lab.exec(lab.nodes["n1"].netns, "ping", "-c", "1", "-W", "2", web.ip4, check=False)

    def pings() -> dict[str, int]:
        return {f.IP.source: f.source.identity for f in a1.flows()
                if f.l4.HasField("ICMPv4") and f.IP.destination == web.ip4}
    n2_ip = lab.nodes["n2"].ip
    # Both pings, from n2 and from n1 itself (drained from the perf buffers a moment apart).
    got = wait_for(lambda: (lambda p: p if n2_ip in p and len(p) >= 2 else None)(pings()),
                   10, 0.2, "pings from n2 and from n1 seen at web")
    assert got[lab.nodes["n2"].ip] == 6  # reserved:remote-node
    assert any(ident == 1 for ip, ident in got.items() if ip != lab.nodes["n2"].ip)  # host


def test_services_name_flows(agents, lab, cluster):
    kc, a1, p = cluster, agents["n1"], lab.pods
    svc = kc.api("POST", ns_path("services", "shop"), {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
    cluster_ip = svc["spec"]["clusterIP"]

    # The controller manager's EndpointSlice controller lists web's pod as the backend
    # (1.20 serves discovery.k8s.io/v1beta1 only: the agent falls back to it).
    def slice_ready() -> bool:
        items = kc.api("GET", "/apis/discovery.k8s.io/v1beta1/namespaces/shop/endpointslices",
                       query={"labelSelector": "kubernetes.io/service-name=web"})["items"]
        return any(p["web"].ip4 in ep.get("addresses", []) for s in items
                   for ep in s.get("endpoints") or [])
    kc.wait(slice_ready, 30, "EndpointSlice of web")

    def served_flows() -> list[fpb.Flow]:
        srv = start_in(lab, p["web"].netns, "tcp-server", "8080", "--count", "1")
        run_in(lab, p["client"].netns, "tcp-client", p["web"].ip4, "8080")
        srv.wait(10)
        return [f for f in a1.flows() if f.destination_service.name == "web"
                and f.l4.TCP.destination_port == 8080]
    flows = wait_for(served_flows, 20, 0.5, "flows to the web backend named by its Service")
    assert flows[0].destination_service.namespace == "shop"
    replies = [f for f in a1.flows() if f.source_service.name == "web"
               and f.l4.TCP.source_port == 8080]
    assert replies and all(f.source.pod_name == "web" for f in replies)
    # A connection to the ClusterIP (nothing routes it here: no kube-proxy) is named
    # where the client's packet leaves the pod.
    lab.exec(p["client"].netns, "timeout", "2", "bash", "-c",
             f"echo > /dev/tcp/{cluster_ip}/80", check=False)
    to_vip = wait_for(lambda: [f for f in a1.flows() if f.IP.destination == cluster_ip],
                      10, 0.2, "flow to the ClusterIP")
    assert to_vip[0].destination_service.name == "web"
    assert to_vip[0].destination_service.namespace == "shop"
    assert not any(f.destination_service.name for f in a1.flows()
                   if f.l4.TCP.destination_port == 8080 and f.destination.pod_name != "web")
    # Hubble's service filters see them (`hubble observe --to-service shop/web`).
    chosen = a1.flows(whitelist=[fpb.FlowFilter(destination_service=["shop/web"])])
    assert chosen and all(f.destination_service.name == "web" for f in chosen)
    assert {f.IP.destination for f in chosen} >= {p["web"].ip4, cluster_ip}


def test_pod_add_and_delete_follow_the_api(agents, lab, cluster):
    kc, a1, a2 = cluster, agents["n1"], agents["n2"]
    create_pod(kc, lab, "temp", "shop", "n1", {"app": "temp"})
    eps = a1.wait_endpoints(attached({"temp"}), "temp attached")
    assert eps["temp"].interface == lab.pods["temp"].host_if
    num = eps["temp"].identity
    a2.wait_identity(num, "k8s:app=temp")  # n2 knows the pod's identity, not as its endpoint
    assert "temp" not in a2.endpoints()
    assert num in identity_objects(kc)
    kc.api("DELETE", ns_path("pods", "shop", "temp"), {"gracePeriodSeconds": 0})
    a1.wait_endpoints(lambda e: "temp" not in e, "temp removed")
    # No pod uses its identity any more: garbage-collected after the grace period.
    kc.wait(lambda: num not in identity_objects(kc), 30, f"identity {num} collected")
    # The others stay.
    eps = {**a1.endpoints(), **a2.endpoints()}
    assert {eps[n].identity for n in PODS} <= set(identity_objects(kc))


def test_relabel_changes_identity_everywhere(agents, cluster):
    kc, a1, a2 = cluster, agents["n1"], agents["n2"]
    before = a2.endpoints()["db"]
    merge_patch(kc, ns_path("pods", "shop", "db"), {"metadata": {"labels": {"version": "v2"}}})
    eps2 = a2.wait_endpoints(lambda e: e["db"].identity != before.identity, "db's new identity on n2")
    after = eps2["db"].identity
    a1.wait_identity(after, "k8s:version=v2")  # the same number on n1
    assert eps2["db"].attached and eps2["db"].id == before.id  # the endpoint keeps its ID
    assert "k8s:version=v2" in eps2["db"].identity_labels
    assert identity_objects(kc)[after]["k8s:version"] == "v2"


def test_workload_of_a_deployment_pod(agents, lab, cluster):
    kc, a1 = cluster, agents["n1"]
    kc.api("POST", ns_path("deployments", "shop", group="apps/v1"), {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "api"}},
                 "template": {"metadata": {"labels": {"app": "api"}}, "spec": pod_spec()}}})
    # The Deployment and ReplicaSet controllers make the pod; the test schedules it.
    pods = kc.wait(lambda: kc.api("GET", ns_path("pods", "shop"),
                                  query={"labelSelector": "app=api"})["items"], 30, "api's pod")
    name = pods[0]["metadata"]["name"]
    assert pods[0]["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    kc.api("POST", ns_path("pods", "shop", name) + "/binding", {
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "n2"}})
    p = lab.pods["api"]
    set_running(kc, "shop", name, p.ip4, p.ip6, NODE_IPS["n2"])
    eps = agents["n2"].wait_endpoints(attached({name}), "api attached on n2")
    assert (eps[name].workload.name, eps[name].workload.kind) == ("api", "Deployment")
    # pod-template-hash is no part of the identity: every rollout keeps it.
    assert not any("pod-template-hash" in lbl for lbl in eps[name].identity_labels)
    assert eps[name].interface == p.host_if
    assert name not in a1.endpoints()  # n1 knows the pod, but it is n2's endpoint


def _connect(lab: NetLab, src: str, dst: str, port: int) -> bool:
    p = lab.pods
    srv = start_in(lab, p[dst].netns, "tcp-server", str(port), "--count", "1", "--timeout", "6")
    try:
        res = lab.exec(p[src].netns, sys.executable, TRAFFIC, "tcp-client", p[dst].ip4,
                       str(port), "--timeout", "2", check=False)
        return res.returncode == 0
    finally:
        srv.kill()
        srv.wait(5)


def _policy_loaded(agent: KubeAgent, name: str) -> bool:
    pols = agent.admin.ListPolicies(admin_pb2.ListPoliciesRequest(), timeout=5).policies
    return any(pl.name == name and pl.source.startswith("k8s:") for pl in pols)


def test_network_policy_by_namespace_labels(agents, lab, cluster):
    kc, a1 = cluster, agents["n1"]
    assert _connect(lab, "outsider", "web", 8081)  # nothing enforced yet
    kc.api("POST", ns_path("networkpolicies", "shop", group="networking.k8s.io/v1"), {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "web-from-team-shop", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "shop"}}}]}]}})
    wait_for(lambda: _policy_loaded(a1, "web-from-team-shop"), 20, 0.2, "NetworkPolicy loaded")
    assert _connect(lab, "client", "web", 8081)         # namespace labelled team=shop
    assert not _connect(lab, "outsider", "web", 8081)   # namespace labelled team=other
    drops = wait_for(lambda: [f for f in a1.flows() if f.verdict == fpb.DROPPED
                              and f.source.pod_name == "outsider"
                              and f.destination.pod_name == "web"], 10, 0.2, "policy drop")
    assert drops[0].drop_reason_desc == fpb.POLICY_DENIED
    # Relabelling the namespace is enough to let it in.
    merge_patch(kc, "/api/v1/namespaces/other", {"metadata": {"labels": {"team": "shop"}}})
    wait_for(lambda: _connect(lab, "outsider", "web", 8081), 20, 0.5, "namespace relabel honoured")
    merge_patch(kc, "/api/v1/namespaces/other", {"metadata": {"labels": {"team": "other"}}})
    kc.api("DELETE", ns_path("networkpolicies", "shop", "web-from-team-shop",
                             group="networking.k8s.io/v1"))
    wait_for(lambda: not _policy_loaded(a1, "web-from-team-shop"), 20, 0.2, "NetworkPolicy gone")


def test_cilium_network_policy(agents, lab, cluster):
    kc, a1 = cluster, agents["n1"]
    kc.api("POST", ns_path("ciliumnetworkpolicies", "shop", group="cilium.io/v2"), {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "web-8082-from-client", "namespace": "shop"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                              "toPorts": [{"ports": [{"port": "8082", "protocol": "TCP"}]}]}]}})
    wait_for(lambda: _policy_loaded(a1, "web-8082-from-client"), 20, 0.2, "CNP loaded")
    assert _connect(lab, "client", "web", 8082)
    assert not _connect(lab, "client", "web", 8083)   # port not allowed
    assert not _connect(lab, "outsider", "web", 8082)  # peer not allowed
    allowed = [f for f in a1.flows() if f.destination.pod_name == "web"
               and f.l4.TCP.destination_port == 8082 and f.verdict == fpb.FORWARDED
               and f.ingress_allowed_by]
    assert allowed and allowed[0].ingress_allowed_by[0].name == "web-8082-from-client"
    kc.api("DELETE", ns_path("ciliumnetworkpolicies", "shop", "web-8082-from-client",
                             group="cilium.io/v2"))
    wait_for(lambda: _connect(lab, "client", "web", 8083), 20, 0.5, "CNP deletion honoured")


# Clients verify n1 by its node's TLS name, as a relay does.
N1_NAME = [("grpc.ssl_target_name_override", "n1.default.webb-grpc.local")]


def test_peer_service_lists_every_agent_and_relay_uses_mtls(agents, lab, workdir, tls):
    a1, a2 = agents["n1"], agents["n2"]
    creds = grpc.ssl_channel_credentials(Path(tls["ca"]).read_bytes(),
                                         Path(tls["client_key"]).read_bytes(),
                                         Path(tls["client_cert"]).read_bytes())
    # peer.Peer/Notify over mTLS lists both nodes, from the Node objects.
    with grpc.secure_channel(a1.address, creds, options=N1_NAME) as ch:
        call = peer_pb2_grpc.PeerStub(ch).Notify(peer_pb2.NotifyRequest(), timeout=10)
        seen = {}
        names = {}
        for cn in call:
            seen[cn.name] = cn.address
            names[cn.name] = cn.tls.server_name
            if len(seen) == 2:
                call.cancel()
                break
    assert seen == {"n1": a1.address, "n2": a2.address}
    assert names == {"n1": "n1.default.webb-grpc.local", "n2": "n2.default.webb-grpc.local"}
    # Without a client certificate the TCP port refuses.
    plain = grpc.ssl_channel_credentials(Path(tls["ca"]).read_bytes())
    with grpc.secure_channel(a1.address, plain, options=N1_NAME) as ch:
        with pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    # One address is enough for the relay: it finds n2 through n1's peer service.
    srv = start_in(lab, lab.pods["db"].netns, "tcp-server", "8090", "--count", "1")
    run_in(lab, lab.pods["client"].netns, "tcp-client", lab.pods["db"].ip4, "8090")
    srv.wait(10)
    relay = RelayProc(workdir, "--peer-service", a1.address, "--agent-tls-ca", tls["ca"],
                      "--agent-tls-cert", tls["client_cert"], "--agent-tls-key", tls["client_key"])
    try:
        relay.start()

        def both() -> set[str]:
            fl = [r.flow for r in relay.observer.GetFlows(opb.GetFlowsRequest(number=2000), timeout=15)
                  if r.HasField("flow") and r.flow.l4.TCP.destination_port == 8090]
            nodes = {f.node_name for f in fl}
            return nodes if nodes == {"n1", "n2"} else set()
        assert wait_for(both, 30, 0.5, "flows of both nodes through the relay") == {"n1", "n2"}
    finally:
        relay.stop()


def test_peer_service_follows_node_churn(agents, cluster, tls):
    kc, a1 = cluster, agents["n1"]
    creds = grpc.ssl_channel_credentials(Path(tls["ca"]).read_bytes(),
                                         Path(tls["client_key"]).read_bytes(),
                                         Path(tls["client_cert"]).read_bytes())
    with grpc.secure_channel(a1.address, creds, options=N1_NAME) as ch:
        call = peer_pb2_grpc.PeerStub(ch).Notify(peer_pb2.NotifyRequest(), timeout=30)
        seen: list[tuple[str, int, str]] = []
        try:
            # A node joins (its agent announced by annotation), then leaves.
            kc.api("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": "n3", "annotations": {"webb.io/agent-address": "127.0.0.13:4244"}}})
            for cn in call:
                seen.append((cn.name, cn.type, cn.address))
                if (cn.name, cn.type) == ("n3", peer_pb2.PEER_ADDED):
                    kc.api("DELETE", "/api/v1/nodes/n3")
                if (cn.name, cn.type) == ("n3", peer_pb2.PEER_DELETED):
                    break
        finally:
            call.cancel()
            try:
                kc.api("DELETE", "/api/v1/nodes/n3")
            except KubeAPIError:
                pass  # deleted above
    assert ("n3", peer_pb2.PEER_ADDED, "127.0.0.13:4244") in seen
    assert {n for n, typ, _ in seen if typ == peer_pb2.PEER_ADDED} >= {"n1", "n2", "n3"}


def test_agent_restart_keeps_identities(agents, cluster):
    kc, a2 = cluster, agents["n2"]
    listed = a2.endpoints()
    before = {n: e.identity for n, e in listed.items()}
    ids_before = {n: e.id for n, e in listed.items()}

    def uids() -> dict[str, str]:
        items = kc.api("GET", "/apis/webb.io/v1/webbidentities")["items"]
        return {o["metadata"]["name"]: o["metadata"]["uid"] for o in items}
    uids_before = {str(num): uid for num, uid in uids().items() if int(num) in before.values()}
    assert len(uids_before) == len(set(before.values()))
    a2.stop()
    a2.start()
    after = a2.wait_endpoints(lambda e: set(before) <= set(e), "endpoints back")
    assert {n: after[n].identity for n in before} == before
    assert {n: after[n].id for n in before} == ids_before  # endpoint IDs survive a restart
    now = uids()
    assert {num: now.get(num) for num in uids_before} == uids_before  # the same objects
    agents["n1"].wait_identity(before["db"], "k8s:app=db")



def test_agent_without_a_usable_kubeconfig_exits_with_a_clear_error(workdir):
    res = subprocess.run([str(BIN / "webb-agent"), "--k8s", "--kubeconfig",
                          str(workdir / "missing.kubeconfig"), "--listen-address", "",
                          "--unix-socket", ""], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "no usable Kubernetes configuration" in res.stderr
    assert "missing.kubeconfig" in res.stderr and "Traceback" not in res.stderr

"""Kubernetes objects into the agent's terms: pods, nodes, Services, policies, identities.

(The same code runs against a real API server in tests/e2e/test_k8s_agent.py.)"""
from __future__ import annotations

import socket

from webb.api.flow import flow_pb2 as fpb
from webb_agent.datapath.event import FlowEvent
from webb_agent.k8s.identity_crd import (FIRST_ALLOCATED, LAST_ALLOCATED, first_candidate,
                                         from_object, probe, to_object)
from webb_agent.stores.identities import label_key
from webb_agent.k8s.nodes import node_info
from webb_agent.k8s.pods import identity_labels, owner_workload, pod_endpoint
from webb_agent.k8s.policies import policy_document, source_of
from webb_agent.k8s.services import ServiceMap
from webb_agent.policy.model import parse_policy


def pod(name="web-7d4b9c-x2x", ns="shop", labels=None, ips=("10.244.1.5",), node="n1",
        owner=None, phase="Running", host_network=False):
    meta = {"name": name, "namespace": ns, "uid": "u1",
            "labels": labels if labels is not None else {"app": "web", "pod-template-hash": "7d4b9c"}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner[1], "name": owner[0], "controller": True,
                                    "apiVersion": "apps/v1", "uid": "o1"}]
    return {"metadata": meta,
            "spec": {"nodeName": node, "serviceAccountName": "web", "hostNetwork": host_network},
            "status": {"phase": phase, "podIP": ips[0] if ips else "",
                       "podIPs": [{"ip": i} for i in ips]}}


def test_pod_endpoint_fields_and_identity_labels():
    ep = pod_endpoint(pod(ips=("10.244.1.5", "fd00::5")), "c1", "lxc1")
    assert ep.name == "web-7d4b9c-x2x" and ep.namespace == "shop" and ep.node == "n1"
    assert ep.ips == ("10.244.1.5", "fd00::5") and ep.interface == "lxc1"
    # pod-template-hash changes with every rollout: never part of the identity
    assert ep.labels == (("app", "web"),)
    assert "k8s:io.cilium.k8s.policy.serviceaccount=web" in ep.security_labels()
    assert "k8s:io.cilium.k8s.policy.cluster=c1" in ep.security_labels()
    assert identity_labels({"statefulset.kubernetes.io/pod-name": "db-0", "app.kubernetes.io/name": "db",
                            "controller-revision-hash": "x", "tier": "db"}) == (
        ("app.kubernetes.io/name", "db"), ("tier", "db"))


def test_pods_that_are_no_endpoints():
    assert pod_endpoint(pod(ips=()), "default") is None                # no IP yet
    assert pod_endpoint(pod(host_network=True), "default") is None     # the node's address
    assert pod_endpoint(pod(phase="Succeeded"), "default") is None     # finished
    p = pod()
    p["status"]["podIPs"] = [{"ip": "not-an-ip"}]
    p["status"]["podIP"] = ""
    assert pod_endpoint(p, "default") is None


def test_workloads_from_owners():
    assert owner_workload(pod(owner=("web-7d4b9c", "ReplicaSet"))) == ("web", "Deployment")
    # a ReplicaSet whose owner was read from the API wins over the name heuristic
    assert owner_workload(pod(owner=("web-7d4b9c", "ReplicaSet")),
                          {("shop", "web-7d4b9c"): ("web-7d4b9c", "ReplicaSet")}) == ("web-7d4b9c", "ReplicaSet")
    assert owner_workload(pod(owner=("plain-rs", "ReplicaSet"))) == ("plain-rs", "ReplicaSet")
    assert owner_workload(pod(owner=("db", "StatefulSet"))) == ("db", "StatefulSet")
    assert owner_workload(pod(owner=("agent", "DaemonSet"))) == ("agent", "DaemonSet")
    assert owner_workload(pod(owner=("backup-1", "Job"))) == ("backup-1", "Job")
    assert owner_workload(pod()) == ("", "")


def test_node_info_addresses_and_agent_address():
    node = {"metadata": {"name": "n2"}, "status": {"addresses": [
        {"type": "Hostname", "address": "n2"}, {"type": "ExternalIP", "address": "192.0.2.7"},
        {"type": "InternalIP", "address": "10.0.0.2"}, {"type": "InternalIP", "address": "bogus"}]}}
    info = node_info(node, 4244)
    assert info.ips == ("10.0.0.2", "192.0.2.7") and info.agent_address == "10.0.0.2:4244"
    node["status"]["addresses"] = [{"type": "InternalIP", "address": "fd00::2"}]
    assert node_info(node, 4244).agent_address == "[fd00::2]:4244"
    node["metadata"]["annotations"] = {"webb.io/agent-address": "agent.n2:9000"}
    assert node_info(node, 4244).agent_address == "agent.n2:9000"


def _ev(src, sport, dst, dport, proto=6):
    pk = lambda ip: socket.inet_aton(ip).ljust(16, b"\0")  # noqa: E731
    return FlowEvent(0, 1, 60, pk(src), pk(dst), b"\0" * 6, b"\0" * 6, sport, dport, 3, 60,
                     0, 0, 4, proto, 2, 0, 0, 0, 0)


def test_service_map_frontends_backends_and_flow_fields():
    sm = ServiceMap()
    sm.set_service({"metadata": {"name": "web", "namespace": "shop"},
                    "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                             "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}})
    sm.set_slice({"metadata": {"name": "web-abc", "namespace": "shop",
                               "labels": {"kubernetes.io/service-name": "web"}},
                  "ports": [{"port": 8080, "protocol": "TCP"}],
                  "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": True}},
                                {"addresses": ["10.244.1.6"], "conditions": {"ready": False}}]})
    assert sm.lookup("10.96.0.10", 80) == ("web", "shop")
    assert sm.lookup("10.244.1.5", 8080) == ("web", "shop")
    assert sm.lookup("10.244.1.6", 8080) is None       # not ready: no backend
    assert sm.lookup("10.244.1.5", 8080, 17) is None   # other protocol
    # client -> ClusterIP: destination_service; the backend's reply: source_service
    f = fpb.Flow.FromString(sm.fields(_ev("10.244.2.9", 40000, "10.96.0.10", 80)))
    assert (f.destination_service.name, f.destination_service.namespace) == ("web", "shop")
    assert not f.HasField("source_service")
    f = fpb.Flow.FromString(sm.fields(_ev("10.244.1.5", 8080, "10.244.2.9", 40000)))
    assert f.source_service.name == "web" and not f.HasField("destination_service")
    sm.delete_service({"metadata": {"name": "web", "namespace": "shop"}})
    sm.delete_slice({"metadata": {"name": "web-abc", "namespace": "shop"}})
    assert sm.fields(_ev("10.244.2.9", 40000, "10.96.0.10", 80)) == b""


def test_identity_object_round_trip_keeps_empty_label_values():
    """app: "" is the label "k8s:app=", not "k8s:app": every agent must read the
    object back as the same label set, or each would make its own identity."""
    key = label_key(["k8s:app=", "k8s:io.kubernetes.pod.namespace=shop", "reserved:host"])
    assert from_object(to_object(300, key)) == (300, key)


def test_identity_objects_and_probe_order():
    key = ("k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop", "reserved:host")
    start = first_candidate(key)
    assert FIRST_ALLOCATED <= start <= LAST_ALLOCATED
    assert first_candidate(key) == start  # the same on every node
    assert probe(LAST_ALLOCATED, 1) == FIRST_ALLOCATED  # wraps inside the range
    obj = to_object(start, key)
    assert obj["metadata"]["name"] == str(start)
    assert obj["security-labels"]["k8s:app"] == "web" and obj["security-labels"]["reserved:host"] == ""
    assert from_object(obj) == (start, key)
    assert from_object({"metadata": {"name": "x"}, "security-labels": {"a": "b"}}) is None
    assert from_object({"metadata": {"name": "300"}}) is None


def test_policy_objects_from_the_api_parse_as_documents():
    obj = {"metadata": {"name": "deny-all", "namespace": "shop", "uid": "u-1",
                        "managedFields": [{"manager": "kubectl"}], "resourceVersion": "5"},
           "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    doc = policy_document("NetworkPolicy", "networking.k8s.io/v1", obj)
    assert "managedFields" not in doc["metadata"]
    pol = parse_policy(doc)
    assert pol.kind == "NetworkPolicy" and pol.namespace == "shop"
    assert "k8s:io.cilium.k8s.policy.uid=u-1" in pol.labels()
    assert source_of("NetworkPolicy", obj) == "k8s:NetworkPolicy/shop/deny-all"
    assert source_of("CiliumClusterwideNetworkPolicy", {"metadata": {"name": "x"}}) == \
        "k8s:CiliumClusterwideNetworkPolicy/x"


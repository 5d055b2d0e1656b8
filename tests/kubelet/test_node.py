"""The one-node cluster itself (tests/k8s_node.py): with each CNI, two pods get
addresses from the pod subnet, each has a host-side interface in the node, they reach
each other over HTTP, a ClusterIP Service reaches one through kube-proxy's rules, and
after the cluster is gone nothing of it is left on the host.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest

from k8s_node import KUBELET_SYSCTLS, kube_node, tag

pytestmark = [pytest.mark.root, pytest.mark.kubelet]


def busybox_pod(name: str, command: list[str]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "main", "image": "webb.test/busybox:1",
                                     "imagePullPolicy": "Never", "command": command}]}}


def host_state() -> dict:
    """What the node could leave behind on the host."""
    t = tag()
    cgroups = sorted(str(p) for p in Path("/sys/fs/cgroup").glob(f"*/webb-{t}-*"))
    return {
        "netns": f"{t}-knode" in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                text=True).stdout,
        "link": subprocess.run(["ip", "link", "show", f"{t}-knh"], capture_output=True).returncode == 0,
        "routes": [l for l in subprocess.run(["ip", "-4", "route", "show", "table", "all"],
                                             capture_output=True, text=True).stdout.splitlines()
                   if f"dev {t}-knh" in l],
        "cgroups": cgroups,
        "var_lib_kubelet": os.path.lexists("/var/lib/kubelet"),
        "var_log_pods": os.path.lexists("/var/log/pods"),
        "var_log_containers": os.path.lexists("/var/log/containers"),
        "run_containerd": os.path.lexists("/run/containerd"),
        "sysctls": {n: Path("/proc/sys", n).read_text() for n in KUBELET_SYSCTLS},
    }


@pytest.mark.timeout(600)
@pytest.mark.parametrize("cni", ["bridge", "ptp"])
def test_pods_get_addresses_and_reach_each_other(tmp_path, cni):
    before = host_state()
    with kube_node(tmp_path, cni=cni) as node:
        node.apply([
            busybox_pod("server", ["sh", "-c", "mkdir -p /www && echo hello-from-server > "
                                   "/www/index.html && exec httpd -f -p 8080 -h /www"]),
            busybox_pod("client", ["sleep", "3600"]),
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "server", "namespace": "default"},
             "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8080}]}},
        ])
        server = node.wait_pod_ready("default", "server")
        client = node.wait_pod_ready("default", "client")
        ips = [server["status"]["podIP"], client["status"]["podIP"]]
        for ip in ips:
            assert ipaddress.ip_address(ip) in ipaddress.ip_network(node.pod_cidr), ips
        assert ips[0] != ips[1]

        # each pod has a host-side interface in the node: the route (ptp) or the
        # bridge's ports (bridge) name it
        links = [l for l in json.loads(node.run(["ip", "-j", "link", "show", "type", "veth"]).stdout)
                 if not l["ifname"].startswith("svc0")]
        assert len(links) >= 2, links
        if cni == "bridge":
            ports = json.loads(node.run(["ip", "-j", "link", "show", "master", "cni0"]).stdout)
            assert len(ports) >= 2, ports
        else:
            for ip in ips:
                route = json.loads(node.run(["ip", "-j", "route", "get", ip]).stdout)[0]
                assert route["dev"] in {l["ifname"] for l in links}, route

        def fetch(ip: str, port: int) -> str:
            # busybox-static's wget crashes (bookworm); nc speaks HTTP/1.0 well enough
            return node.kubectl("exec", "client", "--", "sh", "-c",
                                f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} {port}",
                                timeout=30)
        assert fetch(ips[0], 8080).rstrip().endswith("hello-from-server")
        # through the ClusterIP: kube-proxy's DNAT in the node's namespace
        svc = node.kc.api("GET", "/api/v1/namespaces/default/services/server")
        node.wait(lambda: fetch(svc["spec"]["clusterIP"], 80).rstrip().endswith("hello-from-server"),
                  60, "the Service's ClusterIP answering")

        # kube-proxy's chains are in the node's namespace, not the host's
        host_nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        assert "KUBE-SERVICES" not in host_nat
        # the kubelet's host sysctls were put back once the node was Ready
        assert {n: Path("/proc/sys", n).read_text() for n in KUBELET_SYSCTLS} == before["sysctls"]
        print(f"bring-up ({cni}):", {k: round(v, 1) for k, v in node.timings.items()})
    assert host_state() == before

"""Small clusters of network namespaces on one host, for the demo and the tests.

A node is a network namespace that routes for its pods (forwarding is switched on
inside that namespace only); a pod is a namespace with one veth pair whose
host-side end lives in its node's namespace. Pods get /32 (/128) addresses and a
default route to a link-local gateway on the host-side veth, the way Calico wires
pods. Nodes share an underlay bridge in a namespace of its own, and
"world" is one more namespace on that bridge: nothing is routed or NATed out of
the host's real interfaces.

Every object is named with the lab's prefix so that cleanup() (and a later run's
cleanup of a crashed one) finds all of them.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
from dataclasses import dataclass, field
from typing import Sequence

log = logging.getLogger(__name__)

GATEWAY4 = "169.254.1.1"
GATEWAY6 = "fe80::1"


def sh(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(args), capture_output=True, text=True, input=input, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {res.stderr.strip() or res.stdout.strip()}")
    return res


def underlay6(ip4: str) -> str:
    """The IPv6 underlay address that goes with an IPv4 one: fd00:99::<last octet>."""
    return f"fd00:99::{ip4.rsplit('.', 1)[1]}"


def list_netns() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@dataclass
class Node:
    name: str
    netns: str
    ip: str  # underlay address
    pod_cidr4: str
    pod_cidr6: str
    pods: list["Pod"] = field(default_factory=list)


@dataclass
class Pod:
    name: str
    netns: str
    node: Node
    ip4: str
    ip6: str
    host_if: str  # host-side veth, in the node's namespace
    mac: str = ""


class NetLab:
    def __init__(self, prefix: str, underlay: str = "10.99.0.0/24") -> None:
        if not prefix.isalnum() or len(prefix) > 6:
            raise ValueError("prefix: up to 6 letters or digits")
        self.prefix = prefix
        self.underlay = ipaddress.ip_network(underlay)
        self.net_ns = f"{prefix}-net"
        self.nodes: dict[str, Node] = {}
        self.pods: dict[str, Pod] = {}
        self._ifcount = 0
        self._hosts = iter(self.underlay.hosts())
        self.world_ns = ""
        self.world_ip = ""

    # -- naming -----------------------------------------------------------------
    def _ifname(self, tag: str) -> str:
        self._ifcount += 1
        name = f"{self.prefix}{tag}{self._ifcount}"
        assert len(name) <= 15, name
        return name

    # -- building ---------------------------------------------------------------
    @staticmethod
    def _new_netns(name: str) -> None:
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        # Without duplicate address detection, a new interface's link-local address
        # is usable at once; otherwise the first IPv6 packets wait a second for it.
        for key in ("net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0"):
            sh("ip", "netns", "exec", name, "sysctl", "-qw", key)

    def _ensure_underlay(self) -> None:
        if self.net_ns in list_netns():
            return
        self._new_netns(self.net_ns)
        sh("ip", "-n", self.net_ns, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        sh("ip", "-n", self.net_ns, "link", "set", "br0", "up")

    def _plug_underlay(self, netns: str, ifname: str = "eth0") -> str:
        """Connects a namespace to the underlay bridge; returns its IPv4 address.

        It also gets fd00:99::<n>/64 (see underlay6) so pod IPv6 routes across nodes.
        """
        self._ensure_underlay()
        ip = str(next(self._hosts))
        tmp = self._ifname("u")
        sh("ip", "link", "add", tmp, "netns", self.net_ns, "type", "veth",
           "peer", "name", ifname, "netns", netns)
        sh("ip", "-n", self.net_ns, "link", "set", tmp, "master", "br0", "up")
        sh("ip", "-n", netns, "addr", "add", f"{ip}/{self.underlay.prefixlen}", "dev", ifname)
        sh("ip", "-n", netns, "addr", "add", f"{underlay6(ip)}/64", "dev", ifname, "nodad")
        sh("ip", "-n", netns, "link", "set", ifname, "up")
        return ip

    def add_node(self, name: str, index: int) -> Node:
        """Node `index` (1..250) gets pods in 10.244.<index>.0/24 and fd00:244:<index>::/64."""
        netns = f"{self.prefix}-{name}"
        self._new_netns(netns)
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            sh("ip", "netns", "exec", netns, "sysctl", "-qw", key)
        ip = self._plug_underlay(netns)
        node = Node(name, netns, ip, f"10.244.{index}.0/24", f"fd00:244:{index}::/64")
        for other in self.nodes.values():
            sh("ip", "-n", netns, "route", "add", other.pod_cidr4, "via", other.ip)
            sh("ip", "-n", other.netns, "route", "add", node.pod_cidr4, "via", node.ip)
            sh("ip", "-n", netns, "-6", "route", "add", other.pod_cidr6, "via", underlay6(other.ip))
            sh("ip", "-n", other.netns, "-6", "route", "add", node.pod_cidr6, "via", underlay6(node.ip))
        self.nodes[name] = node
        return node

    def add_world(self) -> tuple[str, str]:
        """An outside host on the underlay, reachable from pods through their node."""
        self.world_ns = f"{self.prefix}-world"
        self._new_netns(self.world_ns)
        self.world_ip = self._plug_underlay(self.world_ns)
        for node in self.nodes.values():
            sh("ip", "-n", self.world_ns, "route", "add", node.pod_cidr4, "via", node.ip)
            sh("ip", "-n", self.world_ns, "-6", "route", "add", node.pod_cidr6, "via", underlay6(node.ip))
        return self.world_ns, self.world_ip

    def add_pod(self, node: Node, name: str, host_index: int) -> Pod:
        netns = f"{self.prefix}-{name}"
        ip4 = str(ipaddress.ip_network(node.pod_cidr4)[host_index])
        ip6 = str(ipaddress.ip_network(node.pod_cidr6)[host_index])
        host_if = self._ifname("v")
        self._new_netns(netns)
        sh("ip", "link", "add", host_if, "netns", node.netns, "type", "veth",
           "peer", "name", "eth0", "netns", netns)
        n, p = node.netns, netns
        sh("ip", "-n", n, "link", "set", host_if, "up")
        sh("ip", "-n", n, "addr", "add", f"{GATEWAY6}/64", "dev", host_if, "nodad")
        sh("ip", "-n", n, "route", "add", f"{ip4}/32", "dev", host_if)
        sh("ip", "-n", p, "link", "set", "eth0", "up")
        sh("ip", "-n", p, "addr", "add", f"{ip4}/32", "dev", "eth0")
        sh("ip", "-n", p, "addr", "add", f"{ip6}/128", "dev", "eth0", "nodad")
        sh("ip", "-n", p, "route", "add", GATEWAY4, "dev", "eth0", "scope", "link")
        sh("ip", "-n", p, "route", "add", "default", "via", GATEWAY4, "dev", "eth0")
        # The gateway's address exists nowhere: a permanent neighbour entry sends
        # everything to the node's end of the veth.
        host_mac = sh("ip", "-n", n, "-o", "link", "show", host_if).stdout.split("link/ether ")[1].split()[0]
        sh("ip", "-n", p, "neigh", "replace", GATEWAY4, "lladdr", host_mac, "dev", "eth0",
           "nud", "permanent")
        sh("ip", "-n", p, "-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0")
        sh("ip", "-n", n, "-6", "route", "add", f"{ip6}/128", "dev", host_if)
        mac = sh("ip", "-n", p, "-o", "link", "show", "eth0").stdout.split("link/ether ")[1].split()[0]
        pod = Pod(name, netns, node, ip4, ip6, host_if, mac)
        node.pods.append(pod)
        self.pods[name] = pod
        return pod

    def remove_pod(self, name: str) -> None:
        pod = self.pods.pop(name)
        pod.node.pods.remove(pod)
        sh("ip", "netns", "del", pod.netns, check=False)  # takes the veth pair with it

    # -- using ------------------------------------------------------------------
    def exec(self, netns: str, *cmd: str, timeout: float = 30, check: bool = True,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True,
                             text=True, timeout=timeout, input=input)
        if check and res.returncode != 0:
            raise RuntimeError(f"{netns}: {' '.join(cmd)}: {res.stderr.strip()}")
        return res

    def popen(self, netns: str, *cmd: str, **kw) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        return subprocess.Popen(["ip", "netns", "exec", netns, *cmd], **kw)

    # -- tearing down -----------------------------------------------------------
    def cleanup(self) -> None:
        cleanup_prefix(self.prefix)
        self.nodes.clear()
        self.pods.clear()


def cleanup_prefix(prefix: str, extra: Sequence[str] = ()) -> None:
    """Deletes every namespace a lab with this prefix made (also after a crash).

    Processes still inside them are killed first, since a namespace with a
    process in it outlives `ip netns del`.
    """
    for ns in list_netns():
        if ns.startswith(f"{prefix}-") or ns in extra:
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)

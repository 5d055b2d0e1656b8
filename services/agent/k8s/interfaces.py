"""Finding a local pod's host-side interface without asking the CNI.

Two ways, tried in order (both run on the netlink thread, in the node's namespace):

1. The route to the pod's IP: CNIs that route (Calico, Cilium, kindnet, the demo's
   netlab, ...) install a host route per pod through its veth; if the route has no
   gateway and leaves through a veth, that veth is the pod's.
2. The veth peer of the pod's network namespace: bridge CNIs (flannel, the bridge
   plugin) route the pod subnet to a bridge instead. Container runtimes name pod
   namespaces under /run/netns; the namespace holding the pod's IP has an
   interface whose peer (IFLA_LINK) is the host-side veth in the node's namespace.
   Interface indexes are per namespace and repeat across them, so the peer must
   also live in the node's namespace: the pod side's IFLA_LINK_NETNSID must be the
   id the pod's namespace gives the node's.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from ..datapath.netns import enter_netns, netns_path

log = logging.getLogger(__name__)

NETNS_DIR = "/run/netns"
SCAN_BUDGET_S = 2.0


def _kind(link: Any) -> str:
    info = link.get_attr("IFLA_LINKINFO")
    return str(info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""


def route_interface(ipr: Any, ip: str) -> str:
    """The veth the node routes `ip` through directly, or ''."""
    try:
        routes = ipr.route("get", dst=ip)
    except Exception:  # no route at all (NetlinkError)
        return ""
    for r in routes:
        if r.get_attr("RTA_GATEWAY") or r.get("type", 1) != 1:  # via a gateway, or local
            continue
        oif = r.get_attr("RTA_OIF")
        if not oif:
            continue
        links = ipr.get_links(oif)
        if links and _kind(links[0]) == "veth":
            return str(links[0].get_attr("IFLA_IFNAME"))
    return ""


def node_netns_path(node_netns: str) -> str:
    """The node's namespace as a path: --netns, else the agent's own (its main
    thread's: the netlink thread may have moved)."""
    return netns_path(node_netns) if node_netns else f"/proc/{os.getpid()}/ns/net"


def _pod_side(path: str, ip: str, node_ns: str, out: list[tuple[int, int]]) -> None:
    """In a thread of its own: (pod-side ifindex, peer ifindex) of the veth holding
    `ip` in the namespace at `path`, if its peer is in the namespace at node_ns."""
    try:
        enter_netns(path)
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for a in ipr.get_addr(address=ip):
                idx = a["index"]
                links = ipr.get_links(idx)  # (also makes the kernel assign peer nsids)
                if not links or _kind(links[0]) != "veth":
                    continue
                peer = links[0].get_attr("IFLA_LINK")
                peer_nsid = links[0].get_attr("IFLA_LINK_NETNSID")
                if not peer or peer_nsid is None:
                    continue  # both ends in this namespace: no pod/node pair
                fd = os.open(node_ns, os.O_RDONLY)
                try:
                    node_nsid = (ipr.get_netnsid(fd=fd) or {}).get("nsid")
                finally:
                    os.close(fd)
                if node_nsid == peer_nsid:
                    out.append((idx, int(peer)))
    except Exception as e:  # a namespace that vanished meanwhile, or no permission
        log.debug("netns %s: %s", path, e)


def netns_peer_interface(ipr: Any, ip: str, node_netns: str = "", netns_dir: str = NETNS_DIR,
                         skip: tuple[str, ...] = ()) -> str:
    """The host-side veth (in `ipr`'s namespace) of the namespace under netns_dir that
    holds `ip`, or ''. Each candidate namespace is visited by a short-lived thread,
    so the calling thread stays where it is."""
    try:
        names = sorted(os.listdir(netns_dir))
    except OSError:
        return ""
    node_ns = node_netns_path(node_netns)
    # The whole scan is bounded in time too: it holds up the pods watch and the netlink
    # thread; a pod not found now is retried with back-off.
    deadline = time.monotonic() + SCAN_BUDGET_S
    for name in names[:4096]:  # bounded: more pods than a node can hold is not a node
        path = os.path.join(netns_dir, name)
        if name in skip:
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.debug("netns scan for %s: out of time; retried later", ip)
            return ""
        found: list[tuple[int, int]] = []
        t = threading.Thread(target=_pod_side, args=(path, ip, node_ns, found), daemon=True)
        t.start()
        t.join(min(5.0, remaining))
        for pod_idx, peer_idx in found:
            links = ipr.get_links(peer_idx) if peer_idx else []
            # The host side must point back at the pod side; an index alone could
            # belong to any interface of this namespace.
            if links and _kind(links[0]) == "veth" and links[0].get_attr("IFLA_LINK") == pod_idx:
                return str(links[0].get_attr("IFLA_IFNAME"))
    return ""


def host_interface(ipr: Any, ips: tuple[str, ...], node_netns: str = "") -> str:
    """The host-side interface of a local pod with these IPs, or '' if none is found
    (yet: the CNI may still be wiring it)."""
    for ip in ips:
        ifname = route_interface(ipr, ip)
        if ifname:
            return ifname
    skip = (os.path.basename(node_netns),) if node_netns else ()
    for ip in ips:
        ifname = netns_peer_interface(ipr, ip, node_netns, skip=skip)
        if ifname:
            return ifname
    return ""

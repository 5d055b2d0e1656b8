"""Nodes: their addresses (this node's are reserved:host, the others' remote-node)
and the address of the agent on each (what peer.Peer/Notify announces)."""
from __future__ import annotations

import ipaddress
from typing import Any

from ..stores.endpoints import NodeInfo

# The address kinds a node's agent and its traffic can come from, preferred first.
ADDRESS_TYPES = ("InternalIP", "ExternalIP")
AGENT_ADDRESS_ANNOTATION = "webb.io/agent-address"  # overrides InternalIP:port


def node_ips(node: dict[str, Any]) -> tuple[str, ...]:
    out: list[str] = []
    addrs = [a for a in (node.get("status") or {}).get("addresses") or [] if isinstance(a, dict)]
    for kind in ADDRESS_TYPES:
        for a in addrs:
            if a.get("type") != kind:
                continue
            try:
                ip = str(ipaddress.ip_address(str(a.get("address", ""))))
            except ValueError:
                continue
            if ip not in out:
                out.append(ip)
    return tuple(out)


def join_host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def node_info(node: dict[str, Any], agent_port: int) -> NodeInfo | None:
    meta = node.get("metadata") or {}
    name = meta.get("name")
    if not name:
        return None
    ips = node_ips(node)
    addr = str((meta.get("annotations") or {}).get(AGENT_ADDRESS_ANNOTATION) or "")
    if not addr and ips and agent_port:
        addr = join_host_port(ips[0], agent_port)
    return NodeInfo(str(name), ips, addr)

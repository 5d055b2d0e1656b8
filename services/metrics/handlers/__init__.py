"""One module per metric family (Hubble's plugin names), all behind api.Handler."""
from __future__ import annotations

from ..api import Handler
from .dns import DNSHandler
from .drop import DropHandler
from .flow import FlowHandler
from .flows_to_world import FlowsToWorldHandler
from .http import HTTPHandler, HTTPV2Handler
from .icmp import ICMPHandler
from .policy import PolicyHandler
from .port_distribution import PortDistributionHandler
from .tcp import TCPHandler

PLUGINS: dict[str, type[Handler]] = {h.name: h for h in (
    FlowHandler, DropHandler, TCPHandler, ICMPHandler, PortDistributionHandler,
    FlowsToWorldHandler, DNSHandler, HTTPHandler, HTTPV2Handler, PolicyHandler)}

__all__ = ["PLUGINS"]

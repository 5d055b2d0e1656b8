"""port-distribution: hubble_port_distribution_total{protocol,port} -- destination ports
of forwarded requests (replies, and flows that may be replies, are skipped)."""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb

from ..api import NAMESPACE, Handler
from ..series import SeriesStore

_FORWARDED = (fpb.FORWARDED, fpb.REDIRECTED)


class PortDistributionHandler(Handler):
    name = "port-distribution"

    def init(self, store: SeriesStore) -> None:
        self.ports = store.counter(f"{NAMESPACE}_port_distribution_total",
                                   "Numbers of packets distributed by destination port",
                                   ["protocol", "port", *self.context.label_names()])
        self.vecs.append(self.ports)

    def process(self, flow: fpb.Flow) -> None:
        # Unknown reply state counts as a reply: its destination port may be ephemeral.
        if (flow.verdict not in _FORWARDED or not flow.HasField("l4")
                or not flow.HasField("is_reply") or flow.is_reply.value):
            return
        l4 = flow.l4
        which = l4.WhichOneof("protocol")
        if which == "TCP":
            key = ("TCP", str(l4.TCP.destination_port))
        elif which == "UDP":
            key = ("UDP", str(l4.UDP.destination_port))
        elif which == "SCTP":
            key = ("SCTP", str(l4.SCTP.destination_port))
        elif which in ("ICMPv4", "ICMPv6"):
            key = (which, "0")
        else:
            return
        ctx, bound = self.context.values(flow)
        self.ports.inc((*key, *ctx), bound)

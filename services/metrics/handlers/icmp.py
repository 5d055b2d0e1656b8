"""icmp: hubble_icmp_total{family,type} -- ICMP messages by family and type(code)."""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb

from webb.icmp import icmp_type_code

from ..api import NAMESPACE, Handler
from ..series import SeriesStore

class ICMPHandler(Handler):
    name = "icmp"

    def init(self, store: SeriesStore) -> None:
        self.icmp = store.counter(f"{NAMESPACE}_icmp_total", "Number of ICMP messages",
                                  ["family", "type", *self.context.label_names()])
        self.vecs.append(self.icmp)

    def process(self, flow: fpb.Flow) -> None:
        which = flow.l4.WhichOneof("protocol") if flow.HasField("l4") else None
        if which == "ICMPv4":
            m = flow.l4.ICMPv4
            family, name = "IPv4", icmp_type_code(m.type, m.code)
        elif which == "ICMPv6":
            # Hubble labelled these IPv4 until cilium/cilium#41427 fixed it.
            m = flow.l4.ICMPv6
            family, name = "IPv6", icmp_type_code(m.type, m.code, v6=True)
        else:
            return
        ctx, bound = self.context.values(flow)
        self.icmp.inc((family, name, *ctx), bound)

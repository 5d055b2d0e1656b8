"""tcp: hubble_tcp_flags_total{flag,family} -- SYN, SYN-ACK, FIN, RST of forwarded flows."""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb

from ..api import NAMESPACE, Handler
from ..series import SeriesStore

_FORWARDED = (fpb.FORWARDED, fpb.REDIRECTED)


class TCPHandler(Handler):
    name = "tcp"

    def init(self, store: SeriesStore) -> None:
        self.flags = store.counter(f"{NAMESPACE}_tcp_flags_total", "TCP flag occurrences",
                                   ["flag", "family", *self.context.label_names()])
        self.vecs.append(self.flags)

    def process(self, flow: fpb.Flow) -> None:
        if flow.verdict not in _FORWARDED or not flow.HasField("IP"):
            return
        l4 = flow.l4
        if l4.WhichOneof("protocol") != "TCP" or not l4.TCP.HasField("flags"):
            return
        f = l4.TCP.flags
        names = []
        if f.FIN:
            names.append("FIN")
        if f.SYN:
            names.append("SYN-ACK" if f.ACK else "SYN")
        if f.RST:
            names.append("RST")
        if not names:
            return
        ctx, bound = self.context.values(flow)
        family = fpb.IPVersion.Name(flow.IP.ipVersion)
        for name in names:
            self.flags.inc((name, family, *ctx), bound)

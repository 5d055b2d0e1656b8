"""flows-to-world: hubble_flows_to_world_total{protocol,verdict[,port]} -- requests to
destinations outside the cluster (identity label reserved:world).

Options: any-drop (count every drop, not only "Policy denied"), port (add the
destination port), syn-only (TCP: count only the SYN that opens a connection).
"""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb

from ..api import NAMESPACE, Handler
from ..flowinfo import flow_protocol, verdict_name
from ..series import SeriesStore

WORLD = "reserved:world"


class FlowsToWorldHandler(Handler):
    name = "flows-to-world"
    handler_options = {"any-drop": "count all drops, not only policy denials",
                       "port": "add the destination port as label 'port'",
                       "syn-only": "count only non-reply SYNs of TCP flows"}

    def init(self, store: SeriesStore) -> None:
        self.any_drop = self.flag("any-drop")
        self.port = self.flag("port")
        self.syn_only = self.flag("syn-only")
        labels = ["protocol", "verdict"] + (["port"] if self.port else [])
        self.flows = store.counter(f"{NAMESPACE}_flows_to_world_total",
                                   "Total number of flows to reserved:world",
                                   [*labels, *self.context.label_names()])
        self.vecs.append(self.flows)

    def status(self) -> str:
        flags = [n for n, on in (("any-drop", self.any_drop), ("port", self.port),
                                 ("syn-only", self.syn_only)) if on]
        return ",".join(flags + [self.context.status()])

    def process(self, flow: fpb.Flow) -> None:
        if (not flow.HasField("l4") or not flow.HasField("event_type")
                or WORLD not in flow.destination.labels):
            return
        dropped = flow.verdict == fpb.DROPPED
        if dropped and not self.any_drop and flow.drop_reason_desc != fpb.POLICY_DENIED:
            return
        reply = flow.HasField("is_reply") and flow.is_reply.value
        if not dropped and reply:
            return  # a reply to a request from the world: its port is ephemeral
        l4 = flow.l4
        which = l4.WhichOneof("protocol")
        if self.syn_only and (which != "TCP" or not l4.TCP.flags.SYN or reply):
            return
        ctx, bound = self.context.values(flow)
        labels: tuple[str, ...] = (flow_protocol(flow), verdict_name(flow))
        if self.port:
            port = ""
            if which == "TCP":
                port = str(l4.TCP.destination_port)
            elif which == "UDP":
                port = str(l4.UDP.destination_port)
            elif which == "SCTP":
                port = str(l4.SCTP.destination_port)
            labels += (port,)
        self.flows.inc((*labels, *ctx), bound)

"""flow: hubble_flows_processed_total{protocol,type,subtype,verdict} -- every flow."""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb

from ..api import NAMESPACE, Handler
from ..flowinfo import (MSG_ACCESS_LOG, MSG_CAPTURE, MSG_DROP, MSG_POLICY_VERDICT, MSG_TRACE,
                        TRACE_POINTS, flow_protocol, l7_kind, verdict_name)
from ..series import SeriesStore


def type_and_subtype(flow: fpb.Flow) -> tuple[str, str]:
    t = flow.event_type.type
    if t == MSG_ACCESS_LOG:
        return "L7", l7_kind(flow)
    if t == MSG_DROP:
        return "Drop", ""
    if t == MSG_CAPTURE:
        return "Capture", ""
    if t == MSG_TRACE:
        return "Trace", TRACE_POINTS.get(flow.event_type.sub_type, "")
    if t == MSG_POLICY_VERDICT:
        return "PolicyVerdict", ""
    return "Unknown", str(t)


class FlowHandler(Handler):
    name = "flow"

    def init(self, store: SeriesStore) -> None:
        self.flows = store.counter(f"{NAMESPACE}_flows_processed_total", "Total number of flows processed",
                                   ["protocol", "type", "subtype", "verdict", *self.context.label_names()])
        self.vecs.append(self.flows)

    def process(self, flow: fpb.Flow) -> None:
        ctx, bound = self.context.values(flow)
        typ, sub = type_and_subtype(flow)
        self.flows.inc((flow_protocol(flow), typ, sub, verdict_name(flow), *ctx), bound)

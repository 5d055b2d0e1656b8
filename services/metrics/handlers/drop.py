"""drop: hubble_drop_total{reason,protocol} -- dropped flows by drop reason."""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb

from ..api import NAMESPACE, Handler
from ..flowinfo import drop_reason_name, flow_protocol
from ..series import SeriesStore


class DropHandler(Handler):
    name = "drop"

    def init(self, store: SeriesStore) -> None:
        # Hubble puts the context labels first on this one.
        self.drops = store.counter(f"{NAMESPACE}_drop_total", "Number of drops",
                                   [*self.context.label_names(), "reason", "protocol"])
        self.vecs.append(self.drops)

    def process(self, flow: fpb.Flow) -> None:
        if flow.verdict != fpb.DROPPED:
            return
        ctx, bound = self.context.values(flow)
        self.drops.inc((*ctx, drop_reason_name(flow), flow_protocol(flow)), bound)

"""policy: hubble_policy_verdicts_total{direction,match,action} -- network policy verdicts.

L3/L4 policy-verdict events give match = the policy match type (l3-only, l3-l4,
l4-only, all, none, ...); L7 flows give match = l7/<protocol>. Verdicts for
traffic from the host (identity 1) are skipped: the host may reach any local pod.
"""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb

from ..api import NAMESPACE, Handler
from ..flowinfo import MSG_ACCESS_LOG, MSG_POLICY_VERDICT, verdict_name
from ..series import SeriesStore

IDENTITY_HOST = 1
MATCH_TYPES = {0: "none", 1: "L3-Only", 2: "L3-L4", 3: "L4-Only", 4: "all", 5: "L3-Proto",
               6: "Proto-Only"}
_DIRECTIONS = {fpb.TRAFFIC_DIRECTION_UNKNOWN: "traffic_direction_unknown",
               fpb.INGRESS: "ingress", fpb.EGRESS: "egress"}


class PolicyHandler(Handler):
    name = "policy"

    def init(self, store: SeriesStore) -> None:
        self.verdicts = store.counter(f"{NAMESPACE}_policy_verdicts_total",
                                      "Total number of Cilium network policy verdicts",
                                      ["direction", "match", "action", *self.context.label_names()])
        self.vecs.append(self.verdicts)

    def process(self, flow: fpb.Flow) -> None:
        t = flow.event_type.type
        if t == MSG_POLICY_VERDICT:
            if flow.source.identity == IDENTITY_HOST:
                return
            match = MATCH_TYPES.get(flow.policy_match_type, "unknown").lower()
        elif t == MSG_ACCESS_LOG:
            record = flow.l7.WhichOneof("record") if flow.HasField("l7") else None
            match = f"l7/{record or ''}"
        else:
            return
        ctx, bound = self.context.values(flow)
        direction = _DIRECTIONS.get(flow.traffic_direction, str(flow.traffic_direction))
        self.verdicts.inc((direction, match, verdict_name(flow).lower(), *ctx), bound)

"""Agent events (GetAgentEvents): agent start, endpoints created and deleted, policies
updated and deleted."""
from __future__ import annotations

import time
from typing import AsyncIterator

from webb.api.flow import flow_pb2 as fpb

from ..stores.endpoints import Endpoint
from ..stores.ring import Ring


class AgentEventLog:
    def __init__(self, capacity: int = 4095) -> None:
        self.ring: Ring[tuple[int, fpb.AgentEvent]] = Ring(capacity)

    def _add(self, ev: fpb.AgentEvent) -> None:
        self.ring.write_many([(time.time_ns(), ev)])

    def agent_started(self) -> None:
        ev = fpb.AgentEvent(type=fpb.AGENT_STARTED)
        ev.agent_start.time.GetCurrentTime()
        self._add(ev)

    def endpoint_changed(self, old: Endpoint | None, new: Endpoint | None) -> None:
        ep = new or old
        assert ep is not None
        ev = fpb.AgentEvent(type=fpb.ENDPOINT_CREATED if new else fpb.ENDPOINT_DELETED)
        n = ev.endpoint_update
        n.id = ep.id
        n.labels.extend(ep.identity_labels)
        n.pod_name = ep.name
        n.namespace = ep.namespace
        self._add(ev)

    def policy_changed(self, labels: list[str], revision: int, rule_count: int,
                       deleted: bool) -> None:
        ev = fpb.AgentEvent(type=fpb.POLICY_DELETED if deleted else fpb.POLICY_UPDATED)
        n = ev.policy_update
        n.labels.extend(labels)
        n.revision = revision
        n.rule_count = rule_count
        self._add(ev)

    async def read(self, number: int, follow: bool, since: int | None,
                   until: int | None) -> AsyncIterator[tuple[int, fpb.AgentEvent]]:
        ring = self.ring
        pos = max(ring.oldest_seq, ring.next_seq - number) if number else ring.oldest_seq
        while True:
            if pos >= ring.next_seq:
                if not follow:
                    return
                await ring.wait_beyond(pos)
                continue
            item = ring.get(max(pos, ring.oldest_seq))
            pos = max(pos, ring.oldest_seq) + 1
            if item is None:
                continue
            t, ev = item
            if since is not None and t < since:
                continue
            if until is not None and t > until:
                return
            yield t, ev

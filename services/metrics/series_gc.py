"""Removes the series of endpoints that are gone, so cardinality stays bounded.

A series is bound to the endpoints its labels name individually: a pod (context
``pod``/``pod-name``, labels ``source_pod``/``destination_pod``) or an address
(context ``ip``, labels ``source_ip``/``destination_ip``); see context.py. An
endpoint is gone

- when the source reports it deleted (agent event ENDPOINT_DELETED, which is how
  Hubble learns it too), or
- when no flow has named it for ``idle_timeout`` (the relay does not forward agent
  events, and addresses outside the cluster are never "deleted").

Its series are removed ``grace`` seconds later (Hubble: one minute), unless a pod
of the same name comes back first. Series bound to nothing (protocol, verdict,
namespace, workload...) are bounded by the cluster's shape and are kept.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from webb.api.flow import flow_pb2 as fpb

from .context import endpoint_key, pod_key
from .series import SeriesStore

log = logging.getLogger(__name__)


class SeriesGC:
    def __init__(self, store: SeriesStore, grace: float = 60.0, idle_timeout: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.grace = grace
        self.idle_timeout = idle_timeout  # 0: endpoints never expire by idleness
        self.clock = clock
        self.last_seen: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self.removed = 0

    # -- inputs ------------------------------------------------------------------
    def touch(self, flow: fpb.Flow) -> None:
        """Per flow: both endpoints are alive now."""
        now = self.clock()
        seen = self.last_seen
        k = endpoint_key(flow.source, flow.IP.source)
        if k:
            seen[k] = now
        k = endpoint_key(flow.destination, flow.IP.destination)
        if k:
            seen[k] = now

    @staticmethod
    def endpoint_keys(flow: fpb.Flow) -> tuple[str, ...]:
        """What ``touch`` marks alive for this flow (the pipeline remembers it per
        distinct flow digest and calls ``touch_keys``)."""
        return tuple(k for k in (endpoint_key(flow.source, flow.IP.source),
                                 endpoint_key(flow.destination, flow.IP.destination)) if k)

    def touch_keys(self, keys: tuple[str, ...]) -> None:
        now = self.clock()
        seen = self.last_seen
        for k in keys:
            seen[k] = now

    def endpoint_deleted(self, namespace: str, pod: str) -> None:
        key = pod_key(namespace, pod)
        self.deleted.setdefault(key, self.clock())
        log.debug("endpoint %s deleted; its series go in %.0fs", key, self.grace)

    def endpoint_created(self, namespace: str, pod: str) -> None:
        self.deleted.pop(pod_key(namespace, pod), None)

    # -- the sweep -----------------------------------------------------------------
    def gone(self, now: float) -> set[str]:
        out = {k for k, t in self.deleted.items() if now - t >= self.grace}
        if self.idle_timeout > 0:
            cutoff = now - self.idle_timeout - self.grace
            out.update(k for k, t in self.last_seen.items() if t <= cutoff)
        return out

    def sweep(self) -> int:
        """Removes the series bound to gone endpoints; returns how many."""
        now = self.clock()
        gone = self.gone(now)
        if not gone:
            return 0
        removed = 0
        for vec in self.store.bound_vecs():
            doomed = [key for key, bound in vec.bindings.items() if not gone.isdisjoint(bound)]
            for key in doomed:
                vec.remove(key)
            removed += len(doomed)
        for k in gone:
            self.deleted.pop(k, None)
            self.last_seen.pop(k, None)
        self.removed += removed
        if removed:
            log.info("removed %d series of %d gone endpoint(s)", removed, len(gone))
        return removed

    def interval(self) -> float:
        return max(0.2, min(10.0, self.grace / 4))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval())
            self.sweep()

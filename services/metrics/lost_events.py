"""hubble_lost_events_total{source}: events lost before they became flows.

Counted from the LostEvent notices in the GetFlows stream: the agent's perf ring
overflowing (perf_event_ring_buffer), its input queue (observer_events_queue) and
readers overtaken by the ring buffer (hubble_ring_buffer) -- including this
exporter when it falls behind. Source values are Hubble's: the enum name in
lower case. The usual sources start at 0 so that alerts and panels see a series.
"""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb

from .api import NAMESPACE
from .series import SeriesStore

PRESET = (fpb.PERF_EVENT_RING_BUFFER, fpb.OBSERVER_EVENTS_QUEUE, fpb.HUBBLE_RING_BUFFER)
_KNOWN = frozenset(fpb.LostEventSource.values())


def source_name(source: int) -> str:
    if source in _KNOWN:
        return fpb.LostEventSource.Name(source).lower()
    return str(source)


class LostEvents:
    def __init__(self, store: SeriesStore) -> None:
        self.counter = store.counter(f"{NAMESPACE}_lost_events_total", "Number of lost events",
                                     ["source"])
        for s in PRESET:
            self.counter.inc((source_name(s),), amount=0.0)

    def add(self, event: fpb.LostEvent) -> None:
        self.counter.inc((source_name(event.source),), amount=float(event.num_events_lost))

"""A view: what one set of browser filters sees (namespace + filter terms).

Each distinct view owns one GetFlows stream from the relay with its FlowFilters
(the relay filters; the UI only aggregates), a ServiceMap and a bounded window of
recent flows. Browsers with the same URL share the view. Views nobody watches are
closed after ``idle`` seconds; at most ``max_views`` exist.

Stream life (webb.flow_follow): first the newest ``history`` flows to fill the map
and table, then follow from them; batches from the relay (GetFlowBatches), or
GetFlows from a Hubble Relay. After an error the follow resumes from the last flow
seen, without gap or duplicate, with a back-off of 0.5 s to 5 s. A view that cannot
keep up sheds flows and counts them in its lost events.
"""
from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections import deque
from typing import Any, Iterator

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.backoff import Backoff
from webb.flow_follow import TAG_FLOW, Batch, FlowFollower, FollowStats
from webb.timeouts import wait_for

from .flow_row import to_row
from .layout import layout
from .query import Query
from .relay import RelayClient
from .service_map import ServiceMap
from .settings import Settings

log = logging.getLogger("webb.ui.view")

_parse = opb.GetFlowsResponse.FromString
_first_byte = operator.itemgetter(0)


def _arrow_label(a: dict[str, Any]) -> list[str]:
    # the port is the row of the callee's card the arrow ends at
    f = a["flows"]
    first = f"{_n(f['total'])} flow{'s' if f['total'] != 1 else ''}"
    if f["dropped"]:
        first += f" · {_n(f['dropped'])} dropped"
    lines = [first]
    h = a.get("http")
    if h:
        st = h["statuses"]
        classes: dict[str, int] = {}
        for code, n in st.items():
            k = f"{code[0]}xx" if code and code != "0" else "?"
            classes[k] = classes.get(k, 0) + n
        parts = [f"{k}×{_n(v)}" for k, v in sorted(classes.items())] or [f"{_n(h['requests'])} req"]
        lat = h.get("latency")
        if lat:
            parts.append(f"p95 ≤{_ms(lat['p95_ms'])}")
        lines.append("HTTP " + " ".join(parts))
    elif not f["total"] and a["protocol"]:
        lines[0] = a["protocol"]
    d = a.get("dns")
    if d:
        bad = {k: v for k, v in d["rcodes"].items() if k != "NOERROR"}
        lines.append(f"DNS {_n(d['requests'])} q" + "".join(f" {k}×{_n(v)}" for k, v in bad.items()))
    return lines


def _pair_labels(arrows: list[dict[str, Any]]) -> None:
    """One label per pair of cards (its arrows differ by port): on the busiest arrow."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for a in arrows:
        a["label"] = []
        groups.setdefault((a["source"], a["target"]), []).append(a)
    for group in groups.values():
        group.sort(key=lambda a: (-a["flows"]["total"], a["id"]))
        if len(group) == 1:
            group[0]["label"] = _arrow_label(group[0])
            continue
        merged: dict[str, Any] = {"flows": {k: sum(a["flows"][k] for a in group)
                                            for k in ("forwarded", "dropped", "other", "total")},
                                  "protocol": group[0]["protocol"], "http": None, "dns": None}
        https = [a["http"] for a in group if a.get("http")]
        if https:
            statuses: dict[str, int] = {}
            for h in https:
                for code, n in h["statuses"].items():
                    statuses[code] = statuses.get(code, 0) + n
            p95s = [h["latency"]["p95_ms"] for h in https if h.get("latency")]
            merged["http"] = {"statuses": statuses, "requests": sum(h["requests"] for h in https),
                              "latency": {"p95_ms": max(p95s)} if p95s else None}
        dnss = [a["dns"] for a in group if a.get("dns")]
        if dnss:
            rcodes: dict[str, int] = {}
            for d in dnss:
                for k, n in d["rcodes"].items():
                    rcodes[k] = rcodes.get(k, 0) + n
            merged["dns"] = {"requests": sum(d["requests"] for d in dnss), "rcodes": rcodes}
        ports = sorted(f"{a['port']}" if a["port"] else a["protocol"] for a in group)
        lines = _arrow_label(merged)
        lines.insert(1, "ports " + " ".join(ports[:4]) + (f" +{len(ports) - 4}" if len(ports) > 4 else ""))
        group[0]["label"] = lines


def _n(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    if n >= 1000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def _ms(v: float | None) -> str:
    if v is None:
        return "?"
    return f"{v:g}ms" if v < 1000 else f"{v / 1000:g}s"


class View:
    def __init__(self, query: Query, relay: RelayClient, settings: Settings) -> None:
        self.query = query
        self.key = query.key
        self.relay = relay
        self.settings = settings
        filters = query.flow_filters()
        self.unsatisfiable = filters is None
        self.whitelist, self.blacklist = filters if filters is not None else ([], [])
        self.map = ServiceMap(settings.max_cards, settings.max_arrows, settings.map_ttl)
        # (seq, encoded GetFlowsResponse): decoded only for the rows a page asks for
        self.window: deque[tuple[int, bytes]] = deque(maxlen=settings.flows_window)
        self.seq = 0
        self.lost = 0
        self.state = "starting"  # starting | history | live | retrying | error | empty
        self.error = ""
        self.version = 0  # bumped when state/error change
        self.ready = asyncio.Event()
        self.subscribers = 0
        self.last_used = time.monotonic()
        self.created = time.time()
        self._last_time_ns = 0
        self._snapshot: tuple[int, dict[str, Any]] | None = None
        self._layout_cache: dict[str, Any] = {}
        self.snapshot_cost = 0.0  # seconds to build a map snapshot (moving average)
        self._task: asyncio.Task | None = None
        self.follower: FlowFollower | None = None

    # -- life -----------------------------------------------------------------------
    def start(self) -> None:
        if self.unsatisfiable:
            self._set_state("empty", "these filters can never match a flow")
            self.ready.set()
            return
        self._task = asyncio.create_task(self._run(), name=f"view {self.key}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def _set_state(self, state: str, error: str = "") -> None:
        if (state, error) != (self.state, self.error):
            self.state, self.error = state, error
            self.version += 1

    def _on_follow_state(self, st: FollowStats) -> None:
        state = {"connecting": "starting"}.get(st.state, st.state)
        if state == "live" and not self.ready.is_set():
            state = "history" if self.settings.history else "live"
        self._set_state(state, st.error if state in ("retrying", "error") else "")
        if state in ("error",):
            self.ready.set()  # say what is wrong rather than wait for it

    async def _run(self) -> None:
        req = opb.GetFlowsRequest(whitelist=self.whitelist, blacklist=self.blacklist)
        follower = self.follower = FlowFollower(
            self.relay.channel, req, history=self.settings.history,
            max_pending=self.settings.max_pending, backoff=Backoff(0.5, 5.0),
            name="webb-ui", target=self.relay.address, on_state=self._on_follow_state)
        watch = asyncio.create_task(self._restart_when_relay_lost(follower))
        if not self.settings.history:
            self.ready.set()
        try:
            async for batch in follower.follow():
                if batch.mark == "history_done":
                    self.ready.set()
                    self._on_follow_state(follower.stats)
                    continue
                self._take(batch)
        finally:
            watch.cancel()

    async def _restart_when_relay_lost(self, follower: FlowFollower) -> None:
        # a relay that vanished without closing the stream (its host died) leaves the
        # stream hanging: the status poll notices, and the follower starts over
        while True:
            await self.relay.lost()
            follower.restart()

    def _take(self, batch: Batch) -> None:
        raws = batch.raw  # the fallback's decoded batches keep their bytes too
        try:
            firsts = bytes(map(_first_byte, raws))
        except IndexError:  # an empty entry (nothing set): neither a flow nor lost events
            firsts = bytes(r[0] if r else 0 for r in raws)
        flows = raws
        if firsts.count(TAG_FLOW) != len(raws):  # node status or lost events among them
            flows = [r for r in raws if r[:1] == b"\n"]
            for r in raws:
                if r[:1] == b"\x1a":
                    self.lost += _parse(r).lost_events.num_events_lost
                    self.version += 1
        if flows:
            seq = self.seq
            self.window.extend(zip(range(seq + 1, seq + 1 + len(flows)), flows))
            self.seq = seq + len(flows)
            self.map.add_batch(flows, time.time())  # by digest: no full decode of a flow
        if batch.time_ns:
            last = max(batch.time_ns)
            if last > self._last_time_ns:
                self._last_time_ns = last

    # -- reads ------------------------------------------------------------------------
    def _rows(self, items: Iterator[tuple[int, bytes]]) -> list[dict[str, Any]]:
        rows = []
        for seq, raw in items:
            row = to_row(_parse(raw).flow)
            if not row["id"]:
                row["id"] = f"~{seq}"
            row["seq"] = seq
            rows.append(row)
        return rows

    def rows_since(self, after: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """The newest ``limit`` flows with seq > after (oldest first) and how many
        newer-than-``after`` flows were left out."""
        picked: list[tuple[int, bytes]] = []
        for item in reversed(self.window):
            if item[0] <= after or len(picked) >= limit:
                break
            picked.append(item)
        newest = self.seq
        skipped = max(0, newest - after - len(picked))
        picked.reverse()
        return self._rows(iter(picked)), skipped

    def find(self, flow_id: str) -> fpb.Flow | None:
        if flow_id.startswith("~"):
            try:
                want = int(flow_id[1:])
            except ValueError:
                return None
            return next((_parse(r).flow for s, r in self.window if s == want), None)
        needle = flow_id.encode()
        for _, raw in reversed(self.window):
            if needle in raw:  # then decode to be sure it is the uuid
                f = _parse(raw).flow
                if f.uuid == flow_id:
                    return f
        return None

    def status(self) -> dict[str, Any]:
        f = self.follower.stats if self.follower is not None else None
        return {"key": self.key, "state": self.state, "error": self.error,
                "flows_seen": self.seq, "lost_events": self.lost, "window": len(self.window),
                "stream": f.mode if f else "", "shed": f.shed if f else 0,
                "reconnects": f.reconnects if f else 0,
                "subscribers": self.subscribers, "cards": len(self.map.cards),
                "arrows": len(self.map.arrows)}

    def snapshot(self) -> dict[str, Any]:
        """The map with its layout; computed at most once per map change."""
        v = self.map.version
        if self._snapshot is not None and self._snapshot[0] == v:
            return self._snapshot[1]
        t0 = time.perf_counter()
        cards = self.map.cards_json()
        arrows = self.map.arrows_json()
        _pair_labels(arrows)
        box = layout(cards, arrows, self._layout_cache)
        self.snapshot_cost = 0.8 * self.snapshot_cost + 0.2 * (time.perf_counter() - t0)
        snap = {"namespace": self.query.namespace, "filters": [str(t) for t in self.query.terms],
                "cards": cards, "arrows": arrows, "bounds": box,
                "flows_seen": self.map.flows, "evicted": self.map.evicted,
                "generated": time.time(), "version": v}
        self._snapshot = (v, snap)
        return snap


class Views:
    """All open views, bounded in number, shared by key."""

    def __init__(self, relay: RelayClient, settings: Settings) -> None:
        self.relay = relay
        self.settings = settings
        self.views: dict[str, View] = {}
        self._task: asyncio.Task | None = None

    async def get(self, query: Query) -> View:
        v = self.views.get(query.key)
        if v is None:
            if len(self.views) >= self.settings.max_views:
                idle = sorted((x for x in self.views.values() if not x.subscribers),
                              key=lambda x: x.last_used)
                victim = idle[0] if idle else min(self.views.values(), key=lambda x: x.last_used)
                await self.drop(victim)
            v = self.views[query.key] = View(query, self.relay, self.settings)
            v.start()
        v.touch()
        return v

    async def drop(self, v: View) -> None:
        self.views.pop(v.key, None)
        await v.close()

    async def ready(self, query: Query, timeout: float = 5.0) -> View:
        v = await self.get(query)
        try:
            await wait_for(asyncio.shield(v.ready.wait()), timeout)
        except asyncio.TimeoutError:
            pass
        return v

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            now_wall, now = time.time(), time.monotonic()
            for v in list(self.views.values()):
                v.map.expire(now_wall)
                if not v.subscribers and now - v.last_used > self.settings.view_idle:
                    log.info("closing idle view %s", v.key)
                    await self.drop(v)

    def start(self) -> None:
        self._task = asyncio.create_task(self._housekeeping(), name="views-housekeeping")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        for v in list(self.views.values()):
            await self.drop(v)

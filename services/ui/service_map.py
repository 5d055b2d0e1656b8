"""The service map of one view, aggregated from its flows in bounded memory.

Cards: one per service (see ``service.py``) with the identities, workloads, labels
and pods seen, and the ports it serves with their L7 protocols.
Arrows: one per (client card, server card, server port, protocol) with flow counts
by verdict, drop reasons, and HTTP/DNS statistics where L7 flows exist.

Replies (``is_reply``) draw no arrow of their own: an L7 response feeds the status
and latency of its request's arrow; a dropped reply counts as a drop on it. Cards
and arrows not seen for ``ttl`` seconds go away; at most ``max_cards`` cards and
``max_arrows`` arrows are kept (the least recently seen are dropped first).

A view feeds it batches of encoded flows (``add_batch``): digested in C a batch at a
time (map_digest.py), each distinct digest's Route resolved once and remembered, and
a run of flows whose Routes are all remembered applied per Route with its count. That
is the map flow by flow would build: within such a run nothing is created or evicted;
each of its Routes was applied before, so what it adds to a bounded set or dict (an
address, a node, a drop reason, an HTTP route or DNS name) is in it already or was
refused and will be again; what is left are counts, which add up in any order, and
HTTP latencies, which are added one by one in stream order.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb

from .l7stats import DnsStats, HttpStats
from .map_digest import digest_batch
from .service import ServiceCache, ServiceId, visible_labels

FORWARDED = fpb.FORWARDED
DROPPED = fpb.DROPPED
L7 = fpb.L7
RESPONSE = fpb.RESPONSE
INGRESS = fpb.INGRESS
EGRESS = fpb.EGRESS
MAX_SET = 32  # per-card sets (identities, pods, label values, ...) keep at most this many


def _add_bounded(s: set, v: object) -> None:
    if len(s) < MAX_SET:
        s.add(v)


class Port:
    __slots__ = ("port", "protocol", "l7", "flows", "alive", "route_keys")

    def __init__(self, port: int, protocol: str) -> None:
        self.alive = True  # False once dropped from its card
        self.route_keys: list[bytes] = []  # digests whose remembered Route counts on it
        self.port = port
        self.protocol = protocol
        self.l7: set[str] = set()
        self.flows = 0


class Card:
    __slots__ = ("sid", "identities", "workloads", "labels", "pods", "ips", "nodes",
                 "ports", "flows_in", "flows_out", "first_seen", "last_seen", "ep_keys", "alive",
                 "route_keys")

    def __init__(self, sid: ServiceId, now: float) -> None:
        self.alive = True  # False once evicted from the map
        self.route_keys: list[bytes] = []  # digests whose remembered Route counts on it
        self.sid = sid
        self.identities: set[int] = set()
        self.workloads: set[str] = set()
        self.labels: dict[str, set[str]] = {}
        self.pods: set[str] = set()
        self.ips: set[str] = set()
        self.nodes: set[str] = set()
        self.ports: dict[tuple[int, str], Port] = {}
        self.flows_in = 0
        self.flows_out = 0
        self.first_seen = now
        self.last_seen = now
        self.ep_keys: set[tuple] = set()

    def learn(self, ep: Any) -> None:
        """Records what a (new) endpoint of this card says about it."""
        if ep.identity:
            _add_bounded(self.identities, ep.identity)
        for w in ep.workloads:
            _add_bounded(self.workloads, f"{w.kind}/{w.name}" if w.kind else w.name)
        if ep.pod_name:
            _add_bounded(self.pods, ep.pod_name)
        for k, v in visible_labels(ep.labels):
            vals = self.labels.get(k)
            if vals is None:
                if len(self.labels) >= MAX_SET:
                    continue
                vals = self.labels[k] = set()
            _add_bounded(vals, v)

    def port(self, port: int, protocol: str, dropped: Callable[[Any], None]) -> Port:
        k = (port, protocol)
        p = self.ports.get(k)
        if p is None:
            if len(self.ports) >= MAX_SET:
                # keep the busiest ports
                drop = min(self.ports.values(), key=lambda x: x.flows)
                del self.ports[(drop.port, drop.protocol)]
                dropped(drop)
            p = self.ports[k] = Port(port, protocol)
        return p


class Arrow:
    __slots__ = ("key", "forwarded", "dropped", "other", "drop_reasons", "http", "dns",
                 "first_seen", "last_seen", "alive", "route_keys")

    def __init__(self, key: tuple[str, str, int, str], now: float) -> None:
        self.alive = True  # False once evicted from the map
        self.route_keys: list[bytes] = []  # digests whose remembered Route counts on it
        self.key = key
        self.forwarded = 0
        self.dropped = 0
        self.other = 0
        self.drop_reasons: dict[str, int] = {}
        self.http: HttpStats | None = None
        self.dns: DnsStats | None = None
        self.first_seen = now
        self.last_seen = now

    @property
    def verdict(self) -> str:
        if self.dropped and (self.forwarded or self.other):
            return "mixed"
        if self.dropped:
            return "dropped"
        if self.forwarded:
            return "forwarded"
        return "other" if self.other else "unknown"


def _l4(flow: Any) -> tuple[str, int, int]:
    """(protocol, source port, destination port); ICMP uses its type as 'port' 0."""
    l4 = flow.l4
    which = l4.WhichOneof("protocol")
    if which == "TCP":
        t = l4.TCP
        return "TCP", t.source_port, t.destination_port
    if which == "UDP":
        u = l4.UDP
        return "UDP", u.source_port, u.destination_port
    if which == "SCTP":
        s = l4.SCTP
        return "SCTP", s.source_port, s.destination_port
    if which is None:
        return "", 0, 0
    return which, 0, 0


EPHEMERAL_MIN = 32768  # Linux's default ip_local_port_range starts here


def _guess_reply(flow: Any, src: "Card", dst: "Card", proto: str, sport: int, dport: int) -> bool:
    """Whether a flow whose is_reply is unknown (e.g. a kernel drop) goes from server
    to client: by TCP flags, then by the ports the cards are known to serve, then by
    which port looks ephemeral."""
    if flow.reply:
        return True
    if proto == "TCP":
        f = flow.l4.TCP.flags
        if f.SYN:
            return f.ACK
    if not sport or not dport:
        return False
    if (dport, proto) in dst.ports:
        return False
    if (sport, proto) in src.ports:
        return True
    return sport < EPHEMERAL_MIN <= dport


def _drop_reason(flow: Any) -> str:
    r = flow.drop_reason_desc
    if r:
        try:
            return fpb.DropReason.Name(r)
        except ValueError:
            return str(r)
    return flow.ext_drop_reason_desc or "DROP_REASON_UNKNOWN"


_parse = opb.GetFlowsResponse.FromString
ROUTES_MAX = 10_000  # digests whose Route is remembered, per map
# Longer digests (an HTTP URL of a proxied head may be 60 KiB) are resolved each time, never
# kept: ROUTES_MAX of them would hold gigabytes.
ROUTE_KEY_MAX = 2048
CHUNK = 256  # flows digested in one go: larger batches fall out of the CPU caches (slower per flow)


class Route:
    """What one flow does to the map, resolved to the map's own objects. Applying it
    for another flow with the same digest does what ``add`` would do for that flow, as
    long as its cards, arrow and port are all still in the map: ``add`` would find
    those same objects, and the rest only counts. A remembered Route is forgotten when
    any of them is evicted (their ``route_keys``)."""

    __slots__ = ("src", "dst", "arrow", "port", "client", "server", "ips", "ip",
                 "nodes", "node", "l7stats", "l7", "is_resp", "l7_name", "counts", "verdict",
                 "reason", "latencies", "http_route")

    def __init__(self, src: Card, dst: Card) -> None:
        self.src = src
        self.dst = dst
        self.arrow: Arrow | None = None  # None: a reply that draws nothing
        self.port: Port | None = None
        self.client: Card | None = None
        self.server: Card | None = None
        self.ips: set[str] | None = None  # a world card's addresses
        self.ip = ""
        self.nodes: set[str] | None = None
        self.node = ""
        self.l7stats: HttpStats | DnsStats | None = None
        self.l7: Any = None
        self.is_resp = False
        self.l7_name = ""
        self.counts = False  # counted as a flow of the arrow (not an L7 response)
        self.verdict = 0
        self.reason = ""
        self.latencies: HttpStats | None = None  # an HTTP response: where its latency goes
        self.http_route: Any = None  # its method and path's statistics in l7stats

    def apply(self, m: "ServiceMap", now: float, n: int = 1, again: bool = False) -> None:
        """What ``n`` flows with this Route do (n > 1: flows without an L7 latency).
        ``again``: it was applied before, so what it adds to a bounded set is in it
        already or was refused (sets only grow while their card lives)."""
        m.flows += n
        m.version += n
        self.src.last_seen = now
        self.dst.last_seen = now
        arrow = self.arrow
        if arrow is None:
            return
        arrow.last_seen = now
        if not again:
            if self.ips is not None:
                _add_bounded(self.ips, self.ip)
            if self.nodes is not None:
                _add_bounded(self.nodes, self.node)
            if self.l7_name:
                self.port.l7.add(self.l7_name)
        if self.l7stats is not None:
            self.l7stats.add(self.l7, self.is_resp, n, self.http_route)
        p = self.port
        if not self.counts:
            return
        verdict = self.verdict
        if verdict == FORWARDED:
            arrow.forwarded += n
        elif verdict == DROPPED:
            arrow.dropped += n
            r = self.reason
            reasons = arrow.drop_reasons
            if r in reasons or len(reasons) < MAX_SET:
                reasons[r] = reasons.get(r, 0) + n
        else:
            arrow.other += n
        p.flows += n
        self.client.flows_out += n
        self.server.flows_in += n


class ServiceMap:
    def __init__(self, max_cards: int = 500, max_arrows: int = 2000, ttl: float = 900.0) -> None:
        self.max_cards = max_cards
        self.max_arrows = max_arrows
        self.ttl = ttl
        self.cards: dict[str, Card] = {}
        self.arrows: dict[tuple[str, str, int, str], Arrow] = {}
        self._eps: dict[tuple, Card] = {}
        self._ids = ServiceCache()
        self.version = 0
        self.flows = 0
        self.evicted = 0
        # digest -> its Route; only Routes whose cards, arrow and port are in the map
        self._routes: dict[bytes, Route] = {}
        self._once: set[bytes] = set()  # digests seen once so far
        self._registered = 0  # route_keys entries since the last reset (bounds them)
        self._forgotten = 0  # Routes forgotten because something they count on went

    # -- ingest -----------------------------------------------------------------
    def _card(self, ep: Any, now: float) -> Card:
        k = (ep.identity, ep.namespace, ep.pod_name)
        card = self._eps.get(k)
        if card is not None:
            card.last_seen = now
            return card
        sid = self._ids(ep)
        card = self.cards.get(sid.key)
        if card is None:
            if len(self.cards) >= self.max_cards:
                self._evict_card(min(self.cards.values(), key=lambda c: c.last_seen))
            card = self.cards[sid.key] = Card(sid, now)
        card.learn(ep)
        card.ep_keys.add(k)
        self._eps[k] = card
        card.last_seen = now
        return card

    def add(self, flow: Any, now: float) -> None:
        self._resolve(flow, now).apply(self, now)

    def add_encoded(self, raw: bytes, now: float) -> None:
        """``add`` for one encoded GetFlowsResponse carrying a flow (by its digest)."""
        self.add_batch([raw], now)

    def add_batch(self, raws: list[bytes], now: float) -> None:
        """``add`` for each encoded GetFlowsResponse (each carrying a flow), in order, by
        digest: runs of flows whose Routes are remembered are applied per Route."""
        for i in range(0, len(raws), CHUNK):
            self._add_chunk(raws[i:i + CHUNK] if len(raws) > CHUNK else raws, now)

    def _add_chunk(self, raws: list[bytes], now: float) -> None:
        keys, latencies = digest_batch(raws)
        routes = self._routes
        known = list(map(routes.get, keys))  # None: not remembered (or no digest)
        n = len(known)
        i = 0
        while i < n:
            try:
                j = known.index(None, i)
            except ValueError:
                j = n
            if j > i:
                run = known[i:j] if i or j < n else known
                for r, count in Counter(run).items():
                    r.apply(self, now, count, True)
                if latencies:
                    for k, ns in latencies.items():  # in stream order
                        if i <= k < j:
                            r = known[k]
                            if r.latencies is not None:
                                r.latencies.add_latency(r.l7, ns, r.http_route)
            if j == n:
                return
            forgotten = self._forgotten
            key = keys[j]
            if key is None:  # is_reply unknown: depends on what the map knows now
                self.add(_parse(raws[j]).flow, now)
            else:
                r = routes.get(key)  # remembered since, by an earlier flow of this batch
                if r is None:
                    r = self._resolve(_parse(key).flow, now)
                    once = self._once
                    if len(key) > ROUTE_KEY_MAX:
                        pass
                    elif key in once:  # one-offs would crowd out the rest
                        self._remember(key, r)
                    else:
                        if len(once) >= ROUTES_MAX:
                            once.clear()
                        once.add(key)
                r.apply(self, now)
                ns = latencies.get(j) if latencies else None
                if ns and r.latencies is not None:
                    r.latencies.add_latency(r.l7, ns, r.http_route)
            if self._forgotten != forgotten:  # something was evicted: look the rest up again
                known[j + 1:] = map(routes.get, keys[j + 1:])
            i = j + 1

    def _remember(self, key: bytes, r: Route) -> None:
        if not (r.src.alive and r.dst.alive and (r.arrow is None or (r.arrow.alive and r.port.alive))):
            return  # resolving it evicted one of its own cards (all were just seen)
        if len(self._routes) >= ROUTES_MAX or self._registered >= 4 * ROUTES_MAX:
            self._forget_all()
        self._routes[key] = r
        r.src.route_keys.append(key)
        r.dst.route_keys.append(key)
        self._registered += 2
        if r.arrow is not None:
            r.arrow.route_keys.append(key)
            r.port.route_keys.append(key)
            self._registered += 2

    def _forget(self, obj: Card | Arrow | Port) -> None:
        """``obj`` left the map: so do the Routes that count on it."""
        obj.alive = False
        if obj.route_keys:
            pop = self._routes.pop
            for k in obj.route_keys:
                pop(k, None)
            obj.route_keys = []
            self._forgotten += 1

    def _forget_all(self) -> None:
        self._routes.clear()
        for c in self.cards.values():
            c.route_keys = []
            for p in c.ports.values():
                p.route_keys = []
        for a in self.arrows.values():
            a.route_keys = []
        self._registered = 0
        self._forgotten += 1

    def _resolve(self, flow: Any, now: float) -> Route:
        """The cards, arrow and port a flow counts on (created as needed), and what it adds."""
        src = self._card(flow.source, now)
        dst = self._card(flow.destination, now)
        proto, sport, dport = _l4(flow)
        if flow.HasField("is_reply"):
            reply = flow.is_reply.value
        else:
            reply = _guess_reply(flow, src, dst, proto, sport, dport)
        verdict = flow.verdict
        is_l7 = flow.Type == L7
        if not proto:
            proto = "IP"
        if reply:
            if not is_l7 and verdict != DROPPED:
                return Route(src, dst)
            client, server, port = dst, src, sport
        else:
            client, server, port = src, dst, dport
        r = Route(src, dst)
        if server.sid.kind == "world":
            ip = flow.IP.destination if not reply else flow.IP.source
            if ip:
                r.ips, r.ip = server.ips, ip
        elif client.sid.kind == "world":
            ip = flow.IP.source if not reply else flow.IP.destination
            if ip:
                r.ips, r.ip = client.ips, ip
        if r.ips is not None:
            _add_bounded(r.ips, r.ip)  # before a new arrow may evict: as flow by flow
        key = (client.sid.key, server.sid.key, port, proto)
        arrow = self.arrows.get(key)
        if arrow is None:
            if len(self.arrows) >= self.max_arrows:
                self._evict_arrow(min(self.arrows.values(), key=lambda a: a.last_seen))
            arrow = self.arrows[key] = Arrow(key, now)
        arrow.last_seen = now
        r.arrow, r.port, r.client, r.server = arrow, server.port(port, proto, self._forget), client, server
        node = flow.node_name
        if node:
            # the node that saw the flow hosts the endpoint it was observed at:
            # the client for egress, the server for ingress
            direction = flow.traffic_direction
            if direction == INGRESS:
                r.nodes, r.node = server.nodes, node
            elif direction == EGRESS:
                r.nodes, r.node = client.nodes, node
        r.counts = True
        if is_l7:
            l7 = flow.l7
            which = l7.WhichOneof("record")
            r.is_resp = l7.type == RESPONSE
            if which == "http":
                if arrow.http is None:
                    arrow.http = HttpStats()
                r.l7stats, r.l7, r.l7_name = arrow.http, l7, "HTTP"
                r.http_route = arrow.http.route(l7.http.method, l7.http.url)
                if r.is_resp:
                    r.latencies = arrow.http
            elif which == "dns":
                if arrow.dns is None:
                    arrow.dns = DnsStats()
                r.l7stats, r.l7, r.l7_name = arrow.dns, l7, "DNS"
            elif which:
                r.l7_name = which.upper()
            if reply and verdict != DROPPED:
                r.counts = False
        r.verdict = verdict
        if verdict == DROPPED:
            r.reason = _drop_reason(flow)
        return r

    # -- bounds -------------------------------------------------------------------
    def _evict_arrow(self, a: Arrow) -> None:
        self.arrows.pop(a.key, None)
        self._forget(a)
        self.evicted += 1
        self.version += 1

    def _evict_card(self, c: Card) -> None:
        self.cards.pop(c.sid.key, None)
        self._forget(c)
        for k in c.ep_keys:
            self._eps.pop(k, None)
        for key in [k for k in self.arrows if k[0] == c.sid.key or k[1] == c.sid.key]:
            self._forget(self.arrows.pop(key))
        self.evicted += 1
        self.version += 1

    def expire(self, now: float) -> None:
        horizon = now - self.ttl
        for a in [a for a in self.arrows.values() if a.last_seen < horizon]:
            self._evict_arrow(a)
        used = {k[0] for k in self.arrows} | {k[1] for k in self.arrows}
        for c in [c for c in self.cards.values() if c.last_seen < horizon and c.sid.key not in used]:
            self._evict_card(c)

    def clear(self) -> None:
        self.cards.clear()
        self.arrows.clear()
        self._eps.clear()
        self._forget_all()
        self.version += 1

    # -- output -------------------------------------------------------------------
    def cards_json(self) -> list[dict[str, Any]]:
        out = []
        for c in self.cards.values():
            sid = c.sid
            ports = sorted(c.ports.values(), key=lambda p: (p.protocol not in ("TCP", "UDP", "SCTP"),
                                                             p.port, p.protocol))
            out.append({
                "id": sid.key, "kind": sid.kind, "name": sid.name, "namespace": sid.namespace,
                "filter": sid.term,
                "identities": sorted(c.identities),
                "workloads": sorted(c.workloads),
                "labels": [[k, sorted(v)] for k, v in sorted(c.labels.items())],
                "pods": len(c.pods), "pod_names": sorted(c.pods)[:8],
                "ips": sorted(c.ips)[:8], "nodes": sorted(c.nodes),
                "ports": [{"port": p.port, "protocol": p.protocol, "l7": sorted(p.l7),
                           "flows": p.flows} for p in ports],
                "flows_in": c.flows_in, "flows_out": c.flows_out,
                "first_seen": c.first_seen, "last_seen": c.last_seen,
            })
        return out

    def arrows_json(self) -> list[dict[str, Any]]:
        out = []
        for a in self.arrows.values():
            src, dst, port, proto = a.key
            out.append({
                "id": f"{src}>{dst}:{port}/{proto}", "source": src, "target": dst,
                "port": port, "protocol": proto, "verdict": a.verdict,
                "flows": {"forwarded": a.forwarded, "dropped": a.dropped, "other": a.other,
                          "total": a.forwarded + a.dropped + a.other},
                "drop_reasons": dict(sorted(a.drop_reasons.items(), key=lambda kv: -kv[1])),
                "http": a.http.to_json() if a.http else None,
                "dns": a.dns.to_json() if a.dns else None,
                "first_seen": a.first_seen, "last_seen": a.last_seen,
            })
        return out

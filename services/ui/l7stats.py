"""Bounded L7 statistics of one arrow: HTTP methods/paths/status codes/latency and
DNS queries/response codes, from Hubble L7 flows (request and response records)."""
from __future__ import annotations

from bisect import bisect_left
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

# latency histogram bucket upper bounds, milliseconds
LATENCY_BOUNDS_MS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
MAX_ROUTES = 16
MAX_QUERIES = 16
OTHER = "(other)"


@lru_cache(maxsize=4096)
def url_path(url: str) -> str:
    try:
        p = urlsplit(url).path
    except ValueError:
        return url[:200]
    return (p or "/")[:200]


class Latency:
    __slots__ = ("count", "total_ms", "max_ms", "buckets")

    def __init__(self) -> None:
        self.count = 0
        self.total_ms = 0.0
        self.max_ms = 0.0
        self.buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)

    def add(self, ms: float) -> None:
        self.count += 1
        self.total_ms += ms
        if ms > self.max_ms:
            self.max_ms = ms
        self.buckets[bisect_left(LATENCY_BOUNDS_MS, ms)] += 1

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding the q-quantile (None: no data)."""
        if not self.count:
            return None
        want = q * self.count
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= want:
                return LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else self.max_ms
        return self.max_ms

    def to_json(self) -> dict[str, Any] | None:
        if not self.count:
            return None
        return {"count": self.count, "avg_ms": round(self.total_ms / self.count, 3),
                "max_ms": round(self.max_ms, 3), "p50_ms": self.quantile(0.5),
                "p95_ms": self.quantile(0.95)}


class Route:
    __slots__ = ("requests", "statuses", "latency")

    def __init__(self) -> None:
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self.latency = Latency()


class HttpStats:
    __slots__ = ("requests", "responses", "statuses", "latency", "routes")

    def __init__(self) -> None:
        self.requests = 0
        self.responses = 0
        self.statuses: dict[int, int] = {}
        self.latency = Latency()
        self.routes: dict[tuple[str, str], Route] = {}

    def route(self, method: str, url: str) -> Route:
        """The statistics of a method and path (created as needed: at most MAX_ROUTES)."""
        key = (method or "?", url_path(url) if url else "?")
        r = self.routes.get(key)
        if r is None:
            if len(self.routes) >= MAX_ROUTES:
                key = ("*", OTHER)
                r = self.routes.get(key)
            if r is None:
                r = self.routes[key] = Route()
        return r

    def add(self, l7: Any, is_response: bool, n: int = 1, route: Route | None = None) -> None:
        """``n`` equal records (n > 1 only for records without a latency: a digest's);
        ``route``: ``self.route`` of their method and URL, if known."""
        http = l7.http
        if route is None:
            route = self.route(http.method, http.url)
        if not is_response:
            self.requests += n
            route.requests += n
            return
        self.responses += n
        code = http.code
        self.statuses[code] = self.statuses.get(code, 0) + n
        route.statuses[code] = route.statuses.get(code, 0) + n
        if l7.latency_ns:
            self.add_latency(l7, l7.latency_ns, route)

    def add_latency(self, l7: Any, latency_ns: int, route: Route | None = None) -> None:
        """A response's latency (the map by digest adds them apart, flow by flow)."""
        if route is None:
            route = self.route(l7.http.method, l7.http.url)
        ms = latency_ns / 1e6
        self.latency.add(ms)
        route.latency.add(ms)

    def to_json(self) -> dict[str, Any]:
        routes = sorted(self.routes.items(), key=lambda kv: -(kv[1].requests + sum(kv[1].statuses.values())))
        return {
            "requests": self.requests, "responses": self.responses,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "latency": self.latency.to_json(),
            "routes": [{"method": m, "path": p, "requests": r.requests,
                        "statuses": {str(k): v for k, v in sorted(r.statuses.items())},
                        "latency": r.latency.to_json()} for (m, p), r in routes],
        }


class DnsStats:
    __slots__ = ("requests", "responses", "rcodes", "queries")

    def __init__(self) -> None:
        self.requests = 0
        self.responses = 0
        self.rcodes: dict[int, int] = {}
        self.queries: dict[str, int] = {}

    def add(self, l7: Any, is_response: bool, n: int = 1, route: None = None) -> None:
        dns = l7.dns
        q = dns.query or "?"
        if q not in self.queries and len(self.queries) >= MAX_QUERIES:
            q = OTHER
        if is_response:
            self.responses += n
            self.rcodes[dns.rcode] = self.rcodes.get(dns.rcode, 0) + n
        else:
            self.requests += n
            self.queries[q] = self.queries.get(q, 0) + n

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "responses": self.responses,
                "rcodes": {RCODES.get(k, str(k)): v for k, v in sorted(self.rcodes.items())},
                "queries": dict(sorted(self.queries.items(), key=lambda kv: -kv[1]))}


RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}

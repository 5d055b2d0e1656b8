"""One bookinfo service (productpage, details, reviews v1-v3, ratings) as a small
aiohttp server on :9080, run inside its pod's namespace by the demo.

Calls go to service names (`http://details:9080`), resolved through the cluster's
DNS pod like in Kubernetes. Each call opens a new connection, as curl does, so the
flows show connections and not one long keep-alive.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal

from aiohttp import ClientSession, ClientTimeout, TCPConnector, ThreadedResolver, web

STARS = {"v2": "black", "v3": "red"}


class BalancingResolver(ThreadedResolver):
    """Spreads calls over a service's pods the way kube-proxy would: DNS answers
    with every pod's address, in one order, so pick one at random per call."""

    async def resolve(self, host: str, port: int = 0, family: int = 0):  # type: ignore[no-untyped-def]
        addrs = await super().resolve(host, port, family)
        random.shuffle(addrs)
        return addrs


def client_session(timeout: ClientTimeout) -> ClientSession:
    # A new connection per call, as curl makes, and a short DNS cache so that
    # name resolution stays visible in the flows.
    return ClientSession(connector=TCPConnector(force_close=True, ttl_dns_cache=5,
                                                resolver=BalancingResolver()),
                         timeout=timeout)


def make_app(service: str, version: str, pod: str) -> web.Application:
    app = web.Application()
    timeout = ClientTimeout(total=3)

    async def fetch(session: ClientSession, url: str) -> tuple[int, object]:
        try:
            async with session.get(url, headers={"x-request-from": pod}) as r:
                return r.status, await r.json(content_type=None)
        except Exception as e:  # an upstream failure shows as an error on the page
            return 503, {"error": f"{url}: {type(e).__name__}"}

    async def session(req: web.Request) -> ClientSession:
        return req.app["session"]

    async def on_start(app: web.Application) -> None:
        app["session"] = client_session(timeout)

    async def on_stop(app: web.Application) -> None:
        await app["session"].close()

    app.on_startup.append(on_start)
    app.on_cleanup.append(on_stop)

    async def health(req: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": service, "version": version})

    async def productpage(req: web.Request) -> web.Response:
        s = await session(req)
        (ds, details), (rs, reviews) = await asyncio.gather(
            fetch(s, "http://details:9080/details/0"), fetch(s, "http://reviews:9080/reviews/0"))
        status = 200 if ds == 200 and rs == 200 else 500
        body = (f"<html><body><h1>The Comedy of Errors</h1><pre>{json.dumps(details)}</pre>"
                f"<pre>{json.dumps(reviews)}</pre><p>served by {pod}</p></body></html>")
        return web.Response(text=body, content_type="text/html", status=status)

    async def details(req: web.Request) -> web.Response:
        return web.json_response({"id": int(req.match_info["id"]), "author": "William Shakespeare",
                                  "year": 1595, "type": "paperback", "pages": 200,
                                  "publisher": "PublisherA", "language": "English",
                                  "served_by": pod})

    async def reviews(req: web.Request) -> web.Response:
        out: dict[str, object] = {"id": req.match_info["id"], "podname": pod, "reviews": [
            {"reviewer": "Reviewer1", "text": "An extremely entertaining play by Shakespeare."},
            {"reviewer": "Reviewer2", "text": "Absolutely fun and entertaining."}]}
        if version in STARS:
            st, ratings = await fetch(await session(req), f"http://ratings:9080/ratings/{req.match_info['id']}")
            out["ratings"] = {"color": STARS[version], "status": st, "value": ratings}
            if st != 200:
                return web.json_response(out, status=503)
        return web.json_response(out)

    async def ratings(req: web.Request) -> web.Response:
        return web.json_response({"id": int(req.match_info["id"]),
                                  "ratings": {"Reviewer1": 5, "Reviewer2": 4}})

    app.router.add_get("/health", health)
    routes = {"productpage": [("/productpage", productpage), ("/", productpage)],
              "details": [("/details/{id:\\d+}", details)],
              "reviews": [("/reviews/{id:\\d+}", reviews)],
              "ratings": [("/ratings/{id:\\d+}", ratings)]}
    for path, handler in routes[service]:
        app.router.add_get(path, handler)
    return app


async def serve(service: str, version: str, pod: str, port: int) -> None:
    runner = web.AppRunner(make_app(service, version, pod), access_log=None)
    await runner.setup()
    # asyncio makes IPv6 listeners v6-only: listen on both families explicitly.
    for host in ("0.0.0.0", "::"):
        await web.TCPSite(runner, host=host, port=port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description="a bookinfo service for webb's demo")
    p.add_argument("--service", required=True, choices=["productpage", "details", "reviews", "ratings"])
    p.add_argument("--version", default="v1")
    p.add_argument("--pod", default=os.environ.get("HOSTNAME", "pod"))
    p.add_argument("--port", type=int, default=9080)
    a = p.parse_args()
    asyncio.run(serve(a.service, a.version, a.pod, a.port))


if __name__ == "__main__":
    main()

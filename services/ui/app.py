"""The FastAPI application: the page, its static assets, the JSON API and live events."""
from __future__ import annotations

import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, AsyncIterator

from fastapi import FastAPI, HTTPException, Query as Q, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from google.protobuf.json_format import MessageToDict

from . import schemas
from .flow_row import to_json
from .live import event_stream
from .query import KINDS, Query, QueryError, build_query, grammar
from .relay import RelayClient
from .settings import Settings
from .view import Views

STATIC = Path(__file__).resolve().parent / "static"
Namespace = Annotated[str, Q(description="namespace to show; empty for all namespaces")]
Filters = Annotated[list[str], Q(
    description="filter terms `[!][from:|to:|either:]kind=value`, repeatable; kinds: " + ", ".join(KINDS))]


def _query(namespace: str, filters: list[str]) -> Query:
    try:
        return build_query(namespace, filters)
    except QueryError as e:
        raise HTTPException(status_code=400, detail=str(e)) from None


def _request_json(q: Query) -> dict[str, Any]:
    ff = q.flow_filters()
    wl, bl = ff if ff is not None else ([], [])
    return {"namespace": q.namespace, "filters": [str(t) for t in q.terms],
            "whitelist": [MessageToDict(f, preserving_proto_field_name=True) for f in wl],
            "blacklist": [MessageToDict(f, preserving_proto_field_name=True) for f in bl],
            "matches_nothing": ff is None}


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def create_app(settings: Settings, relay: RelayClient | None = None) -> FastAPI:
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        r = relay or RelayClient(settings.server, settings.poll_interval)
        views = Views(r, settings)
        state["relay"], state["views"] = r, views
        r.start()
        views.start()
        try:
            yield
        finally:
            await views.close()
            await r.close()

    # FastAPIOffline: /docs and /redoc load Swagger UI from the package, never from a CDN.
    app = FastAPIOffline(
        title="webb UI", version="0.1.0", lifespan=lifespan,
        description="Service map and flows of a Hubble-compatible relay. Every endpoint takes the "
                    "view's `namespace` and `filter` terms; the filters are sent to the relay as "
                    "Hubble FlowFilters (see `/api/filters`).")
    app.state.settings = settings
    app.state.ui = state

    def relay_() -> RelayClient:
        return state["relay"]

    def views_() -> Views:
        return state["views"]

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/status", response_model=schemas.Status, summary="relay connection, nodes, views")
    async def status() -> dict[str, Any]:
        return {"relay": relay_().status(),
                "views": [v.status() for v in views_().views.values()],
                "process": {"rss_mb": _rss_mb(), "pid": os.getpid(), "time": time.time()}}

    @app.get("/api/namespaces", response_model=schemas.Namespaces, summary="namespaces with flows")
    async def namespaces() -> dict[str, Any]:
        names = set(await relay_().namespaces())
        for v in views_().views.values():
            names.update(c.sid.namespace for c in v.map.cards.values() if c.sid.namespace)
        return {"namespaces": sorted(names)}

    @app.get("/api/filters", response_model=schemas.FilterRequest,
             summary="the FlowFilters a view sends to the relay")
    async def filters(namespace: Namespace = "", filter: Filters = []) -> dict[str, Any]:  # noqa: B006
        return _request_json(_query(namespace, filter))

    @app.get("/api/filters/grammar", summary="the filter term syntax (what the page parses with)")
    async def filter_grammar() -> dict[str, Any]:
        return grammar()

    @app.get("/api/map", response_model=schemas.ServiceMap, summary="service map with layout")
    async def service_map(namespace: Namespace = "", filter: Filters = []) -> dict[str, Any]:  # noqa: B006
        q = _query(namespace, filter)
        v = await views_().ready(q)
        return {**v.snapshot(), "request": _request_json(q), "view": v.status()}

    @app.get("/api/flows", response_model=schemas.Flows, summary="recent flows, newest last")
    async def flows(namespace: Namespace = "", filter: Filters = [],  # noqa: B006
                    limit: Annotated[int, Q(ge=1, le=10000)] = 100,
                    after: Annotated[int, Q(ge=0, description="only flows after this seq")] = 0
                    ) -> dict[str, Any]:
        q = _query(namespace, filter)
        v = await views_().ready(q)
        rows, skipped = v.rows_since(after, limit)
        return {"rows": rows, "skipped": skipped, "seq": v.seq,
                "request": _request_json(q), "view": v.status()}

    @app.get("/api/flows/{flow_id}", summary="one whole flow (as `hubble observe -o json`)")
    async def flow(flow_id: str, namespace: Namespace = "", filter: Filters = []  # noqa: B006
                   ) -> JSONResponse:
        q = _query(namespace, filter)
        v = views_().views.get(q.key)
        f = v.find(flow_id) if v is not None else None
        source = "window"
        if f is None:
            for other in views_().views.values():
                f = other.find(flow_id)
                if f is not None:
                    break
        if f is None and not flow_id.startswith("~"):
            f = await relay_().find_flow(flow_id)
            source = "relay"
        if f is None:
            raise HTTPException(404, f"flow {flow_id} is no longer in the UI's window nor the relay's history")
        return JSONResponse({"flow": to_json(f), "source": source})

    @app.get("/api/events", summary="live updates (server-sent events: status, map, flows)",
             response_class=StreamingResponse)
    async def events(request: Request, namespace: Namespace = "", filter: Filters = [],  # noqa: B006
                     after: Annotated[int | None, Q(ge=0)] = None) -> StreamingResponse:
        q = _query(namespace, filter)
        v = await views_().get(q)
        return StreamingResponse(
            event_stream(v, relay_(), settings, after), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app

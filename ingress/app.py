"""The ingress application: `create_app(settings)` puts wiring, routes and lifespan together.

Everything is built once here (targets, clients, queues, stores) so a request
only does its own work. Starting it programmatically (benchmarks, tests):

    app = create_app(settings)            # or create_app(settings, redis=r, http_client=c)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on")
    await uvicorn.Server(config).serve()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import httpx2
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.middleware import Middleware

from ingress.chat.credentials import UpstreamAuth
from ingress.http import errors, limits
from ingress.http.access import AccessLog
from ingress.http.openapi import openapi_document
from ingress.http.tracing import TracingMiddleware
from ingress.lifespan import make_lifespan
from ingress.routes import route_table
from ingress.wiring import make_parts, wire
from orchestrator.core.settings import Settings
from orchestrator.queues.base import Queue
from orchestrator.telemetry import factory as telemetry
from orchestrator.telemetry.base import Telemetry
from orchestrator.utilisation.base import TokenRecorder


def create_app(
    settings: Settings,
    *,
    redis: aioredis.Redis | None = None,
    http_client: httpx2.AsyncClient | None = None,
    queues: Mapping[str, Queue] | None = None,
    token_sink: TokenRecorder | None = None,
    auth: UpstreamAuth | None = None,
    clock: Callable[[], float] = time.time,
    tracing: Telemetry | None = None,
    shared_metrics: str | None = None,
) -> Starlette:
    """The ingress ASGI app; clients passed in are the caller's to close, the rest its own.

    Its parts are built by `wiring`, its routes are `routes.route_table` (each handler
    carrying its `@operation` contract; `app.state.openapi` is the document generated
    from that table), its background work is `lifespan`'s.

    `queues` (deployment -> Queue), `token_sink` and `auth` replace the ones built
    from settings (tests, benchmarks); `clock` stamps requests and token events;
    `tracing` replaces the telemetry built from the `OTEL_*` settings (and is the
    caller's to shut down); `shared_metrics`, the metrics directory of the processes of
    `ptu ingress --workers N` (`ingress.processes`).
    """
    parts = make_parts(settings, redis, http_client, queues, token_sink, auth, clock)
    owns_tracing = tracing is None
    tracer = tracing if tracing is not None else telemetry.from_settings(settings, "ptu-ingress")
    w = wire(
        settings, parts, tracer, clock, inline=queues is not None, shared_metrics=shared_metrics
    )
    routes = route_table(w)
    lifespan = make_lifespan(w, owns_tracing=owns_tracing)
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(AccessLog),
            *([Middleware(TracingMiddleware, telemetry=w.tracer)] if w.tracer.enabled else []),
            Middleware(limits.RequestLimits),
        ],
        exception_handlers={**errors.exception_handlers(w.metrics), **limits.handlers()},
    )
    app.state.openapi = openapi_document(routes, [d.name for d in settings.deployments])
    app.state.metrics = w.metrics
    app.state.results = w.results
    return app

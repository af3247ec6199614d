"""The ingress application: `create_app(settings)` wires routes to their collaborators.

Everything is built once here (targets, clients, queues, stores) so a request
only does its own work. Starting it programmatically (benchmarks, tests):

    app = create_app(settings)            # or create_app(settings, redis=r, http_client=c)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on")
    await uvicorn.Server(config).serve()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx2
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ingress.batch.file_routes import FileRoutes
from ingress.batch.files import Files
from ingress.batch.filestore.factory import make_file_store
from ingress.batch.job import warm as job_warm
from ingress.batch.jobs import BatchJobs
from ingress.batch.offload import Offload
from ingress.batch.routes import BatchRoutes
from ingress.batch.runner import BatchWork
from ingress.batch.store import BatchStore
from ingress.batch.validate import warm as validate_warm
from ingress.chat.accounting import Accounting
from ingress.chat.credentials import UpstreamAuth, deployment_auths, upstream_auth
from ingress.chat.limits import TenantLimits
from ingress.chat.proxy import Proxy
from ingress.chat.routes import ChatRoutes
from ingress.chat.spillover import SpilloverPolicy
from ingress.chat.targets import make_client, targets
from ingress.chat.token_events import TokenEvents
from ingress.http import errors, limits
from ingress.http.auth import Authenticator
from ingress.http.health import readiness
from ingress.http.models import Health, Readiness
from ingress.http.openapi import Reply, openapi_document, operation
from ingress.http.tracing import TracingMiddleware
from ingress.metrics import IngressMetrics
from ingress.queued.enqueue import Enqueuer
from ingress.queued.requests import RequestsApi
from orchestrator.breaker.shared import SharedBreaker, breaker_config
from orchestrator.core import redis_client
from orchestrator.core.incarnation import Incarnation, watch_incarnation
from orchestrator.core.results import ResultStore
from orchestrator.core.runtime import Pacing
from orchestrator.core.settings import Settings
from orchestrator.queues.base import Queue
from orchestrator.queues.factory import make_queue
from orchestrator.telemetry import factory as telemetry
from orchestrator.telemetry.base import Telemetry
from orchestrator.tenants.cached import CachedLedger
from orchestrator.tenants.config import Tenancy
from orchestrator.utilisation.base import TokenRecorder
from orchestrator.utilisation.estimate.store import EstimateStore
from orchestrator.utilisation.store_factory import estimate_store

log = structlog.get_logger(__name__)

REDIS_MAX_CONNECTIONS = 1024
REDIS_POOL_WAIT_S = 5.0

PREFIXES = ("/v1", "/openai", "/openai/v1")
"""Where the OpenAI-shaped routes live: OpenAI clients use /v1, AzureOpenAI clients /openai."""


@dataclass
class _Parts:
    """What one app is made of, and which of it the app must close."""

    settings: Settings
    redis: aioredis.Redis
    http: httpx2.AsyncClient
    upstream: UpstreamAuth
    queues: dict[str, Queue]
    estimate: EstimateStore | None
    events: TokenEvents
    metrics: IngressMetrics = field(default_factory=IngressMetrics)
    accounting: Accounting | None = None
    ledger: CachedLedger | None = None
    owned: set[str] = field(default_factory=set)

    async def close(self) -> None:
        """Wait for pending token events and usage writes, then close what the app created."""
        await self.events.drain()
        if self.accounting is not None:
            await self.accounting.drain()
        if self.ledger is not None:
            await self.ledger.close()
        if "auth" in self.owned:
            await self.upstream.close()
        if "http" in self.owned:
            await self.http.aclose()
        if "queues" in self.owned:
            for q in self.queues.values():
                await q.close()
        if "redis" in self.owned:
            await self.redis.aclose()


def _parts(
    settings: Settings,
    redis: aioredis.Redis | None,
    http_client: httpx2.AsyncClient | None,
    queues: Mapping[str, Queue] | None,
    token_sink: TokenRecorder | None,
    auth: UpstreamAuth | None,
    clock: Callable[[], float],
) -> _Parts:
    owned = {
        name
        for name, given in (
            ("redis", redis), ("http", http_client), ("queues", queues), ("auth", auth)
        )
        if given is None
    }  # fmt: skip
    if redis is None:
        # a blocking pool waits for a free connection instead of failing at 100 in use;
        # every long-poll (`?wait=`) holds one connection while it waits
        redis = redis_client.connect(
            settings.redis_url,
            cluster=settings.redis_cluster,
            max_connections=REDIS_MAX_CONNECTIONS,
            pool_timeout_s=REDIS_POOL_WAIT_S,
        )
    provisioned = [d for d in settings.deployments if d.kind == "provisioned"]
    if queues is None:
        consumer = f"ingress-{socket.gethostname()}-{os.getpid()}"
        queues = {d.name: make_queue(settings, d.name, redis, consumer) for d in provisioned}
    estimate = None
    if token_sink is None and provisioned:
        estimate = estimate_store(settings, redis, provisioned, clock=clock)
        token_sink = estimate
    return _Parts(
        settings=settings,
        redis=redis,
        http=http_client or make_client(settings),
        upstream=auth or upstream_auth(settings),
        queues=dict(queues),
        estimate=estimate,
        events=TokenEvents(token_sink, clock=clock),
        owned=owned,
    )


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
) -> Starlette:
    """The ingress ASGI app; clients passed in are the caller's to close, the rest its own.

    Its routes are the table below, each handler carrying its `@operation`
    contract; `app.state.openapi` is the document generated from that table.

    `queues` (deployment -> Queue), `token_sink` and `auth` replace the ones built
    from settings (tests, benchmarks); `clock` stamps requests and token events;
    `tracing` replaces the telemetry built from the `OTEL_*` settings (and is the
    caller's to shut down).
    """
    parts = _parts(settings, redis, http_client, queues, token_sink, auth, clock)
    owns_tracing = tracing is None
    tracer = tracing if tracing is not None else telemetry.from_settings(settings, "ptu-ingress")
    tenancy = Tenancy(settings.tenants, settings.api_keys)
    metrics = parts.metrics = IngressMetrics(
        tenants=tenancy.names(), deployments=[d.name for d in settings.deployments]
    )
    # limit checks on a copy of the counters re-read at most every 0.2 s: no Redis round
    # trip per request on the high-priority path (orchestrator.tenants.cached)
    ledger = parts.ledger = CachedLedger(parts.redis, tenancy, clock=clock)
    accounting = parts.accounting = Accounting(metrics, ledger)
    deployments = targets(settings, deployment_auths(settings, parts.upstream))
    results = ResultStore(parts.redis, settings.reply_ttl_s)
    tenants = Authenticator(tenancy)
    config = breaker_config(settings)
    breakers = {
        d.name: SharedBreaker(
            parts.redis, d.name, config, endpoint=settings.endpoint_of(d) or "",
            on_change=metrics.circuit,
        )
        for d in settings.deployments
    }  # fmt: skip
    proxy = Proxy(
        parts.http, parts.upstream, parts.events, metrics,
        policy=SpilloverPolicy(settings.spillover_wait_ms, breakers), accounting=accounting,
        telemetry=tracer,
    )  # fmt: skip
    incarnation = Incarnation(parts.redis, on_loss=metrics.redis_data_lost.inc, clock=clock)
    enqueuer = Enqueuer(
        results, parts.queues, metrics, clock=clock, ids=incarnation.new_request_id,
        telemetry=tracer,
    )  # fmt: skip
    tenant_limits = TenantLimits(tenancy, ledger, accounting)
    chat = ChatRoutes(settings, deployments, tenants, proxy, enqueuer, metrics, tenant_limits)
    requests_api = RequestsApi(results, tenants, issued_before_loss=incarnation.issued_before)
    files = Files(parts.redis, make_file_store(settings), clock=clock)
    batch_store = BatchStore(parts.redis, clock=clock)
    # validation and batch jobs run in processes of their own (in threads when the
    # caller injected its own queues: they exist only in this process)
    inline = queues is not None
    validator, job_runner = Offload("validate", inline=inline), Offload("jobs", inline=inline)
    jobs = BatchJobs(batch_store, settings, job_runner, clock=clock)
    work = BatchWork(
        results, proxy, deployments, quota=ledger,
        query="?api-version=" + quote(settings.azure_openai_api_version),
        concurrency=settings.max_concurrency, retry=settings.retry_policy(),
        pacing=Pacing(clock=clock),
    )  # fmt: skip
    file_routes = FileRoutes(files, tenants, deployments, validator)
    batches = BatchRoutes(
        settings, deployments, tenants, batch_store, files, work, jobs, metrics,
        limits=tenant_limits, clock=clock,
    )  # fmt: skip

    @operation("liveness", {200: Reply("alive", Health)})
    async def healthz(request: Request) -> Response:
        try:
            await parts.redis.ping()
            store = "ok"
        except (RedisError, OSError):
            store = "unavailable"
        return JSONResponse({"status": "ok", "redis": store})

    @operation(
        "readiness: Redis takes writes, every queue answers, utilisation is readable",
        {200: Reply("ready, check by check", Readiness)},
        errors=(503,),
    )
    async def readyz(request: Request) -> Response:
        checks = await readiness(parts.redis, parts.queues, parts.estimate)
        failing = {name: state for name, state in checks.items() if state != "ok"}
        if failing:
            detail = "; ".join(f"{name}: {state}" for name, state in failing.items())
            raise errors.ApiError(503, "not_ready", f"not ready: {detail}"[:1000])
        return JSONResponse(Readiness(status="ready", checks=checks).model_dump())

    @operation("Prometheus metrics", {200: Reply("text exposition", media_type="text/plain")})
    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @operation("this document (OpenAPI 3.1)", {200: Reply("the document")})
    async def openapi(request: Request) -> Response:
        return JSONResponse(request.app.state.openapi)

    routes = [
        Route("/openai/deployments/{deployment}/chat/completions", chat.azure, methods=["POST"]),
        Route("/v1/requests/{request_id}", requests_api.get, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    for p in PREFIXES:
        routes += [
            Route(f"{p}/chat/completions", chat.openai, methods=["POST"]),
            Route(f"{p}/responses", chat.responses, methods=["POST"]),
            Route(f"{p}/files", file_routes.upload, methods=["POST"]),
            Route(f"{p}/files", file_routes.list_files, methods=["GET"]),
            Route(f"{p}/files/{{file_id}}", file_routes.retrieve, methods=["GET"]),
            Route(f"{p}/files/{{file_id}}", file_routes.delete, methods=["DELETE"]),
            Route(f"{p}/files/{{file_id}}/content", file_routes.content, methods=["GET"]),
            Route(f"{p}/batches", batches.create, methods=["POST"]),
            Route(f"{p}/batches", batches.list_batches, methods=["GET"]),
            Route(f"{p}/batches/{{batch_id}}", batches.retrieve, methods=["GET"]),
            Route(f"{p}/batches/{{batch_id}}/cancel", batches.cancel, methods=["POST"]),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # this ingress folds high priority into the estimate itself: it is a feeder
        beat = asyncio.create_task(
            parts.estimate.keep_alive() if parts.estimate else asyncio.Event().wait()
        )
        watch = asyncio.create_task(watch_incarnation(incarnation))
        sweeper = asyncio.create_task(jobs.run())
        warming = [
            asyncio.create_task(validator.warm(validate_warm)),
            asyncio.create_task(job_runner.warm(job_warm)),
        ]
        log.info("ingress_started", deployments=list(deployments), open=tenants.open)
        try:
            yield
        finally:
            for task in (beat, watch, sweeper, *warming):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await jobs.stop()
            await work.stop()
            for offload in (validator, job_runner):
                await offload.close()
            await files.store.close()
            await parts.close()
            if owns_tracing:
                tracer.shutdown()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            *([Middleware(TracingMiddleware, telemetry=tracer)] if tracer.enabled else []),
            Middleware(limits.RequestLimits),
        ],
        exception_handlers={**errors.exception_handlers(metrics), **limits.handlers()},
    )
    app.state.openapi = openapi_document(routes, [d.name for d in settings.deployments])
    app.state.metrics = metrics
    app.state.results = results
    return app

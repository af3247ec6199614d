"""What one ingress is made of, built once from settings: clients, stores and route handlers.

`make_parts` builds (or takes from the caller) the clients and stores the app must close;
`wire` builds every collaborator of the routes on them, so a request only does its own work.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx2
import redis.asyncio as aioredis
import structlog

from ingress.batch.deadline.overflow import DeadlineOverflow
from ingress.batch.file_routes import FileRoutes
from ingress.batch.files import Files
from ingress.batch.filestore.factory import make_file_store
from ingress.batch.jobs import BatchJobs
from ingress.batch.offload import Offload
from ingress.batch.routes import BatchBackends, BatchRoutes
from ingress.batch.runner import BatchWork
from ingress.batch.store import BatchStore
from ingress.chat.accounting import Accounting
from ingress.chat.credentials import UpstreamAuth, deployment_auths, upstream_auth
from ingress.chat.limits import TenantLimits
from ingress.chat.pool import PoolRouter
from ingress.chat.proxy import Proxy
from ingress.chat.routes import ChatRoutes, QueuedPaths
from ingress.chat.spillover import SpilloverPolicy
from ingress.chat.targets import Target, make_client, targets
from ingress.chat.token_events import TokenEvents
from ingress.http.auth import Authenticator
from ingress.http.models import MAX_TTL_S
from ingress.metrics import IngressMetrics
from ingress.queued.background import BackgroundResponses
from ingress.queued.completions import Completions
from ingress.queued.enqueue import Enqueuer
from ingress.queued.requests import RequestsApi
from ingress.queued.waiting import Waiting
from orchestrator.breaker.shared import SURFACES, SharedBreaker, Sharing, breaker_config
from orchestrator.core import redis_client
from orchestrator.core.fail_open import FailOpen
from orchestrator.core.incarnation import Incarnation
from orchestrator.core.losses import Losses
from orchestrator.core.operator_key import OperatorKey
from orchestrator.core.replication import Replication
from orchestrator.core.results import ResultStore
from orchestrator.core.runtime import Pacing
from orchestrator.core.settings import Settings
from orchestrator.queues.base import Queue
from orchestrator.queues.factory import make_queue, pool_queues
from orchestrator.queues.redis_streams.reconcile import Reconciler, reconcile_grace_s
from orchestrator.telemetry.base import Telemetry
from orchestrator.tenants.cached import CachedLedger
from orchestrator.tenants.config import Tenancy
from orchestrator.utilisation.base import TokenRecorder
from orchestrator.utilisation.batched import BatchedRecorder
from orchestrator.utilisation.estimate.store import EstimateStore
from orchestrator.utilisation.store_factory import estimate_store

log = structlog.get_logger(__name__)

REDIS_MAX_CONNECTIONS = 1024
REDIS_POOL_WAIT_S = 5.0
CLOSE_DRAIN_S = 2.0
"""At shutdown, how long pending token events and usage writes may still take (each)."""


@dataclass
class Parts:
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
    guard: FailOpen = field(default_factory=FailOpen)
    owned: set[str] = field(default_factory=set)

    async def close(self) -> None:
        """Wait for pending token events and usage writes (at most `CLOSE_DRAIN_S` each: a
        dead Redis must not hold the stop), then close what the app created."""
        cut = await self.events.drain(CLOSE_DRAIN_S)
        if self.accounting is not None:
            cut += await self.accounting.drain(CLOSE_DRAIN_S)
        if cut:
            log.warning("close_writes_cut", pending=cut, within_s=CLOSE_DRAIN_S)
        if "auth" in self.owned:
            await self.upstream.close()
        if "http" in self.owned:
            await self.http.aclose()
        try:  # what is left says goodbye to Redis (liveness keys): as far as it answers
            async with asyncio.timeout(CLOSE_DRAIN_S):
                if self.ledger is not None:
                    await self.ledger.close()
                if "queues" in self.owned:  # a pool's members share its queue: close it once
                    for q in {id(q): q for q in self.queues.values()}.values():
                        await q.close()
        except TimeoutError:
            log.warning("close_redis_cut", within_s=CLOSE_DRAIN_S)
        if "redis" in self.owned:
            await self.redis.aclose()


def make_parts(
    settings: Settings,
    redis: aioredis.Redis | None,
    http_client: httpx2.AsyncClient | None,
    queues: Mapping[str, Queue] | None,
    token_sink: TokenRecorder | None,
    auth: UpstreamAuth | None,
    clock: Callable[[], float],
) -> Parts:
    """The clients and stores of one app: those not given are built here, and owned."""
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
        redis = redis_client.connect_view(
            settings.redis,
            max_connections=REDIS_MAX_CONNECTIONS,
            pool_timeout_s=REDIS_POOL_WAIT_S,
        )
    provisioned = [d for d in settings.deployments if d.kind == "provisioned"]
    if queues is None:
        consumer = f"ingress-{socket.gethostname()}-{os.getpid()}"
        queues = pool_queues(
            settings, lambda name: make_queue(settings, name, redis, consumer), provisioned
        )
    estimate = None
    if token_sink is None and provisioned:
        estimate = estimate_store(settings, redis, provisioned, clock=clock)
        token_sink = BatchedRecorder(estimate)  # one batch per deployment in flight
    return Parts(
        settings=settings,
        redis=redis,
        http=http_client or make_client(settings),
        upstream=auth or upstream_auth(settings),
        queues=dict(queues),
        estimate=estimate,
        events=TokenEvents(token_sink, clock=clock),
        owned=owned,
    )


@dataclass(frozen=True, slots=True)
class Wired:
    """The collaborators of the routes and of the app's lifespan."""

    settings: Settings
    parts: Parts
    tracer: Telemetry
    metrics: IngressMetrics
    deployments: dict[str, Target]
    tenants: Authenticator
    results: ResultStore
    incarnation: Incarnation
    losses: Losses
    reconciler: Reconciler
    chat: ChatRoutes
    requests_api: RequestsApi
    background: BackgroundResponses
    waiting: Waiting
    files: Files
    validator: Offload
    job_runner: Offload
    jobs: BatchJobs
    work: BatchWork
    overflow: DeadlineOverflow
    file_routes: FileRoutes
    batches: BatchRoutes
    operator_key: OperatorKey
    """What `/metrics` and `/openapi.json` ask for (`PTU_METRICS_API_KEY`)."""


def wire(
    settings: Settings,
    parts: Parts,
    tracer: Telemetry,
    clock: Callable[[], float],
    *,
    inline: bool,
    shared_metrics: str | None = None,
) -> Wired:
    """Every collaborator of the routes, on `parts`; `inline` runs the offload work in threads
    (when the caller injected its own queues: they exist only in this process)."""
    tenancy = Tenancy(settings.tenants, settings.api_keys)
    metrics = parts.metrics = IngressMetrics(
        tenants=tenancy.names(),
        deployments=[d.name for d in settings.deployments],
        shared=shared_metrics,
    )
    # every Redis call of the interactive path has a deadline and fails open (core/fail_open)
    guard = parts.guard = FailOpen(on_fail_open=metrics.redis_fail_open)
    # token events keep a cool-down of their own: a breaker sync that overran its 75 ms on
    # a busy event loop must not drop a second of the estimate's charges with it; batched,
    # the deadline is each batch's write (utilisation/batched)
    events_guard = FailOpen(on_fail_open=metrics.redis_fail_open)
    if isinstance(parts.events.sink, BatchedRecorder):
        parts.events.sink.guard = events_guard
    else:
        parts.events.guard = events_guard
    # limit checks on a copy of the counters re-read at most every 0.2 s: no Redis round
    # trip per request on the high-priority path (orchestrator.tenants.cached)
    ledger = parts.ledger = CachedLedger(parts.redis, tenancy, clock=clock)
    accounting = parts.accounting = Accounting(metrics, ledger)
    deployments = targets(settings, deployment_auths(settings, parts.upstream))
    results = ResultStore(parts.redis, settings.reply_ttl_s)
    tenants = Authenticator(tenancy, settings.trusted_front_secret)
    operator_key = OperatorKey(settings.metrics_api_key)
    operator_key.warn_if_open("ingress", tenancy.names())
    config = breaker_config(settings)
    breakers = {
        (d.name, surface): SharedBreaker(
            parts.redis, d.name, config, endpoint=settings.endpoint_of(d) or "", surface=surface,
            on_change=metrics.circuit if surface == "chat" else None, sharing=Sharing(guard=guard),
        )
        for d in settings.deployments
        for surface in SURFACES
    }  # fmt: skip
    pools = (
        PoolRouter(settings, parts.estimate, breakers, guard=guard, clock=clock)
        if settings.pools
        else None
    )
    proxy = Proxy(
        parts.http, parts.upstream, parts.events, metrics,
        policy=SpilloverPolicy(settings.spillover_wait_ms, breakers, pools=pools),
        accounting=accounting, telemetry=tracer,
    )  # fmt: skip
    incarnation = Incarnation(parts.redis, on_loss=metrics.redis_data_lost.inc, clock=clock)
    replication = Replication(
        parts.redis, settings.redis_wait_replicas, settings.redis_wait_timeout_ms,
        on_shortfall=metrics.replication_shortfall.inc,
    )  # fmt: skip
    enqueuer = Enqueuer(
        results, parts.queues, metrics, clock=clock, ids=incarnation.new_request_id,
        telemetry=tracer, replication=replication,
    )  # fmt: skip
    losses = Losses(results, on_lost=lambda found: metrics.requests_lost.labels(found).inc())
    interval_s = settings.reconcile_interval_s if settings.queue_backend == "redis" else 0.0
    reconciler = Reconciler(
        parts.redis, losses, interval_s=interval_s, grace_s=reconcile_grace_s(interval_s),
        clock=clock,
    )  # fmt: skip
    tenant_limits = TenantLimits(tenancy, ledger, accounting, guard)
    requests_api = RequestsApi(
        results, tenants, issued_before_loss=incarnation.issued_before, issued=incarnation.issued,
        losses=losses, kept_s=MAX_TTL_S + settings.reply_ttl_s, clock=clock,
    )  # fmt: skip
    background = BackgroundResponses(results, enqueuer, tenants, vanished=requests_api.gone)
    # one subscription of this process wakes every waiting call (queued.completions)
    waiting = Waiting(Completions(parts.redis), results, tenancy, settings.deployments)
    queued = QueuedPaths(enqueuer, background, waiting)
    chat = ChatRoutes(settings, deployments, tenants, proxy, queued, metrics, tenant_limits)
    files = Files(parts.redis, make_file_store(settings), clock=clock)
    batch_store = BatchStore(parts.redis, clock=clock)
    # validation and batch jobs run in processes of their own (in threads when the
    # caller injected its own queues: they exist only in this process)
    validator, job_runner = Offload("validate", inline=inline), Offload("jobs", inline=inline)
    jobs = BatchJobs(batch_store, settings, job_runner, clock=clock)
    work = BatchWork(
        results, proxy, deployments, quota=ledger,
        query="?api-version=" + quote(settings.azure_openai_api_version),
        concurrency=settings.max_concurrency, retry=settings.retry_policy(),
        pacing=Pacing(clock=clock),
    )  # fmt: skip
    file_routes = FileRoutes(files, tenants, deployments, validator)
    overflow = DeadlineOverflow(
        parts.redis, batch_store, files, work, deployments, settings, clock=clock,
        owner=jobs.owner, metrics=metrics,
    )  # fmt: skip
    batches = BatchRoutes(
        settings, deployments, tenants, BatchBackends(batch_store, files, work, jobs), metrics,
        limits=tenant_limits, clock=clock,
    )  # fmt: skip
    jobs.resume = batches.resume  # a high-priority batch whose run is gone resumes here
    return Wired(
        settings=settings,
        parts=parts,
        tracer=tracer,
        metrics=metrics,
        deployments=deployments,
        tenants=tenants,
        results=results,
        incarnation=incarnation,
        losses=losses,
        reconciler=reconciler,
        chat=chat,
        requests_api=requests_api,
        background=background,
        waiting=waiting,
        files=files,
        validator=validator,
        job_runner=job_runner,
        jobs=jobs,
        work=work,
        overflow=overflow,
        file_routes=file_routes,
        batches=batches,
        operator_key=operator_key,
    )

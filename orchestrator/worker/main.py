"""`ptu worker`: the long-lived low-priority consumer process.

The entry point is the one place that picks implementations: the configured
queue backend and utilisation source, the Redis-shared throttle, the Redis
result store, and the Azure OpenAI upstream (API key or Entra ID).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import redis.asyncio as aioredis
import structlog

from orchestrator.breaker.shared import SharedBreaker, breaker_config
from orchestrator.core import logs, redis_client, startup
from orchestrator.core.errors import ConfigError
from orchestrator.core.operator_key import OperatorKey
from orchestrator.core.pools import queue_key
from orchestrator.core.replication import Replication
from orchestrator.core.results import ResultStore
from orchestrator.core.runtime import STOP_AFTER_DRAIN_S, every, run_until_signal
from orchestrator.core.settings import DeploymentConfig, Settings
from orchestrator.queues.base import Queue
from orchestrator.queues.factory import make_queue
from orchestrator.queues.fair import FairShareState
from orchestrator.telemetry import factory as telemetry
from orchestrator.telemetry.base import OFF, Telemetry
from orchestrator.tenants.config import Tenancy
from orchestrator.tenants.ledger import UsageLedger
from orchestrator.throttle.admission import Admission
from orchestrator.throttle.limiter import Throttle
from orchestrator.utilisation.base import UtilisationSource
from orchestrator.utilisation.batched import BatchedRecorder
from orchestrator.utilisation.factory import make_source
from orchestrator.utilisation.store_factory import estimate_store
from orchestrator.worker import spillover_check
from orchestrator.worker.accounting import WorkerAccounting
from orchestrator.worker.dispatch import Delivering, DispatchConfig, Dispatcher, Gates, Reporting
from orchestrator.worker.health import BEAT_S, Health
from orchestrator.worker.lengths import OutputLengths, Sizer
from orchestrator.worker.loop import Lane, Worker, WorkerTiming
from orchestrator.worker.metrics import WorkerMetrics
from orchestrator.worker.upstream import Upstream
from orchestrator.worker.upstreams import RoutedUpstream

log = structlog.get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--deployment` (repeatable), `--worker-id`, `--metrics-port`."""
    parser.add_argument(
        "--deployment",
        action="append",
        metavar="NAME",
        help="deployment to consume for (repeatable; default: every provisioned one)",
    )
    parser.add_argument(
        "--worker-id",
        default=None,
        help="consumer name and slot owner (default HOST-PID)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus /metrics on this port (default PTU_METRICS_PORT; unset: off)",
    )


def select_deployments(settings: Settings, names: Sequence[str] | None) -> list[DeploymentConfig]:
    """The named deployments (a pool's name: its members), or every provisioned one;
    ConfigError when none or unknown."""
    if names:
        chosen: list[DeploymentConfig] = []
        pools = settings.pools
        for name in names:
            d = settings.deployment(name)
            if d is None and name in pools:
                chosen.extend(m for m in pools[name].members if m not in chosen)
                continue
            if d is None:
                raise ConfigError(f"PTU_DEPLOYMENTS: no deployment or pool named {name!r}")
            if d not in chosen:
                chosen.append(d)
        return chosen
    chosen = [d for d in settings.deployments if d.kind == "provisioned"]
    if not chosen:
        raise ConfigError("PTU_DEPLOYMENTS: the worker needs at least one provisioned deployment")
    return chosen


@dataclass
class Built:
    """A wired worker and what must be closed after it ran."""

    worker: Worker
    queues: list[Queue]
    source: UtilisationSource
    upstream: Upstream

    async def close(self) -> None:
        """Close queues, the source and the upstream client."""
        for queue in self.queues:
            await queue.close()
        await self.source.close()
        await self.upstream.close()


def build_worker(
    settings: Settings,
    redis: aioredis.Redis,
    deployments: Sequence[DeploymentConfig],
    worker_id: str,
    *,
    upstream: Upstream | None = None,
    metrics: WorkerMetrics | None = None,
    source: UtilisationSource | None = None,
    timing: WorkerTiming | None = None,
    tracing: Telemetry = OFF,
) -> Built:
    """Wire lanes for `deployments` from settings (collaborators may be passed in)."""
    source = source if source is not None else make_source(settings, redis)
    upstream = (
        upstream if upstream is not None else RoutedUpstream.from_settings(settings, deployments)
    )
    # the worker's own calls always feed the estimate, whichever source drives the throttle
    # applied in batches per deployment: the worker's concurrent calls never conflict
    tokens = BatchedRecorder(estimate_store(settings, redis, low_priority=True))
    results = ResultStore(redis, settings.reply_ttl_s)
    tenancy = Tenancy(settings.tenants, settings.api_keys)
    ledger = UsageLedger(redis, tenancy)
    accounting = WorkerAccounting(
        tokens,
        ledger,
        {d.name: FairShareState(redis, queue_key(d)) for d in deployments},
        tenancy,
        metrics.tenants if metrics is not None else None,
    )
    sizer = (
        Sizer(OutputLengths(redis), metrics=metrics)
        if settings.size_max_tokens == "auto"
        else Sizer.off()
    )
    config = DispatchConfig(
        retry=settings.retry_policy(),
        request_timeout_s=settings.request_timeout_s,
        default_max_tokens=settings.default_max_tokens,
    )
    lanes, queues = [], []
    breaker_cfg = breaker_config(settings)
    for d in deployments:
        lower, upper, _ = settings.thresholds(d)
        if metrics is not None:
            metrics.thresholds(d.name, lower, upper)
            if d.pool is not None:
                metrics.member(d.pool, d.name)
        endpoint = upstream.endpoint(d.name) if isinstance(upstream, RoutedUpstream) else ""
        breaker = SharedBreaker(
            redis,
            d.name,
            breaker_cfg,
            endpoint=endpoint,
            on_change=metrics.circuit if metrics is not None else None,
        )
        responses_breaker = SharedBreaker(
            redis, d.name, breaker_cfg, endpoint=endpoint, surface="responses"
        )
        throttle = Throttle(redis, d, source, settings.throttle, worker_id=worker_id)
        admission = Admission(
            d,
            throttle.current,
            upper=upper,
            window_s=settings.estimate_window_s,
            max_age_s=source.max_age_s,
        )
        # a pool's members share its queue, each lane a consumer of its own
        consumer = worker_id if d.pool is None else f"{worker_id}.{d.name}"
        queue = make_queue(settings, queue_key(d), redis, consumer)
        replication = Replication(
            redis, settings.redis_wait_replicas, settings.redis_wait_timeout_ms
        )
        queues.append(queue)
        hand_over = d.pool is not None and len(settings.pools[d.pool].members) > 1
        dispatcher = Dispatcher(
            d.name,
            delivering=Delivering(queue, results, replication),
            upstream=upstream,
            config=replace(config, low_priority_spill=d.low_priority_spill, hand_over=hand_over),
            gates=Gates(
                throttle,
                breaker=breaker,
                responses_breaker=responses_breaker,
                admission=admission,
                quota=ledger,
            ),
            reporting=Reporting(
                accounting, metrics=metrics, telemetry=tracing, counts=redis, usage=accounting
            ),
            sizer=sizer,
        )
        lanes.append(Lane(d.name, queue, throttle, dispatcher, pool=d.pool))
    timing = timing or WorkerTiming(
        drain_timeout_s=settings.drain_timeout_s, renew_s=settings.slot_lease_s / 4
    )
    worker = Worker(worker_id, lanes, timing=timing, redis=redis, metrics=metrics)
    return Built(worker, queues, source, upstream)


def run(
    args: argparse.Namespace,
    settings: Settings | None,
    *,
    source: Callable[[Settings], UtilisationSource] | None = None,
) -> int:
    """Consume until SIGTERM/SIGINT, then drain.

    `source` builds the throttle's utilisation source in place of the configured one (a
    benchmark's yardstick); `ptu worker` leaves it None.
    """
    assert settings is not None
    logs.configure(settings.log_level, settings.log_format)
    startup.announce(settings, "worker")
    deployments = select_deployments(settings, args.deployment)
    worker_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    upstream = RoutedUpstream.from_settings(settings, deployments)
    tracing = telemetry.from_settings(settings, "ptu-worker")
    if port:
        startup.check_port("127.0.0.1", port, "PTU_METRICS_PORT")

    async def main(stop: asyncio.Event) -> int:
        structlog.contextvars.bind_contextvars(worker_id=worker_id)
        tenants = Tenancy(settings.tenants, settings.api_keys).names()
        metrics = WorkerMetrics(tenants=tenants, deployments=[d.name for d in settings.deployments])
        health = Health()
        if port is not None:
            key = OperatorKey(settings.metrics_api_key)
            key.warn_if_open("worker", tenants)
            bound = metrics.serve(port, health=health, key=key)
            log.info("metrics_serving", port=bound, probes=["/healthz", "/readyz"])

        async def beat() -> None:
            health.beat()
            if stop.is_set():
                health.stopping()

        beats = asyncio.create_task(every(BEAT_S, beat, event="health_beat", first="now"))
        redis = redis_client.connect_view(settings.redis)
        try:
            try:
                await startup.check_redis(redis, settings.redis_url)
                await upstream.check_credentials()
                await spillover_check.check(settings, deployments)
            except BaseException:  # not started: its clients and credentials closed quietly
                await upstream.close()
                raise
            health.started()
            built = build_worker(
                settings,
                redis,
                deployments,
                worker_id,
                metrics=metrics,
                upstream=upstream,
                tracing=tracing,
                source=None if source is None else source(settings),
            )
            try:
                await built.worker.run(stop)
            finally:
                await built.close()
        finally:
            beats.cancel()
            await redis.aclose()
            metrics.close()
            tracing.shutdown()
        return 0

    # whatever Redis does, the stop ends after the drain and a few seconds of bookkeeping
    return run_until_signal(main, stop_within_s=settings.drain_timeout_s + STOP_AFTER_DRAIN_S)

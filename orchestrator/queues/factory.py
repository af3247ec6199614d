"""Pick the queue backend named by `PTU_QUEUE_BACKEND`; optional SDKs load lazily.

Every backend is wrapped in the fair-share layer (`orchestrator.queues.fair`):
one inner queue per tenant, served by weight. The `default` tenant's inner queue
is the deployment's original stream or hub, so a single-tenant set-up is unchanged.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from orchestrator.core import keys, redis_client
from orchestrator.core.errors import MissingDependencyError
from orchestrator.core.settings import Settings
from orchestrator.queues.base import Queue
from orchestrator.queues.fair import FairShareQueue
from orchestrator.tenants.config import DEFAULT_TENANT, Tenancy


def make_tenant_queue(
    settings: Settings, deployment: str, redis: aioredis.Redis, consumer: str, tenant: str
) -> Queue:
    """The configured backend's queue of one tenant on one deployment."""
    _check_backend(settings)
    if settings.queue_backend == "eventhubs":
        from orchestrator.queues.eventhubs.queue import EventHubsQueue

        return EventHubsQueue.from_settings(settings, deployment, redis, consumer, tenant)
    from orchestrator.queues.redis_streams import RedisStreamsQueue

    return RedisStreamsQueue(
        redis,
        deployment,
        consumer,
        claim_idle_s=settings.queue_claim_idle_s,
        liveness_s=settings.queue_liveness_s,
        socket_timeout_s=redis_client.socket_timeout(redis),
        stream=keys.tenant_queue(deployment, tenant),
    )


def make_queue(settings: Settings, deployment: str, redis: aioredis.Redis, consumer: str) -> Queue:
    """The configured `Queue` for one deployment, consumed as `consumer`, in fair share."""
    tenancy = Tenancy(settings.tenants, settings.api_keys)
    _check_backend(settings)  # at start-up, not at the first message
    queue = FairShareQueue(
        redis,
        deployment,
        lambda tenant: make_tenant_queue(settings, deployment, redis, consumer, tenant),
        tenants=tenancy.weights(),
        sweep_s=max(0.5, min(5.0, settings.queue_claim_idle_s / 2)),
    )
    queue.inner(DEFAULT_TENANT)  # a backend misconfiguration stops start-up, not the first message
    return queue


def _check_backend(settings: Settings) -> None:
    if settings.queue_backend == "eventhubs":
        try:
            import azure.eventhub  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("azure-eventhub", "azure") from exc

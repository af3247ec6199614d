"""Pick the queue backend named by `PTU_QUEUE_BACKEND`; optional SDKs load lazily.

Every backend is wrapped in the fair-share layer (`orchestrator.queues.fair`):
one inner queue per tenant, served by weight, and each tenant's queue in the
classes layer (`orchestrator.queues.classes`): `low` before `batch`. The `default`
tenant's `low` queue is the deployment's original stream or hub, so a single-tenant
set-up without Batch API lines is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import redis.asyncio as aioredis

from orchestrator.core import keys, redis_client
from orchestrator.core.errors import MissingDependencyError
from orchestrator.core.pools import queue_key
from orchestrator.core.schemas import WorkClass
from orchestrator.core.settings import DeploymentConfig, Settings
from orchestrator.core.views import QueueView
from orchestrator.queues.base import Queue
from orchestrator.queues.classes import ClassedQueue
from orchestrator.queues.fair import FairShareQueue
from orchestrator.tenants.config import DEFAULT_TENANT, Tenancy


def make_tenant_queue(
    settings: Settings, deployment: str, redis: aioredis.Redis, consumer: str, tenant: str
) -> ClassedQueue:
    """The configured backend's queue of one tenant on one deployment, by work class."""
    queue = ClassedQueue(
        lambda work_class: make_class_queue(
            settings, deployment, redis, consumer, tenant, work_class
        )
    )
    queue.inner("low")  # a backend misconfiguration shows at once
    return queue


def make_class_queue(
    settings: Settings,
    deployment: str,
    redis: aioredis.Redis,
    consumer: str,
    tenant: str,
    work_class: WorkClass = "low",
) -> Queue:
    """The configured backend's queue of one tenant's work class on one deployment."""
    view = settings.queue
    _check_backend(view)
    if view.backend == "eventhubs":
        from orchestrator.queues.eventhubs.queue import EventHubsQueue, hub_name

        hub = hub_name(settings.eventhub_name, deployment, tenant, work_class)
        views = (settings.eventhubs, settings.checkpoints)
        return EventHubsQueue.from_view(hub, views, redis, deployment, consumer)
    from orchestrator.core.replication import Replication
    from orchestrator.queues.redis_streams import RedisStreamsQueue

    return RedisStreamsQueue(
        redis,
        deployment,
        consumer,
        claim_idle_s=view.claim_idle_s,
        liveness_s=view.liveness_s,
        socket_timeout_s=redis_client.socket_timeout(redis),
        stream=keys.tenant_queue(deployment, tenant, work_class),
        replication=Replication(
            redis, settings.redis_wait_replicas, settings.redis_wait_timeout_ms
        ),
    )


def make_queue(settings: Settings, deployment: str, redis: aioredis.Redis, consumer: str) -> Queue:
    """The configured `Queue` for one deployment, consumed as `consumer`, in fair share."""
    tenancy = Tenancy(settings.tenants, settings.api_keys)
    _check_backend(settings.queue)  # at start-up, not at the first message
    queue = FairShareQueue(
        redis,
        deployment,
        lambda tenant: make_tenant_queue(settings, deployment, redis, consumer, tenant),
        tenants=tenancy.weights(),
        sweep_s=settings.queue.sweep_s,
    )
    queue.inner(DEFAULT_TENANT)  # a backend misconfiguration stops start-up, not the first message
    return queue


def pool_queues(
    settings: Settings, make: Callable[[str], Queue], provisioned: Sequence[DeploymentConfig]
) -> dict[str, Queue]:
    """The queue a producer puts into for each name a client may use at low priority.

    A deployment's own queue; a pool's members and the pool itself share the pool's
    queue (`core.pools.queue_key`), made once.
    """
    made: dict[str, Queue] = {}
    out: dict[str, Queue] = {}
    for d in provisioned:
        key = queue_key(d)
        if key not in made:
            made[key] = make(key)
        out[d.name] = made[key]
        if d.pool is not None:
            out[d.pool] = made[key]
    return out


def _check_backend(view: QueueView) -> None:
    if view.backend == "eventhubs":
        try:
            import azure.eventhub  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("azure-eventhub", "azure") from exc

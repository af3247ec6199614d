"""Pick the queue backend named by `PTU_QUEUE_BACKEND`; optional SDKs load lazily."""

from __future__ import annotations

import redis.asyncio as aioredis

from orchestrator.core import redis_client
from orchestrator.core.errors import MissingDependencyError
from orchestrator.core.settings import Settings
from orchestrator.queues.base import Queue


def make_queue(settings: Settings, deployment: str, redis: aioredis.Redis, consumer: str) -> Queue:
    """The configured `Queue` for one deployment, consumed as `consumer`."""
    if settings.queue_backend == "eventhubs":
        try:
            import azure.eventhub  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("azure-eventhub", "azure") from exc
        from orchestrator.queues.eventhubs.queue import EventHubsQueue

        return EventHubsQueue.from_settings(settings, deployment, redis, consumer)
    from orchestrator.queues.redis_streams import RedisStreamsQueue

    return RedisStreamsQueue(
        redis,
        deployment,
        consumer,
        claim_idle_s=settings.queue_claim_idle_s,
        liveness_s=settings.queue_liveness_s,
        socket_timeout_s=redis_client.socket_timeout(redis),
    )

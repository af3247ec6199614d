"""Pick the queue backend named by `PTU_QUEUE_BACKEND`; optional SDKs load lazily."""

from __future__ import annotations

import redis.asyncio as aioredis

from orchestrator.errors import MissingDependencyError
from orchestrator.queues.base import Queue
from orchestrator.settings import Settings


def make_queue(settings: Settings, deployment: str, redis: aioredis.Redis, consumer: str) -> Queue:
    """The configured `Queue` for one deployment, consumed as `consumer`."""
    if settings.queue_backend == "eventhubs":
        try:
            import azure.eventhub  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("azure-eventhub", "azure") from exc
        from orchestrator.queues.eventhubs import EventHubsQueue

        return EventHubsQueue.from_settings(settings, deployment, redis, consumer)
    from orchestrator.queues.redis_streams import RedisStreamsQueue

    return RedisStreamsQueue(redis, deployment, consumer, claim_idle_s=settings.queue_claim_idle_s)

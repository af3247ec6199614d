"""Writing token events to the Redis stream `ptu estimator` reads, as an external gateway would."""

from __future__ import annotations

import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.core.schemas import TokenEvent
from orchestrator.utilisation.estimate.store import EVENT_FIELD


async def publish(redis: aioredis.Redis, event: TokenEvent) -> None:
    """XADD one event to `keys.TOKEN_EVENTS` in the field the estimator reads."""
    await redis.xadd(keys.TOKEN_EVENTS, {EVENT_FIELD: event.model_dump_json()})

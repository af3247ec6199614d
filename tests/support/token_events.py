"""Token events for the tests, and writing them to the stream `ptu estimator` reads."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.core.schemas import TokenEvent
from orchestrator.utilisation.estimate.store import EVENT_FIELD


async def publish(redis: aioredis.Redis, event: TokenEvent) -> None:
    """XADD one event to `keys.TOKEN_EVENTS` in the field the estimator reads."""
    await redis.xadd(keys.TOKEN_EVENTS, {EVENT_FIELD: event.model_dump_json()})


def event(
    request_id: str, phase: str, prompt: int, deployment: str = "d", **counts: Any
) -> TokenEvent:
    """A token event stamped now, for deployment `d` unless told."""
    return TokenEvent(
        request_id=request_id,
        deployment=deployment,
        phase=phase,
        timestamp=time.time(),
        prompt_tokens=prompt,
        **counts,
    )

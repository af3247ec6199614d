"""The workers' heartbeats in Redis: one JSON document per worker in `keys.WORKERS`.

Each worker publishes its document (limits, in-flight, readings, counts; see
`Worker.snapshot`) every `heartbeat_s` and removes it when it stops; `ptu status`
reads them all, ignoring a document older than its own `ttl_s`. Redis errors leave
as `StoreUnavailable`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from orchestrator.core import keys
from orchestrator.core.boundary import redis_boundary

if TYPE_CHECKING:
    import redis.asyncio as aioredis


class Heartbeats:
    """Publish, remove and read worker heartbeat documents."""

    __slots__ = ("_redis",)

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    @redis_boundary("worker heartbeats")
    async def publish(self, worker_id: str, doc: dict[str, Any]) -> None:
        """Write (or replace) `worker_id`'s document."""
        await self._redis.hset(keys.WORKERS, worker_id, json.dumps(doc))

    @redis_boundary("worker heartbeats")
    async def forget(self, worker_id: str) -> None:
        """Remove `worker_id`'s document (it stopped)."""
        await self._redis.hdel(keys.WORKERS, worker_id)

    @redis_boundary("worker heartbeats")
    async def read(self) -> list[dict[str, Any]]:
        """Every worker's document (malformed ones skipped)."""
        raw = await self._redis.hgetall(keys.WORKERS)
        out = []
        for value in raw.values():
            try:
                doc = json.loads(value)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out

    def __repr__(self) -> str:
        return f"<Heartbeats key={keys.WORKERS}>"

"""A consumer's liveness, and the refresh that keeps its in-flight entries its own.

A receiving consumer keeps `keys.consumer_alive` set (expiry `liveness_s`, renewed
every third of it); other consumers take over the entries of a consumer whose key is
gone (`reclaim`). While it holds entries, it also re-claims them (XCLAIM JUSTID) every
`claim_idle_s / 3`, so the XAUTOCLAIM safety net never moves an entry a live consumer
is still working on. Redis errors here are logged and retried: liveness outlives a
Redis restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog

from orchestrator.core import keys, redis_replies
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.errors import QueueUnavailable
from orchestrator.core.runtime import every

log = structlog.get_logger(__name__)
_boundary = redis_boundary("consumer liveness", QueueUnavailable)


@dataclass(frozen=True, slots=True)
class StreamConsumer:
    """One consumer of one deployment's stream, as its liveness and its reclaim see it."""

    redis: aioredis.Redis
    stream: str
    group: str
    name: str
    deployment: str

    @property
    def alive_key(self) -> str:
        """The consumer's liveness key (`keys.consumer_alive`)."""
        return keys.consumer_alive(self.deployment, self.name)


class Liveness:
    """The liveness key and in-flight refresh of one consumer of one stream."""

    def __init__(self, consumer: StreamConsumer, *, liveness_s: float, claim_idle_s: float) -> None:
        self._redis = consumer.redis
        self._stream = consumer.stream
        self._group = consumer.group
        self._consumer = consumer.name
        self.alive_key = consumer.alive_key
        self._liveness_s = liveness_s
        self._claim_idle_s = claim_idle_s
        self.in_flight: set[str] = set()
        """Entry ids this consumer received and has not settled."""
        self._beater: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def ensure_alive(self) -> None:
        """Set the liveness key and keep it set (raises if the first write fails)."""
        if self._beater is None or self._beater.done():
            await self._beat()
            self._beater = asyncio.create_task(
                every(
                    self._liveness_s / 3,
                    self._beat,
                    self._stop,
                    event="queue_liveness_failed",
                    errors=(QueueUnavailable,),
                    stream=self._stream,
                )
            )

    def track(self, tokens: list[str]) -> None:
        """Entries just received: refresh them while they are in flight."""
        self.in_flight.update(tokens)
        if self.in_flight and (self._refresher is None or self._refresher.done()):
            self._refresher = asyncio.create_task(
                every(
                    self._claim_idle_s / 3,
                    self._refresh_once,
                    self._stop,
                    event="queue_refresh_failed",
                    errors=(QueueUnavailable,),
                    stream=self._stream,
                )
            )

    async def close(self) -> None:
        """Stop both loops and delete the liveness key (the entries move at once)."""
        self._stop.set()
        for task in (self._refresher, self._beater):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._refresher = self._beater = None
        try:
            await self._clear()
        except QueueUnavailable as exc:
            log.warning("queue_liveness_clear_failed", stream=self._stream, error=repr(exc))

    @_boundary
    async def _clear(self) -> None:
        await self._redis.delete(self.alive_key)

    @_boundary
    async def _beat(self) -> None:
        ttl_ms = max(1, int(self._liveness_s * 1000))
        await self._redis.set(self.alive_key, self._consumer, px=ttl_ms)

    @_boundary
    async def _refresh_once(self) -> bool:
        """Re-claim this consumer's in-flight entries; False once none is left."""
        if not self.in_flight:
            return False
        pending = await self._redis.xpending_range(
            self._stream,
            self._group,
            min="-",
            max="+",
            count=max(len(self.in_flight), 1) + 100,
            consumername=self._consumer,
        )
        owned = {redis_replies.text(p["message_id"]) for p in pending}
        # entries another consumer claimed (we looked dead) are no longer ours to refresh
        self.in_flight &= owned
        if self.in_flight:
            ids: list[Any] = sorted(self.in_flight)
            await self._redis.xclaim(
                self._stream,
                self._group,
                self._consumer,
                min_idle_time=0,
                message_ids=ids,
                justid=True,
            )
        return bool(self.in_flight)

    def __repr__(self) -> str:
        return f"<Liveness key={self.alive_key} in_flight={len(self.in_flight)}>"

"""Redis Streams queue: one stream per deployment, one consumer group for all workers.

put = XADD; receive = XAUTOCLAIM (entries left idle by dead consumers) then
XREADGROUP BLOCK; ack = XACK + XDEL in one transaction. Deleting acknowledged
entries keeps the stream holding exactly the messages waiting or in flight, so
`depth` is a plain XLEN and memory stays bounded without a MAXLEN that could trim
unconsumed work. A live consumer refreshes the idle time of its in-flight entries
(XCLAIM JUSTID) every `claim_idle_s / 3`, so only a dead consumer's entries, never
a slow call's, reach the claim timeout and get delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
import structlog
from pydantic import ValidationError
from redis.exceptions import RedisError, ResponseError

from orchestrator.core import keys, redis_replies
from orchestrator.core.errors import QueueUnavailable
from orchestrator.core.schemas import QueuedRequest
from orchestrator.queues import dead_letter
from orchestrator.queues.base import Delivery

log = structlog.get_logger(__name__)

FIELD = "message"
"""The stream entry field holding the QueuedRequest JSON."""
"""Approximate cap of a dead-letter stream, so a failure storm cannot exhaust memory."""


@contextlib.asynccontextmanager
async def _mapped(operation: str, stream: str) -> AsyncIterator[None]:
    """Translate redis-py errors into QueueUnavailable at the backend boundary."""
    try:
        yield
    except RedisError as exc:
        log.warning("queue_redis_error", operation=operation, stream=stream, error=repr(exc))
        raise QueueUnavailable(f"redis queue {stream}: {operation} failed: {exc}") from exc


class RedisStreamsQueue:
    """A `Queue` on a Redis Stream consumer group (the embedded default backend)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        deployment: str,
        consumer: str,
        *,
        group: str = "ptu-workers",
        claim_idle_s: float = 60.0,
    ) -> None:
        self.redis = redis
        self.deployment = deployment
        self.consumer = consumer
        self.group = group
        self.claim_idle_s = claim_idle_s
        self.stream = keys.queue(deployment)
        self.dead_letter_stream = keys.dead_letter(deployment)
        self._group_ready = False
        self._claim_cursor = "0-0"
        self._in_flight: set[str] = set()
        self._refresher: asyncio.Task[None] | None = None
        self._closed = False

    async def put(self, message: QueuedRequest) -> None:
        """XADD the message JSON; durable (as the server's persistence) when this returns."""
        async with _mapped("put", self.stream):
            await self.redis.xadd(self.stream, {FIELD: message.model_dump_json()})

    async def receive(self, max_count: int, timeout_s: float) -> list[Delivery]:
        """Reclaim dead consumers' idle entries first, then block for new ones.

        The block is cut into slices shorter than the client's socket timeout, so a
        long wait never trips redis-py's read timeout (AZURE_FACTS §8), and shorter
        than half the claim timeout, so idle entries are reclaimed while waiting.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        async with _mapped("receive", self.stream):
            await self._ensure_group()
            while not self._closed:
                try:
                    out = await self._claim(max_count)
                    if not out:
                        block_ms = self._block_ms(deadline - loop.time())
                        out = await self._read_new(max_count, block_ms)
                except ResponseError as exc:
                    if redis_replies.error_code(exc) != "NOGROUP":
                        raise
                    await self._ensure_group(force=True)  # the stream was deleted under us
                    continue
                if out or loop.time() >= deadline:
                    self._track(out)
                    return out
        return []

    async def ack(self, delivery: Delivery) -> None:
        """XACK and XDEL the entry atomically; idempotent."""
        async with _mapped("ack", self.stream):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, self.group, delivery.token)
                pipe.xdel(self.stream, delivery.token)
                await pipe.execute()
        self._in_flight.discard(delivery.token)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """XADD the message with its reason to the dead-letter stream and ack, atomically."""
        payload = delivery.message.model_dump_json()
        await self._dead_letter_raw(delivery.token, payload, reason, delivery.delivery_count)
        log.warning(
            "message_dead_lettered",
            deployment=self.deployment,
            request_id=delivery.message.id,
            reason=reason,
            delivery_count=delivery.delivery_count,
        )

    async def depth(self) -> int:
        """XLEN: acked entries are deleted, so this counts waiting plus in-flight."""
        async with _mapped("depth", self.stream):
            return int(await self.redis.xlen(self.stream))

    async def close(self) -> None:
        """Stop refreshing in-flight entries; they become claimable after `claim_idle_s`."""
        self._closed = True
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None

    # -- internals ---------------------------------------------------------------------

    async def _ensure_group(self, *, force: bool = False) -> None:
        if self._group_ready and not force:
            return
        await redis_replies.ensure_group(self.redis, self.stream, self.group)
        self._group_ready = True

    def _block_ms(self, remaining_s: float) -> int:
        socket_timeout = self.redis.connection_pool.connection_kwargs.get("socket_timeout")
        # wake up now and then to reclaim entries that went idle while we were blocked
        slice_s = min(remaining_s, max(self.claim_idle_s / 2, 0.05))
        if socket_timeout:
            slice_s = min(slice_s, float(socket_timeout) / 2)
        # BLOCK 0 means forever in Redis: never send it
        return max(1, int(slice_s * 1000))

    async def _claim(self, max_count: int) -> list[Delivery]:
        reply = await self.redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=int(self.claim_idle_s * 1000),
            start_id=self._claim_cursor,
            count=max_count,
        )
        # continue the PEL scan where it stopped, so idle entries behind many live ones are
        # reached too; the server returns "0-0" when the scan has wrapped around
        self._claim_cursor = redis_replies.text(reply[0])
        claimed = redis_replies.entries(reply[1])
        if not claimed:
            return []
        pending = await self.redis.xpending_range(
            self.stream,
            self.group,
            min=claimed[0][0],
            max=claimed[-1][0],
            count=len(claimed) + len(self._in_flight) + 10,
            consumername=self.consumer,
        )
        counts = {redis_replies.text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        log.info("queue_entries_claimed", stream=self.stream, count=len(claimed))
        return await self._deliveries(claimed, counts)

    async def _read_new(self, max_count: int, block_ms: int) -> list[Delivery]:
        streams: dict[Any, Any] = {self.stream: ">"}
        reply = await self.redis.xreadgroup(
            self.group, self.consumer, streams, count=max_count, block=block_ms
        )
        return await self._deliveries(redis_replies.read_entries(reply), {})

    async def _deliveries(
        self, entries: list[redis_replies.Entry], counts: dict[str, int]
    ) -> list[Delivery]:
        out: list[Delivery] = []
        for entry_id, fields in entries:
            payload = fields.get(FIELD, "")
            try:
                message = QueuedRequest.model_validate_json(payload)
            except ValidationError as exc:
                # a poison entry would be redelivered forever: park it instead
                reason = f"unparseable message: {exc.errors()[0]['msg']}"
                await self._dead_letter_raw(entry_id, payload, reason, counts.get(entry_id, 1))
                log.error("poison_message_dead_lettered", stream=self.stream, entry_id=entry_id)
                continue
            count = counts.get(entry_id, 1)
            out.append(Delivery(message=message, token=entry_id, delivery_count=count))
        return out

    async def _dead_letter_raw(self, token: str, payload: str, reason: str, count: int) -> None:
        fields = dead_letter.entry(
            payload,
            reason=reason,
            token=token,
            delivery_count=count,
            consumer=self.consumer,
            at=time.time(),
        )
        async with _mapped("dead_letter", self.stream):
            async with self.redis.pipeline(transaction=True) as pipe:
                dead_letter.add(pipe, self.deployment, fields)
                pipe.xack(self.stream, self.group, token)
                pipe.xdel(self.stream, token)
                await pipe.execute()
        self._in_flight.discard(token)

    def _track(self, deliveries: list[Delivery]) -> None:
        self._in_flight.update(d.token for d in deliveries)
        if self._in_flight and (self._refresher is None or self._refresher.done()):
            self._refresher = asyncio.create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        """Keep this consumer's in-flight entries from looking idle to other consumers."""
        interval = self.claim_idle_s / 3
        while self._in_flight and not self._closed:
            await asyncio.sleep(interval)
            try:
                await self._refresh_once()
            except RedisError as exc:
                log.warning("queue_refresh_failed", stream=self.stream, error=repr(exc))

    async def _refresh_once(self) -> None:
        pending = await self.redis.xpending_range(
            self.stream,
            self.group,
            min="-",
            max="+",
            count=max(len(self._in_flight), 1) + 100,
            consumername=self.consumer,
        )
        owned = {redis_replies.text(p["message_id"]) for p in pending}
        # entries another consumer claimed (we looked dead) are no longer ours to refresh
        self._in_flight &= owned
        if self._in_flight:
            ids: list[Any] = sorted(self._in_flight)
            await self.redis.xclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=0,
                message_ids=ids,
                justid=True,
            )

    def __repr__(self) -> str:
        return (
            f"<RedisStreamsQueue stream={self.stream} group={self.group} "
            f"consumer={self.consumer} in_flight={len(self._in_flight)} "
            f"claim_idle_s={self.claim_idle_s}>"
        )

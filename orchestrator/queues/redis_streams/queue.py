"""Redis Streams queue: one stream per deployment, one consumer group for all workers.

put = XADD; receive = take over dead consumers' entries (`reclaim`), then XREADGROUP
BLOCK; ack = XACK + XDEL in one transaction (the acks that arrive while one is written,
together). Deleting acknowledged entries keeps the
stream holding exactly the messages waiting or in flight, so `depth` is a plain XLEN and
memory stays bounded without a MAXLEN that could trim unconsumed work.

A receiving consumer stays alive (`liveness`); a crashed worker's work therefore moves
within `liveness_s` (a few seconds), while a slow call, whose consumer is alive, never
moves. Exactly-once results do not depend on this: a consumer presumed dead that was only
stalled at worst repeats a call whose second result is discarded. `release` hands an
entry to the pseudo consumer `RELEASED`, so the next receive of any consumer takes it
over (its delivery count rises). Redis errors become `QueueUnavailable` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from orchestrator.core import keys, redis_client, redis_replies
from orchestrator.core.batching import Batcher
from orchestrator.core.errors import NotReplicated, QueueUnavailable
from orchestrator.core.replication import Replication
from orchestrator.core.schemas import QueuedRequest
from orchestrator.queues import dead_letter
from orchestrator.queues.base import Delivery, read_delivery
from orchestrator.queues.redis_streams.liveness import Liveness, StreamConsumer
from orchestrator.queues.redis_streams.reclaim import RELEASED, Reclaim

log = structlog.get_logger(__name__)

# KEYS: stream, put marker. ARGV: field, payload, marker ttl s. 1 when put, 0 when already.
# The marker holds the entry's id: the reconciler tells a lost entry from an acked one by it.
_PUT_ONCE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local id = redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], id, 'EX', ARGV[3])
return 1
"""
FIELD = dead_letter.MESSAGE_FIELD
"""The stream entry field holding the QueuedRequest JSON."""


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
        liveness_s: float = 5.0,
        socket_timeout_s: float | None = None,
        stream: str | None = None,
        replication: Replication | None = None,
    ) -> None:
        self.redis = redis
        self.deployment = deployment
        self.consumer = consumer
        self.group = group
        self.claim_idle_s = claim_idle_s
        self.liveness_s = liveness_s
        self.socket_timeout_s = (
            socket_timeout_s if socket_timeout_s is not None else redis_client.socket_timeout(redis)
        )
        self.stream = stream or keys.queue(deployment)
        self.dead_letter_stream = keys.dead_letter(deployment)
        alive_key = keys.consumer_alive(deployment, consumer)
        if not keys.same_slot(self.stream, self.dead_letter_stream, alive_key):
            raise ValueError(f"stream {self.stream!r} is not in deployment {deployment!r}'s slot")
        member = StreamConsumer(redis, self.stream, group, consumer, deployment)
        timing = {"liveness_s": liveness_s, "claim_idle_s": claim_idle_s}
        self._liveness = Liveness(member, **timing)
        self._reclaim = Reclaim(member, **timing)
        self._put_once = redis.register_script(_PUT_ONCE)
        self._replication = replication
        self._acks: Batcher[str, str] = Batcher(self._ack_many)
        self._group_ready = False
        self._inherited = False
        self._closed = False

    async def put(self, message: QueuedRequest) -> None:
        """XADD the message JSON; durable (as the server's persistence) when this returns,
        and on the stream's replicas for a request that is not a batch line (`replication`,
        `PTU_REDIS_WAIT_REPLICAS`; else `NotReplicated`).

        A request is put at most once per id (until its deadline): one script XADDs it
        and sets a marker holding the entry id in the stream's slot, so the batch expansion
        can re-put a chunk after a crash without queueing any line twice, and the
        reconciler (`reconcile`) can tell a request whose entry Redis lost.
        """
        async with _mapped("put", self.stream):
            payload = message.model_dump_json()
            ttl = max(60, math.ceil(message.deadline - time.time()) + 60)
            marker = keys.queue_put(self.stream, message.id)
            await self._put_once(keys=[self.stream, marker], args=[FIELD, payload, ttl])
        if message.batch_id is None and self._replication is not None:
            if not await self._replication.confirm(self.stream):
                raise NotReplicated(f"redis queue {self.stream}: put not on a replica in time")

    async def put_many(self, messages: Sequence[QueuedRequest]) -> None:
        """`put` each message, pipelined: one round trip for the lot (all in this slot)."""
        if not messages:
            return
        if isinstance(self.redis, RedisCluster):
            # a cluster pipeline runs no scripts: concurrent single puts instead
            for start in range(0, len(messages), 64):
                await asyncio.gather(*(self.put(m) for m in messages[start : start + 64]))
            return
        async with _mapped("put", self.stream):
            now = time.time()
            async with self.redis.pipeline(transaction=False) as pipe:
                for message in messages:
                    payload = message.model_dump_json()
                    ttl = max(60, math.ceil(message.deadline - now) + 60)
                    marker = keys.queue_put(self.stream, message.id)
                    await self._put_once(
                        keys=[self.stream, marker], args=[FIELD, payload, ttl], client=pipe
                    )
                await pipe.execute()

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
            await self._liveness.ensure_alive()
            if not self._inherited:  # an earlier process of this name left entries behind
                await self._reclaim.release_inherited()
                self._inherited = True
            while not self._closed:
                try:
                    out = await self._deliveries(
                        *await self._reclaim.take_over_dead(max_count, loop.time())
                    )
                    if not out:
                        in_flight = len(self._liveness.in_flight)
                        claimed = await self._reclaim.claim_idle(max_count, in_flight, loop.time())
                        out = await self._deliveries(*claimed)
                    if not out:
                        block_ms = self._block_ms(deadline - loop.time())
                        out = await self._read_new(max_count, block_ms)
                except ResponseError as exc:
                    if redis_replies.error_code(exc) != "NOGROUP":
                        raise
                    await self._ensure_group(force=True)  # the stream was deleted under us
                    continue
                if out or loop.time() >= deadline:
                    self._liveness.track([d.token for d in out])
                    return out
        return []

    async def ack(self, delivery: Delivery) -> None:
        """XACK and XDEL the entry atomically; idempotent. Acks that arrive while one is
        being written go together in the next (`core/batching`: one XACK, one XDEL)."""
        await self._acks.submit(self.stream, delivery.token)
        self._liveness.in_flight.discard(delivery.token)

    async def _ack_many(self, stream: str, tokens: Sequence[str]) -> None:
        async with _mapped("ack", stream):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(stream, self.group, *tokens)
                pipe.xdel(stream, *tokens)
                await pipe.execute()

    async def release(self, delivery: Delivery) -> None:
        """Hand the entry to `RELEASED`; the next receive of any consumer takes it over."""
        self._liveness.in_flight.discard(delivery.token)
        async with _mapped("release", self.stream):
            await self.redis.xclaim(
                self.stream,
                self.group,
                RELEASED,
                min_idle_time=0,
                message_ids=[delivery.token],
                justid=True,
            )
        self._reclaim.soon()  # look for it (and others) on the next receive
        log.info("queue_entry_released", stream=self.stream, entry_id=delivery.token)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """XADD the message with its reason to the dead-letter stream and ack, atomically."""
        payload = delivery.payload or delivery.message.model_dump_json()
        await self._dead_letter_raw(delivery.token, payload, reason, delivery.delivery_count)
        dead_letter.logged(self.deployment, delivery, reason)

    async def depth(self) -> int:
        """XLEN: acked entries are deleted, so this counts waiting plus in-flight."""
        async with _mapped("depth", self.stream):
            return int(await self.redis.xlen(self.stream))

    async def close(self) -> None:
        """Stop refreshing and declare this consumer gone: its unacked entries move at once."""
        self._closed = True
        await self._liveness.close()

    async def _ensure_group(self, *, force: bool = False) -> None:
        if self._group_ready and not force:
            return
        await redis_replies.ensure_group(self.redis, self.stream, self.group)
        self._group_ready = True

    def _block_ms(self, remaining_s: float) -> int:
        socket_timeout = self.socket_timeout_s
        # wake up now and then to take over entries of consumers that died meanwhile
        slice_s = min(remaining_s, max(min(self.claim_idle_s / 2, self._reclaim.scan_s), 0.05))
        if socket_timeout:
            slice_s = min(slice_s, float(socket_timeout) / 2)
        # BLOCK 0 means forever in Redis: never send it
        return max(1, int(slice_s * 1000))

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
            count = counts.get(entry_id, 1)
            delivery = read_delivery(payload, entry_id, count, self.deployment)
            if delivery is None:
                # no request id to answer: park it, a poison entry would come back forever
                reason = "unreadable message without a request id"
                await self._dead_letter_raw(entry_id, payload, reason, count)
                log.error("poison_message_dead_lettered", stream=self.stream, entry_id=entry_id)
                continue
            out.append(delivery)
        return out

    async def _dead_letter_raw(self, token: str, payload: str, reason: str, count: int) -> None:
        async with _mapped("dead_letter", self.stream):
            async with self.redis.pipeline(transaction=True) as pipe:
                dead_letter.add(pipe, self, payload, reason, token, count)
                pipe.xack(self.stream, self.group, token)
                pipe.xdel(self.stream, token)
                await pipe.execute()
        self._liveness.in_flight.discard(token)

    def __repr__(self) -> str:
        return (
            f"<RedisStreamsQueue stream={self.stream} group={self.group} "
            f"consumer={self.consumer} in_flight={len(self._liveness.in_flight)} "
            f"claim_idle_s={self.claim_idle_s}>"
        )

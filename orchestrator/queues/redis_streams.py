"""Redis Streams queue: one stream per deployment, one consumer group for all workers.

put = XADD; receive = take over dead consumers' entries, then XREADGROUP BLOCK;
ack = XACK + XDEL in one transaction. Deleting acknowledged entries keeps the
stream holding exactly the messages waiting or in flight, so `depth` is a plain
XLEN and memory stays bounded without a MAXLEN that could trim unconsumed work.

Liveness, not idle time, decides when a consumer's entries move: a receiving
consumer keeps `keys.consumer_alive` set (expiry `liveness_s`, renewed every third
of it). Every receive (at most once a second, and every `liveness_s / 4`; blocking
reads are cut to that length; at once again after a take-over that filled the receive,
so a dead consumer's backlog moves at receive speed) looks at the group's
pending summary; the entries of a consumer whose key is gone are taken over by one
Lua script that re-checks the owner of each entry, so two live consumers never
both take one entry. A crashed worker's work therefore moves within `liveness_s`
(a few seconds), while a slow call, whose consumer is alive, never moves. Exactly-
once results do not depend on this: a consumer presumed dead that was only stalled
at worst repeats a call whose second result is discarded.

`release` hands an entry to the pseudo consumer `RELEASED`, which is never alive,
so the next receive of any consumer takes it over (its delivery count rises).
XAUTOCLAIM after `claim_idle_s` stays as a safety net for entries whose owner
still looks alive but stopped refreshing them (XCLAIM JUSTID every
`claim_idle_s / 3`).
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
from orchestrator.core.errors import QueueUnavailable
from orchestrator.core.schemas import QueuedRequest
from orchestrator.queues import dead_letter
from orchestrator.queues.base import Delivery, read_delivery

log = structlog.get_logger(__name__)

# KEYS: stream, put marker. ARGV: field, payload, marker ttl s. 1 when put, 0 when already.
_PUT_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
  redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2])
  return 1
end
return 0
"""
FIELD = "message"
"""The stream entry field holding the QueuedRequest JSON."""
RELEASED = "ptu-released"
"""Pseudo consumer owning released entries until a live consumer takes them over."""

# KEYS: stream, the owner's liveness key. ARGV: group, owner, taker, max count.
# Takes over up to `max count` entries of `owner` unless it is alive; each entry's
# owner is re-checked inside the script, so concurrent takers never share an entry.
# Returns {entries as XCLAIM returns them, their ids, delivery counts after the claim}.
_TAKE_OVER = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {{}, {}, {}} end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[4]), ARGV[2])
if #pending == 0 then return {{}, {}, {}} end
local ids, counts = {}, {}
for i, p in ipairs(pending) do
  ids[i] = p[1]
  counts[i] = p[4] + 1
end
local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, unpack(ids))
return {claimed, ids, counts}
"""


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
        self._alive_key = keys.consumer_alive(deployment, consumer)
        self._take_over = redis.register_script(_TAKE_OVER)
        self._put_once = redis.register_script(_PUT_ONCE)
        self._last_scan = -math.inf
        self._beater: asyncio.Task[None] | None = None
        self.stream = stream or keys.queue(deployment)
        self.dead_letter_stream = keys.dead_letter(deployment)
        if not keys.same_slot(self.stream, self.dead_letter_stream, self._alive_key):
            raise ValueError(f"stream {self.stream!r} is not in deployment {deployment!r}'s slot")
        self._group_ready = False
        self._claim_cursor = "0-0"
        self._in_flight: set[str] = set()
        self._refresher: asyncio.Task[None] | None = None
        self._closed = False

    async def put(self, message: QueuedRequest) -> None:
        """XADD the message JSON; durable (as the server's persistence) when this returns.

        A batch line is put at most once per request id (until its deadline): one
        script XADDs it and sets a marker in the stream's slot, so the batch expansion
        can re-put a chunk after a crash without queueing any line twice.
        """
        async with _mapped("put", self.stream):
            payload = message.model_dump_json()
            if message.batch_id is None:
                await self.redis.xadd(self.stream, {FIELD: payload})
                return
            ttl = max(60, math.ceil(message.deadline - time.time()) + 60)
            marker = keys.queue_put(self.stream, message.id)
            await self._put_once(keys=[self.stream, marker], args=[FIELD, payload, ttl])

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
                    if message.batch_id is None:
                        pipe.xadd(self.stream, {FIELD: payload})
                        continue
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
            await self._ensure_alive()
            while not self._closed:
                try:
                    out = await self._take_over_dead(max_count, loop.time())
                    if not out:
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

    async def release(self, delivery: Delivery) -> None:
        """Hand the entry to `RELEASED`; the next receive of any consumer takes it over."""
        self._in_flight.discard(delivery.token)
        async with _mapped("release", self.stream):
            await self.redis.xclaim(
                self.stream,
                self.group,
                RELEASED,
                min_idle_time=0,
                message_ids=[delivery.token],
                justid=True,
            )
        self._last_scan = -math.inf  # look for it (and others) on the next receive
        log.info("queue_entry_released", stream=self.stream, entry_id=delivery.token)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """XADD the message with its reason to the dead-letter stream and ack, atomically."""
        payload = delivery.payload or delivery.message.model_dump_json()
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
        """Stop refreshing and declare this consumer gone: its unacked entries move at once."""
        self._closed = True
        for task in (self._refresher, self._beater):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._refresher = self._beater = None
        try:
            await self.redis.delete(self._alive_key)
        except RedisError as exc:
            log.warning("queue_liveness_clear_failed", stream=self.stream, error=repr(exc))

    # -- internals ---------------------------------------------------------------------

    async def _ensure_group(self, *, force: bool = False) -> None:
        if self._group_ready and not force:
            return
        await redis_replies.ensure_group(self.redis, self.stream, self.group)
        self._group_ready = True

    async def _ensure_alive(self) -> None:
        if self._beater is None or self._beater.done():
            await self._beat()
            self._beater = asyncio.create_task(self._beat_loop())

    async def _beat(self) -> None:
        await self.redis.set(self._alive_key, self.consumer, px=max(1, int(self.liveness_s * 1000)))

    async def _beat_loop(self) -> None:
        """Keep this consumer's liveness key alive while it runs."""
        while not self._closed:
            await asyncio.sleep(self.liveness_s / 3)
            try:
                await self._beat()
            except RedisError as exc:
                log.warning("queue_liveness_failed", stream=self.stream, error=repr(exc))

    async def _take_over_dead(self, max_count: int, now: float) -> list[Delivery]:
        """Entries of consumers that are not alive (or released ones), at most every `_scan_s`."""
        if now - self._last_scan < self._scan_s:
            return []
        self._last_scan = now
        summary = await self.redis.xpending(self.stream, self.group)
        owners = [
            redis_replies.text(c["name"])
            for c in summary.get("consumers") or []
            if int(c["pending"]) > 0 and redis_replies.text(c["name"]) != self.consumer
        ]
        for owner in owners:
            alive = keys.consumer_alive(self.deployment, owner)
            reply: Any = await self._take_over(
                keys=[self.stream, alive], args=[self.group, owner, self.consumer, max_count]
            )
            claimed = redis_replies.script_entries(reply[0])
            if claimed:
                ids = (redis_replies.text(i) for i in reply[1])
                counts = dict(zip(ids, (int(c) for c in reply[2]), strict=True))
                log.info(
                    "queue_entries_taken_over", stream=self.stream, owner=owner, count=len(claimed)
                )
                if len(claimed) >= max_count:
                    # the owner may hold more: look again on the next receive instead of
                    # taking one entry per scan interval
                    self._last_scan = -math.inf
                return await self._deliveries(claimed, counts)
        return []

    @property
    def _scan_s(self) -> float:
        """How often to look for dead consumers' (and released) entries."""
        return min(self.liveness_s / 4, 1.0)

    def _block_ms(self, remaining_s: float) -> int:
        socket_timeout = self.socket_timeout_s
        # wake up now and then to take over entries of consumers that died meanwhile
        slice_s = min(remaining_s, max(min(self.claim_idle_s / 2, self._scan_s), 0.05))
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
                dead_letter.add(
                    pipe, self.deployment, payload, reason=reason, token=token,
                    delivery_count=count, consumer=self.consumer, at=time.time(),
                )  # fmt: skip
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

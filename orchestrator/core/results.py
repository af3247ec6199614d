"""Request records and exactly-once result delivery (DESIGN.md §4, §5).

The existence of `keys.result(id)` is the completion marker. `complete` checks it
and writes the result, the reply push, the request status and the batch counters
in one Lua script, so concurrent or redelivered completions of one request id
produce exactly one result document on the reply key.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis
import structlog

from orchestrator.core import keys
from orchestrator.core.redis_replies import text
from orchestrator.core.schemas import QueuedRequest, ResultDocument

log = structlog.get_logger(__name__)

RequestStatus = Literal["queued", "in_progress", "completed", "failed", "expired"]

# KEYS: result, reply, request, batch results list, batch hash, notify channel
# ARGV: doc JSON, reply ttl s, status, reply key, has batch (0/1), counter field
_COMPLETE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('HSET', KEYS[3], 'status', ARGV[3], 'reply_key', ARGV[4])
if redis.call('TTL', KEYS[3]) < ttl then
  redis.call('EXPIRE', KEYS[3], ttl)
end
if ARGV[5] == '1' then
  redis.call('RPUSH', KEYS[4], ARGV[1])
  redis.call('HINCRBY', KEYS[5], ARGV[6], 1)
  local bttl = redis.call('PTTL', KEYS[5])
  if bttl > 0 then
    redis.call('PEXPIRE', KEYS[4], bttl)
  end
end
redis.call('PUBLISH', KEYS[6], ARGV[3])
return 1
"""

# KEYS: request record. Only a queued request moves to in_progress.
_MARK_IN_PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'in_progress')
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class RequestState:
    """What is known about a request: its record and, once written, its result."""

    status: RequestStatus
    tenant: str
    reply_key: str
    result: ResultDocument | None = None
    custom_id: str | None = None
    batch_id: str | None = None
    deployment: str | None = None


class ResultStore:
    """Request records, idempotent completion and long-poll waits, all in Redis."""

    def __init__(self, redis: aioredis.Redis, reply_ttl_s: int) -> None:
        self.redis = redis
        self.reply_ttl_s = int(reply_ttl_s)
        self._complete = redis.register_script(_COMPLETE)
        self._mark = redis.register_script(_MARK_IN_PROGRESS)

    async def register(self, req: QueuedRequest) -> None:
        """Create the request record (status queued), kept until deadline + reply TTL."""
        record = {
            "status": "queued",
            "tenant": req.tenant,
            "reply_key": req.reply_key,
            "custom_id": req.custom_id or "",
            "batch_id": req.batch_id or "",
            "deployment": req.deployment,
            "enqueued_at": repr(req.enqueued_at),
        }
        key = keys.request(req.id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=record)  # type: ignore[arg-type]
            pipe.expireat(key, math.ceil(req.deadline + self.reply_ttl_s))
            await pipe.execute()

    async def forget(self, request_id: str) -> None:
        """Undo `register` when the enqueue that followed it failed."""
        await self.redis.delete(keys.request(request_id))

    async def mark_in_progress(self, request_id: str) -> None:
        """Move a queued request to in_progress; a completed one is left as it is."""
        await self._mark(keys=[keys.request(request_id)])

    async def complete(self, doc: ResultDocument, reply_key: str) -> bool:
        """Write the result once per `doc.id`; True when this call wrote it.

        Atomically: result key, RPUSH to `reply_key` (both expire after the reply
        TTL), request status, batch results list and counters, and a notification.
        """
        payload = doc.model_dump_json()
        batch = doc.batch_id or ""
        counter = "completed" if doc.status == "completed" else "failed"
        wrote = await self._complete(
            keys=[
                keys.result(doc.id),
                reply_key,
                keys.request(doc.id),
                keys.batch_results(batch),
                keys.batch(batch),
                keys.result_channel(doc.id),
            ],
            args=[payload, self.reply_ttl_s, doc.status, reply_key, "1" if batch else "0", counter],
        )
        if wrote:
            log.info("result_written", request_id=doc.id, status=doc.status, reply_key=reply_key)
        else:
            log.info("result_duplicate_ignored", request_id=doc.id)
        return bool(wrote)

    async def get(self, request_id: str) -> RequestState | None:
        """The request's state, or None when it is unknown (or long expired)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.request(request_id))
            pipe.get(keys.result(request_id))
            raw_record, raw_result = await pipe.execute()
        record = {text(k): text(v) for k, v in (raw_record or {}).items()}
        result = ResultDocument.model_validate_json(raw_result) if raw_result else None
        if not record and result is None:
            return None
        status: RequestStatus = result.status if result else record.get("status", "queued")  # type: ignore[assignment]
        return RequestState(
            status=status,
            tenant=record.get("tenant", ""),
            reply_key=record.get("reply_key", ""),
            result=result,
            custom_id=record.get("custom_id") or (result.custom_id if result else None),
            batch_id=record.get("batch_id") or (result.batch_id if result else None),
            deployment=record.get("deployment") or (result.deployment if result else None),
        )

    async def wait(self, request_id: str, timeout_s: float) -> RequestState | None:
        """`get`, but first wait up to `timeout_s` for the result (pub/sub, no polling)."""
        state = await self.get(request_id)
        if timeout_s <= 0 or state is None or state.result is not None:
            return state
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(keys.result_channel(request_id))
            # subscribed before re-checking: a completion in between is not missed
            state = await self.get(request_id)
            if state is None or state.result is not None:
                return state
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while (remaining := deadline - loop.time()) > 0:
                message = await pubsub.get_message(timeout=remaining)
                if message is not None and message.get("type") == "message":
                    break
            return await self.get(request_id)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def __repr__(self) -> str:
        return f"<ResultStore reply_ttl_s={self.reply_ttl_s}>"

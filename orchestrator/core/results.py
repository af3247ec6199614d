"""Request records and exactly-once result delivery (DESIGN.md §4, §5).

The existence of `keys.result(id)` is the completion marker. Completion spans three
entities that Redis Cluster may hold on three nodes (the request, the reply key its
requester chose, the batch), so it is three atomic scripts, one per slot:

1. decide (request slot): unless a result exists, write it and the request status
   and notify waiters. Exactly one completion of a request id ever wins here; a
   loser gets the winner's document back.
2. push (reply key slot): RPUSH the winning document, guarded by a marker key in the
   reply key's own slot (`keys.reply_pushed`), so it is pushed at most once. Batch
   lines are not pushed: their results reach the batch's output file, so the document
   is stored once, in the result key.
3. count (batch slot): HSETNX a one-letter mark (`c`/`f`) under the request id into
   the batch's line marks and bump the counter only when it was new.

Steps 2 and 3 are idempotent and always run with the stored winning document, so
any caller can re-drive them (`settle`): the worker acknowledges a delivery only
after all three returned, and a redelivery of a completed request settles before
it acks. A crash between steps therefore delays the push, never doubles or loses it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis
import structlog

from orchestrator.core import keys
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.redis_replies import text
from orchestrator.core.schemas import QueuedRequest, ResultDocument

log = structlog.get_logger(__name__)

RequestStatus = Literal["queued", "in_progress", "completed", "failed", "expired"]

# Step 1, in the request's slot: the exactly-once decision.
# KEYS: result, request. ARGV: doc JSON, reply ttl s, status, reply key, notify channel,
# the status the record must have ('' or absent: any; 'unstarted': queued or no record yet).
# Returns 1 when written, 0 when the record's status is not the one required, else the document
# already there.
_DECIDE = """
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
local want = ARGV[6]
if want and want ~= '' then
  local status = redis.call('HGET', KEYS[2], 'status')
  if want == 'unstarted' then
    if status and status ~= 'queued' then return 0 end
  elseif status ~= want then
    return 0
  end
end
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
redis.call('HSET', KEYS[2], 'status', ARGV[3], 'reply_key', ARGV[4])
if redis.call('TTL', KEYS[2]) < ttl then
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('PUBLISH', ARGV[5], ARGV[3])
return 1
"""

# Step 2, in the reply key's slot: push once (the marker lives in that slot too).
# KEYS: reply list, pushed marker. ARGV: doc JSON, reply ttl s. Returns 1 when pushed.
_PUSH = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('RPUSH', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# Step 3, in the batch's slot: count the line once. A batch already terminal counts no
# more (its marks are gone, and its files are written): a late re-settle of a line, such as
# the PTU queue's copy of a line that overflow answered, reaching the worker after the end.
# KEYS: batch line marks, batch hash. ARGV: request id, mark, counter field.
_COUNT = """
local status = redis.call('HGET', KEYS[2], 'status')
if status == 'completed' or status == 'failed' or status == 'cancelled'
   or status == 'expired' then
  return 0
end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
  local bttl = redis.call('PTTL', KEYS[2])
  if bttl > 0 then redis.call('PEXPIRE', KEYS[1], bttl) end
  return 1
end
return 0
"""

# KEYS: request record. ARGV: ttl-at, then field, value pairs. Writes only a new record.
_REGISTER_NEW = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIREAT', KEYS[1], ARGV[1])
return 1
"""

# KEYS: request record. Only a queued request moves to in_progress; 0 when it had a result
# written meanwhile (a cancel), else 1.
_MARK_IN_PROGRESS = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'in_progress')
  return 1
end
if status == 'in_progress' or not status then return 1 end
return 0
"""


def _record(req: QueuedRequest) -> dict[str, str]:
    return {
        "status": "queued",
        "tenant": req.tenant,
        "reply_key": req.reply_key,
        "custom_id": req.custom_id or "",
        "batch_id": req.batch_id or "",
        "deployment": req.deployment,
        "enqueued_at": repr(req.enqueued_at),
    }


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
        self._decide = redis.register_script(_DECIDE)
        self._push = redis.register_script(_PUSH)
        self._count = redis.register_script(_COUNT)
        self._mark = redis.register_script(_MARK_IN_PROGRESS)
        self._register_new = redis.register_script(_REGISTER_NEW)

    @redis_boundary("result store")
    async def register(self, req: QueuedRequest, *, only_new: bool = False) -> None:
        """Create the request record (status queued), kept until deadline + reply TTL.

        `only_new`: leave an existing record as it is (a batch line queued again after
        a crash may have finished meanwhile).
        """
        record = _record(req)
        key = keys.request(req.id)
        if only_new:
            pairs = [x for kv in record.items() for x in kv]
            expire_at = math.ceil(req.deadline + self.reply_ttl_s)
            await self._register_new(keys=[key], args=[expire_at, *pairs])
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=record)  # type: ignore[arg-type]
            pipe.expireat(key, math.ceil(req.deadline + self.reply_ttl_s))
            await pipe.execute()

    @redis_boundary("result store")
    async def register_new(self, reqs: Sequence[QueuedRequest]) -> None:
        """Create the records of those requests that have none (batch expansion), in two
        pipelined round trips. A record written between the two (its line finished
        meanwhile) is set back to `queued`, which its result still overrides."""
        ids = [keys.request(r.id) for r in reqs]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in ids:
                pipe.exists(key)
            there = await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            for req, key, exists in zip(reqs, ids, there, strict=True):
                if not exists:
                    pipe.hset(key, mapping=_record(req))  # type: ignore[arg-type]
                    pipe.expireat(key, math.ceil(req.deadline + self.reply_ttl_s))
            await pipe.execute()

    @redis_boundary("result store")
    async def forget(self, request_id: str) -> None:
        """Undo `register` when the enqueue that followed it failed."""
        await self.redis.delete(keys.request(request_id))

    @redis_boundary("result store")
    async def mark_in_progress(self, request_id: str) -> bool:
        """Move a queued request to in_progress; False when it has its result already (a
        cancel came first), and it is left as it is."""
        return bool(await self._mark(keys=[keys.request(request_id)]) == 1)

    @redis_boundary("result store")
    async def complete(self, doc: ResultDocument, reply_key: str) -> bool:
        """Write the result once per `doc.id`; True when this call wrote it.

        The reply push and batch count follow (see the module docstring); when this
        returns, all three are done. Raises StoreUnavailable when a step failed: calling
        again (or `settle`) finishes the job without a second result.
        """
        payload = doc.model_dump_json()
        decided = await self._decide(
            keys=[keys.result(doc.id), keys.request(doc.id)],
            args=[
                payload, self.reply_ttl_s, doc.status, reply_key, keys.result_channel(doc.id), "",
            ],
        )  # fmt: skip
        wrote = bool(decided == 1)
        if not wrote:
            payload = text(decided)
            doc = ResultDocument.model_validate_json(payload)
        await self._fan_out(doc, payload, reply_key)
        if wrote:
            log.info("result_written", request_id=doc.id, status=doc.status)
        else:
            log.info("result_duplicate_ignored", request_id=doc.id)
        return wrote

    @redis_boundary("result store")
    async def complete_if_queued(
        self, doc: ResultDocument, reply_key: str, *, or_unknown: bool = False
    ) -> bool:
        """Write `doc` only while the request is still queued (a cancel: a call that started
        finishes and is reported); True when written, the reply pushed as by `complete`.
        `or_unknown`: also when the request has no record yet (a batch line not queued)."""
        payload = doc.model_dump_json()
        decided = await self._decide(
            keys=[keys.result(doc.id), keys.request(doc.id)],
            args=[
                payload, self.reply_ttl_s, doc.status, reply_key, keys.result_channel(doc.id),
                "unstarted" if or_unknown else "queued",
            ],
        )  # fmt: skip
        if decided != 1:
            return False
        await self._fan_out(doc, payload, reply_key)
        log.info("result_written", request_id=doc.id, status=doc.status, cancelled=True)
        return True

    @redis_boundary("result store")
    async def settle(self, request_id: str, reply_key: str) -> bool:
        """Finish the push and batch count of a written result; False when none exists."""
        raw = await self.redis.get(keys.result(request_id))
        if raw is None:
            return False
        payload = text(raw)
        await self._fan_out(ResultDocument.model_validate_json(payload), payload, reply_key)
        return True

    async def _fan_out(self, doc: ResultDocument, payload: str, reply_key: str) -> None:
        if not doc.batch_id:
            await self._push(
                keys=[reply_key, keys.reply_pushed(reply_key, doc.id)],
                args=[payload, self.reply_ttl_s],
            )
            return
        counter = "completed" if doc.status == "completed" else "failed"
        await self._count(
            keys=[keys.batch_results(doc.batch_id), keys.batch(doc.batch_id)],
            args=[doc.id, counter[0], counter],
        )

    @redis_boundary("result store")
    async def results(self, request_ids: Sequence[str]) -> list[ResultDocument | None]:
        """The result documents of `request_ids`, in order (None: no result), in one trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for request_id in request_ids:
                pipe.get(keys.result(request_id))
            raws = await pipe.execute()
        return [None if raw is None else ResultDocument.model_validate_json(raw) for raw in raws]

    @redis_boundary("result store")
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
        if status not in ("queued", "completed", "failed", "expired"):
            status = "in_progress"  # a batch line taken by overflow runs elsewhere
        return RequestState(
            status=status,
            # a record rewritten by the result alone (its first copy lost with Redis's data)
            # has no tenant: the result names it
            tenant=record.get("tenant") or (result.tenant if result else ""),
            reply_key=record.get("reply_key", ""),
            result=result,
            custom_id=record.get("custom_id") or (result.custom_id if result else None),
            batch_id=record.get("batch_id") or (result.batch_id if result else None),
            deployment=record.get("deployment") or (result.deployment if result else None),
        )

    @redis_boundary("result store")
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


@redis_boundary("result counts")
async def count_result(redis: aioredis.Redis, deployment: str, status: str, n: int = 1) -> None:
    """Add `n` to `deployment`'s counter of `status` (`keys.result_counts`; `ptu status`
    shows them, and they outlive any worker)."""
    await redis.hincrby(keys.result_counts(deployment), status, n)


@redis_boundary("result counts")
async def result_counts(redis: aioredis.Redis, deployment: str) -> dict[str, int]:
    """`deployment`'s result counters by status."""
    raw = await redis.hgetall(keys.result_counts(deployment))
    return {text(k): int(v) for k, v in raw.items()}

"""Batch state in Redis: the batch hash, its job lease, the finalisation claim, the indexes.

`keys.batch(id)` holds the batch's fields: status, counters (`ResultStore.complete`
bumps `completed` / `failed` once per line, marking it in `keys.batch_results(id)`),
the expansion cursor (`cursor` = next line index, `cursor_offset` = its byte offset
in the input file, `expanded` once every line is queued), `final_status`, and the
job lease (`job_owner`, `job_until`). Line `i` of a batch is request
`line_request_id(batch, i)`: ids are derived, not stored, so re-expanding a line
after a crash names the same request. Active batches are listed in
`keys.BATCHES_ACTIVE` until terminal. Everything expires a day after the batch's deadline
(`expires_at`), and never sooner than `BATCH_TTL_S` after creation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from ingress.batch.paging import list_page
from ingress.http.errors import ApiError
from orchestrator.core import keys
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.redis_replies import text

BATCH_TTL_S = 2 * 86_400
"""The 24 h completion window plus a day to fetch the results."""
INDEX_TTL_S = 31 * 86_400
"""The longest completion window (30 days) plus a day."""


def batch_ttl_s(fields: dict[str, str], now: float) -> int:
    """How long a batch's hash is kept: its deadline plus a day to fetch the results."""
    deadline = float(fields.get("expires_at") or now)
    return max(BATCH_TTL_S, int(deadline - now) + 86_400)


FINALIZE_LEASE_S = 120
"""A finaliser that has not finished after this long is presumed dead and replaced."""
TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})

# KEYS: batch hash. ARGV: now, lease s. Claims finalisation unless a live claim exists.
_CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'in_progress' and status ~= 'cancelling' and status ~= 'finalizing'
   and status ~= 'validating' then
  return 0
end
local at = redis.call('HGET', KEYS[1], 'finalizer_at')
if at and tonumber(at) > tonumber(ARGV[1]) - tonumber(ARGV[2]) then return 0 end
if status ~= 'finalizing' and not redis.call('HGET', KEYS[1], 'final_status') then
  redis.call('HSET', KEYS[1], 'final_status', status == 'cancelling' and 'cancelled' or 'completed')
end
redis.call('HSET', KEYS[1], 'status', 'finalizing', 'finalizer_at', ARGV[1])
if not redis.call('HGET', KEYS[1], 'finalizing_at') then
  redis.call('HSET', KEYS[1], 'finalizing_at', math.floor(tonumber(ARGV[1])))
end
return 1
"""

# KEYS: batch hash. ARGV: expected status list (comma), new status, time field, now.
_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return nil end
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == status then
    redis.call('HSET', KEYS[1], 'status', ARGV[2], ARGV[3], ARGV[4])
    return ARGV[2]
  end
end
return status
"""

# KEYS: batch hash. ARGV: owner token, now, lease s, role. 1 when the lease is (still) ours.
_LEASE = """
if not redis.call('HGET', KEYS[1], 'status') then return 0 end
local owner = redis.call('HGET', KEYS[1], ARGV[4] .. '_owner')
local untl = tonumber(redis.call('HGET', KEYS[1], ARGV[4] .. '_until') or '0')
if owner and owner ~= ARGV[1] and untl > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[4] .. '_owner', ARGV[1],
  ARGV[4] .. '_until', tonumber(ARGV[2]) + tonumber(ARGV[3]))
return 1
"""

# KEYS: batch hash. ARGV: owner token, role. Gives the lease up if it is ours.
_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[2] .. '_owner') == ARGV[1] then
  redis.call('HDEL', KEYS[1], ARGV[2] .. '_owner', ARGV[2] .. '_until')
end
return 0
"""


def not_found(batch_id: str) -> ApiError:
    """The 404 for an unknown (or someone else's) batch."""
    return ApiError(404, "batch_not_found", f"no batch {batch_id[:100]!r}")


def line_request_id(batch_id: str, index: int) -> str:
    """The request id of line `index` (0-based, blank lines not counted) of a batch."""
    return f"req_{batch_id.removeprefix('batch_')}_{index}"


class BatchStore:
    """Batches of one Redis, tenant-scoped."""

    def __init__(self, redis: aioredis.Redis, *, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self._clock = clock
        self._claim = redis.register_script(_CLAIM)
        self._transition = redis.register_script(_TRANSITION)
        self._lease = redis.register_script(_LEASE)
        self._release = redis.register_script(_RELEASE)

    @redis_boundary("batch store")
    async def create(self, fields: dict[str, str]) -> None:
        """Write the batch hash, then list it as active and in its tenant's index."""
        batch_id = fields["id"]
        now = self._clock()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.batch(batch_id), mapping=fields)  # type: ignore[arg-type]
            pipe.expire(keys.batch(batch_id), batch_ttl_s(fields, now))
            await pipe.execute()
        # the indexes are other slots: written after, so they never name a batch that
        # does not exist (readers skip ids that expired meanwhile)
        await self.redis.zadd(keys.BATCHES_ACTIVE, {batch_id: now})
        index = keys.tenant_batches(fields["tenant"])
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(index, {batch_id: now})
            pipe.zremrangebyscore(index, 0, now - INDEX_TTL_S)
            pipe.expire(index, INDEX_TTL_S)
            await pipe.execute()

    @redis_boundary("batch store")
    async def fields(self, batch_id: str) -> dict[str, str]:
        """The batch's fields, whoever owns it ({} when unknown)."""
        raw = await self.redis.hgetall(keys.batch(batch_id))
        return {text(k): text(v) for k, v in raw.items()}

    @redis_boundary("batch store")
    async def get(self, tenant: str, batch_id: str) -> dict[str, str]:
        """The batch's fields; 404 if unknown or another tenant's."""
        fields = await self.fields(batch_id)
        if fields.get("tenant") != tenant or "status" not in fields:
            raise not_found(batch_id)
        return fields

    @redis_boundary("batch store")
    async def update(self, batch_id: str, **fields: str) -> None:
        """Set fields of an existing batch."""
        await self.redis.hset(keys.batch(batch_id), mapping=fields)  # type: ignore[arg-type]

    @redis_boundary("batch store")
    async def forget_fields(self, batch_id: str, *names: str) -> None:
        """Remove fields of a batch."""
        await self.redis.hdel(keys.batch(batch_id), *names)

    @redis_boundary("batch store")
    async def incr(self, batch_id: str, name: str, by: int = 1) -> None:
        """Add `by` to the batch's counter `name`."""
        await self.redis.hincrby(keys.batch(batch_id), name, by)

    @redis_boundary("batch store")
    async def transition(self, batch_id: str, allowed: Sequence[str], status: str) -> str | None:
        """Move to `status` if the batch is in one of `allowed`; returns the status now."""
        now = str(int(self._clock()))
        result = await self._transition(
            keys=[keys.batch(batch_id)], args=[",".join(allowed), status, status + "_at", now]
        )
        return None if result is None else text(result)

    @redis_boundary("batch store")
    async def claim_finalization(self, batch_id: str) -> bool:
        """True when this caller should build the output files now."""
        claimed = await self._claim(
            keys=[keys.batch(batch_id)], args=[repr(self._clock()), FINALIZE_LEASE_S]
        )
        return bool(claimed)

    @redis_boundary("batch store")
    async def lease(self, batch_id: str, owner: str, seconds: float, role: str = "job") -> bool:
        """Take or renew the batch's `role` lease (`job`: its jobs; `plan`: its overflow
        planner); False while another live owner holds it."""
        got = await self._lease(
            keys=[keys.batch(batch_id)], args=[owner, self._clock(), seconds, role]
        )
        return bool(got)

    @redis_boundary("batch store")
    async def release(self, batch_id: str, owner: str, role: str = "job") -> None:
        """Give the `role` lease up (if still ours)."""
        await self._release(keys=[keys.batch(batch_id)], args=[owner, role])

    @redis_boundary("batch store")
    async def active(self, limit: int = 1000) -> list[str]:
        """Ids of batches not yet terminal, oldest first."""
        return [text(b) for b in await self.redis.zrange(keys.BATCHES_ACTIVE, 0, limit - 1)]

    @redis_boundary("batch store")
    async def some_fields(
        self, batch_ids: Sequence[str], names: Sequence[str]
    ) -> list[dict[str, str]]:
        """The fields `names` of each batch (those it has), in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in batch_ids:
                pipe.hmget(keys.batch(batch_id), list(names))
            rows = await pipe.execute()
        return [
            {k: text(v) for k, v in zip(names, row, strict=True) if v is not None} for row in rows
        ]

    @redis_boundary("batch store")
    async def deactivate(self, batch_id: str) -> None:
        """Drop a terminal (or vanished) batch from the active list and its line marks."""
        await self.redis.zrem(keys.BATCHES_ACTIVE, batch_id)
        await self.redis.delete(keys.batch_results(batch_id))

    @redis_boundary("batch store")
    async def list_batches(
        self, tenant: str, limit: int, after: str | None = None
    ) -> tuple[list[dict[str, str]], bool]:
        """A page of the tenant's batches, newest first, and whether more follow."""
        return await list_page(
            self.redis, keys.tenant_batches(tenant), lambda b: self.get(tenant, b), limit, after
        )

    def __repr__(self) -> str:
        return "<BatchStore>"


def batch_object(f: dict[str, str]) -> dict[str, Any]:
    """The OpenAI Batch object of stored fields."""

    def ts(name: str) -> int | None:
        value = f.get(name)
        return int(float(value)) if value else None

    errors = json.loads(f["errors"]) if f.get("errors") else None
    status = f["status"]
    # a batch hash written only in part (a crash during create) still lists
    return {
        "id": f["id"],
        "object": "batch",
        "endpoint": f.get("endpoint", "/v1/chat/completions"),
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": f.get("input_file_id", ""),
        "completion_window": f.get("completion_window", "24h"),
        "status": status,
        "output_file_id": f.get("output_file_id") or None,
        "error_file_id": f.get("error_file_id") or None,
        "created_at": ts("created_at"),
        "in_progress_at": ts("in_progress_at"),
        "expires_at": ts("expires_at"),
        "finalizing_at": ts("finalizing_at"),
        "completed_at": ts("completed_at"),
        "failed_at": ts("failed_at"),
        "expired_at": ts("expired_at"),
        "cancelling_at": ts("cancelling_at"),
        "cancelled_at": ts("cancelled_at"),
        "request_counts": {
            "total": int(f.get("total", "0")),
            "completed": int(f.get("completed", "0")),
            "failed": int(f.get("failed", "0")),
        },
        "metadata": json.loads(f["metadata"]) if f.get("metadata") else None,
        # extra fields (the openai SDK's models keep them): the deadline and the overflow plan
        "deadline_at": ts("expires_at"),
        "forecast": json.loads(f["forecast"]) if f.get("forecast") else None,
        "usage_by_target": json.loads(f["usage_by_target"]) if f.get("usage_by_target") else None,
    }

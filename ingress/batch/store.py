"""Batch state in Redis: the batch hash, its request list, and the finalisation claim.

`keys.batch(id)` holds the batch's fields; `ResultStore.complete` increments its
`completed` / `failed` counters and records each line's document in the hash
`keys.batch_results(id)` (once per request id) as lines finish.
`keys.batch_requests(id)` lists `[request_id, custom_id, deployment]` in input
order. Everything expires `BATCH_TTL_S` after creation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from ingress.http.errors import ApiError
from orchestrator.core import keys
from orchestrator.core.schemas import ResultDocument

BATCH_TTL_S = 2 * 86_400
"""The 24 h completion window plus a day to fetch the results."""
FINALIZE_LEASE_S = 120
"""A finaliser that has not finished after this long is presumed dead and replaced."""
TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})

# KEYS: batch hash. ARGV: now, lease s. Claims finalisation unless a live claim exists.
_CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'in_progress' and status ~= 'cancelling' and status ~= 'finalizing' then
  return 0
end
local at = redis.call('HGET', KEYS[1], 'finalizer_at')
if at and tonumber(at) > tonumber(ARGV[1]) - tonumber(ARGV[2]) then return 0 end
if status ~= 'finalizing' then redis.call('HSET', KEYS[1], 'final_status',
  status == 'cancelling' and 'cancelled' or 'completed') end
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


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def not_found(batch_id: str) -> ApiError:
    """The 404 for an unknown (or someone else's) batch."""
    return ApiError(404, "batch_not_found", f"no batch {batch_id[:100]!r}")


class BatchStore:
    """Batches of one Redis, tenant-scoped."""

    def __init__(self, redis: aioredis.Redis, *, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self._clock = clock
        self._claim = redis.register_script(_CLAIM)
        self._transition = redis.register_script(_TRANSITION)

    async def create(
        self, fields: dict[str, str], requests: Sequence[tuple[str, str, str]]
    ) -> None:
        """Write the batch hash and its request list (before any line is enqueued)."""
        batch_id = fields["id"]
        entries = [json.dumps(list(r)) for r in requests]
        now = self._clock()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.batch(batch_id), mapping=fields)  # type: ignore[arg-type]
            pipe.expire(keys.batch(batch_id), BATCH_TTL_S)
            for start in range(0, len(entries), 10_000):
                pipe.rpush(keys.batch_requests(batch_id), *entries[start : start + 10_000])
            pipe.expire(keys.batch_requests(batch_id), BATCH_TTL_S)
            await pipe.execute()
        # the tenant's index is another slot: written after, so it never names a
        # batch that does not exist (listing skips ids that expired meanwhile)
        index = keys.tenant_batches(fields["tenant"])
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(index, {batch_id: now})
            pipe.zremrangebyscore(index, 0, now - BATCH_TTL_S)
            pipe.expire(index, BATCH_TTL_S)
            await pipe.execute()

    async def get(self, tenant: str, batch_id: str) -> dict[str, str]:
        """The batch's fields; 404 if unknown or another tenant's."""
        raw = await self.redis.hgetall(keys.batch(batch_id))
        fields = {_s(k): _s(v) for k, v in raw.items()}
        if fields.get("tenant") != tenant or "status" not in fields:
            raise not_found(batch_id)
        return fields

    async def update(self, batch_id: str, **fields: str) -> None:
        """Set fields of an existing batch."""
        await self.redis.hset(keys.batch(batch_id), mapping=fields)  # type: ignore[arg-type]

    async def transition(self, batch_id: str, allowed: Sequence[str], status: str) -> str | None:
        """Move to `status` if the batch is in one of `allowed`; returns the status now."""
        now = str(int(self._clock()))
        result = await self._transition(
            keys=[keys.batch(batch_id)], args=[",".join(allowed), status, status + "_at", now]
        )
        return None if result is None else _s(result)

    async def claim_finalization(self, batch_id: str) -> bool:
        """True when this caller should build the output files now."""
        claimed = await self._claim(
            keys=[keys.batch(batch_id)], args=[repr(self._clock()), FINALIZE_LEASE_S]
        )
        return bool(claimed)

    async def requests(self, batch_id: str) -> list[tuple[str, str, str]]:
        """`(request_id, custom_id, deployment)` per line, in input order."""
        raw = await self.redis.lrange(keys.batch_requests(batch_id), 0, -1)
        out: list[tuple[str, str, str]] = []
        for r in raw:
            rid, cid, dep = json.loads(r)
            out.append((str(rid), str(cid), str(dep)))
        return out

    async def results(self, batch_id: str) -> dict[str, ResultDocument]:
        """The result documents written so far, by request id."""
        raw = await self.redis.hvals(keys.batch_results(batch_id))
        docs = (ResultDocument.model_validate_json(r) for r in raw)
        return {d.id: d for d in docs}

    async def discard_lines(self, batch_id: str) -> None:
        """Drop the per-line lists once the output files hold everything."""
        await self.redis.delete(keys.batch_results(batch_id), keys.batch_requests(batch_id))

    async def list_batches(self, tenant: str, limit: int) -> list[dict[str, str]]:
        """The tenant's newest batches."""
        ids = await self.redis.zrevrange(keys.tenant_batches(tenant), 0, limit - 1)
        out = []
        for raw in ids:
            try:
                out.append(await self.get(tenant, _s(raw)))
            except ApiError:
                continue  # expired between the index and the batch
        return out

    def __repr__(self) -> str:
        return "<BatchStore>"


def batch_object(f: dict[str, str]) -> dict[str, Any]:
    """The OpenAI Batch object of stored fields."""

    def ts(name: str) -> int | None:
        value = f.get(name)
        return int(float(value)) if value else None

    errors = json.loads(f["errors"]) if f.get("errors") else None
    status = f["status"]
    return {
        "id": f["id"],
        "object": "batch",
        "endpoint": f["endpoint"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": f["input_file_id"],
        "completion_window": f["completion_window"],
        "status": status,
        "output_file_id": f.get("output_file_id") or None,
        "error_file_id": f.get("error_file_id") or None,
        "created_at": ts("created_at"),
        "in_progress_at": ts("in_progress_at"),
        "expires_at": ts("expires_at"),
        "finalizing_at": ts("finalizing_at"),
        "completed_at": ts("completed_at"),
        "failed_at": ts("failed_at"),
        "expired_at": None,
        "cancelling_at": ts("cancelling_at"),
        "cancelled_at": ts("cancelled_at"),
        "request_counts": {
            "total": int(f.get("total", "0")),
            "completed": int(f.get("completed", "0")),
            "failed": int(f.get("failed", "0")),
        },
        "metadata": json.loads(f["metadata"]) if f.get("metadata") else None,
    }

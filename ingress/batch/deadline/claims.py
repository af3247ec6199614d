"""Moving a queued batch line off the PTU queue: one place runs it, whoever wins the record.

A line on the PTU queue has a request record with status `queued` (`core/results`). The
worker starts it with `ResultStore.mark_in_progress` (queued → in_progress); overflow
takes it with `claim` (queued → `overflow`, naming the claimant and the time), both one
script on the record, so exactly one of them wins. A worker that then receives the line
finds it neither queued nor in progress: `mark_in_progress` answers no, and the worker
acknowledges the message without a call (as it does for a cancelled line). The result
is still written by `ResultStore.complete`, exactly once.

A claim whose claimant died (an ingress killed mid-call) is taken over once it is older
than the lease: the call may then run twice at the overflow target, but only the first
result is kept. Lines whose result exists are never claimed.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.redis_replies import text

OVERFLOW = "overflow"
"""The request record status of a line taken by overflow."""

# KEYS: request record, result. ARGV: claimant, now, lease s.
# 1: claimed (queued); 2: taken over (an overflow claim older than the lease); 0: neither.
_CLAIM = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'overflow' then
  local at = tonumber(redis.call('HGET', KEYS[1], 'overflow_at') or '0')
  if at > tonumber(ARGV[2]) - tonumber(ARGV[3]) then return 0 end
  redis.call('HSET', KEYS[1], 'overflow_owner', ARGV[1], 'overflow_at', ARGV[2])
  return 2
elseif status ~= 'queued' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'overflow', 'overflow_owner', ARGV[1],
  'overflow_at', ARGV[2])
return 1
"""


# KEYS: request record, result. ARGV: claimant, at. Sets the claim's time of a line still
# claimed and without a result (a renewal; at 0 a release for takeover at once).
_TOUCH = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'overflow' then return 0 end
redis.call('HSET', KEYS[1], 'overflow_owner', ARGV[1], 'overflow_at', ARGV[2])
return 1
"""


class Claims:
    """Claims of batch lines for overflow, on the request records."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._touch = redis.register_script(_TOUCH)

    @redis_boundary("overflow claims")
    async def statuses(self, request_ids: Sequence[str]) -> list[str | None]:
        """Each request's record status (None: no record), `completed` etc. once it has a
        result, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in request_ids:
                pipe.hget(keys.request(rid), "status")
                pipe.exists(keys.result(rid))
            raw = await pipe.execute()
        out: list[str | None] = []
        for status, done in zip(raw[::2], raw[1::2], strict=True):
            out.append("done" if done else (None if status is None else text(status)))
        return out

    @redis_boundary("overflow claims")
    async def claim(
        self, request_ids: Sequence[str], claimant: str, now: float, lease_s: float
    ) -> tuple[list[str], list[str]]:
        """Claim what can be claimed of `request_ids`: (queued lines claimed, abandoned
        claims taken over)."""
        fresh: list[str] = []
        taken: list[str] = []
        for rid in request_ids:
            got = await self._claim(
                keys=[keys.request(rid), keys.result(rid)], args=[claimant, repr(now), lease_s]
            )
            if got == 1:
                fresh.append(rid)
            elif got == 2:
                taken.append(rid)
        return fresh, taken

    @redis_boundary("overflow claims")
    async def touch(self, request_ids: Sequence[str], claimant: str, at: float) -> None:
        """Set the claim time of those lines still claimed without a result: `now` renews
        the claims (a remote batch still works on them), 0 releases them for takeover."""
        for rid in request_ids:
            await self._touch(keys=[keys.request(rid), keys.result(rid)], args=[claimant, repr(at)])

    def __repr__(self) -> str:
        return "<Claims>"

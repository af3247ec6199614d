"""Global low-priority slots of one deployment, leased in a Redis sorted set.

Member = slot id (`worker_id:random`), score = lease expiry in server milliseconds.
Every script reads the Redis server's clock, never the workers': leases written
by one host and reaped by another must agree on "now" even when their clocks
are skewed. Expired leases (a dead worker's) are removed before counting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.core.boundary import redis_boundary

NOW_MS = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: slots, pause. ARGV: limit, member, lease ms.
# Returns {1, count} when leased, {0, count} when full, {-1, pause ms left} when paused.
_ACQUIRE = (
    NOW_MS
    + """
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return {-1, paused} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local n = redis.call('ZCARD', KEYS[1])
if n < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[2])
  return {1, n + 1}
end
return {0, n}
"""
)

# KEYS: slots, pause. ARGV: limit, lease ms, members... Leases as many of the members (in
# order) as fit under the limit; returns how many (0 when paused).
_ACQUIRE_MANY = (
    NOW_MS
    + """
if redis.call('PTTL', KEYS[2]) > 0 then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local room = tonumber(ARGV[1]) - redis.call('ZCARD', KEYS[1])
local n = math.max(0, math.min(room, #ARGV - 2))
if n == 0 then return 0 end
local add = {}
for i = 1, n do
  add[#add + 1] = now_ms + tonumber(ARGV[2])
  add[#add + 1] = ARGV[i + 2]
end
redis.call('ZADD', KEYS[1], unpack(add))
return n
"""
)

# KEYS: slots. ARGV: lease ms, members... Re-adds a member whose lease was reaped: the
# call is still in flight, so counting it is the truth. Returns the re-added members.
_RENEW = (
    NOW_MS
    + """
local expiry = now_ms + tonumber(ARGV[1])
local readded = {}
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[1], expiry, ARGV[i]) == 1 then readded[#readded + 1] = ARGV[i] end
end
return readded
"""
)

# KEYS: slots. Live leases (expired ones removed).
_COUNT = (
    NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
return redis.call('ZCARD', KEYS[1])
"""
)

# KEYS: pause. ARGV: ms. Never shortens a longer pause already set.
_PAUSE = """
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
return redis.call('PTTL', KEYS[1])
"""


@dataclass(frozen=True, slots=True)
class Slot:
    """One leased low-priority call slot; hand it back with `Throttle.release`."""

    id: str
    deployment: str
    acquired_at: float


@dataclass(frozen=True, slots=True)
class Attempt:
    """Outcome of one try to lease a slot."""

    leased: bool
    count: int
    """Live leases after the try (0 when paused)."""
    paused_s: float = 0.0
    """Seconds the deployment stays paused (0 when not paused)."""


class SlotTable:
    """The Redis side of one deployment's global slots."""

    def __init__(self, redis: aioredis.Redis, deployment: str) -> None:
        self._redis = redis
        self._slots = keys.slots(deployment)
        self._pause = keys.pause(deployment)
        self._acquire = redis.register_script(_ACQUIRE)
        self._acquire_many = redis.register_script(_ACQUIRE_MANY)
        self._renew = redis.register_script(_RENEW)
        self._count = redis.register_script(_COUNT)
        self._pause_script = redis.register_script(_PAUSE)

    @redis_boundary("slot table")
    async def try_lease(self, member: str, limit: int, lease_s: float) -> Attempt:
        """Lease `member` if fewer than `limit` live leases exist and no pause is set."""
        reply: Any = await self._acquire(
            keys=[self._slots, self._pause], args=[limit, member, _ms(lease_s)]
        )
        status, value = int(reply[0]), int(reply[1])
        if status < 0:
            return Attempt(False, 0, value / 1000.0)
        return Attempt(status == 1, value)

    @redis_boundary("slot table")
    async def try_lease_many(self, members: Sequence[str], limit: int, lease_s: float) -> int:
        """Lease the first of `members` that fit under `limit` live leases (none while a
        pause is set), in one script; how many were leased."""
        if not members:
            return 0
        reply: Any = await self._acquire_many(
            keys=[self._slots, self._pause], args=[limit, _ms(lease_s), *members]
        )
        return int(reply)

    @redis_boundary("slot table")
    async def release(self, members: Sequence[str]) -> None:
        """Drop leases (a no-op for leases already gone)."""
        if members:
            await self._redis.zrem(self._slots, *members)

    @redis_boundary("slot table")
    async def renew(self, members: Sequence[str], lease_s: float) -> list[str]:
        """Extend leases to now + lease_s; the members that had expired and were re-added."""
        if not members:
            return []
        reply: Any = await self._renew(keys=[self._slots], args=[_ms(lease_s), *members])
        return [m.decode() if isinstance(m, bytes) else str(m) for m in reply]

    @redis_boundary("slot table")
    async def count(self) -> int:
        """Live leases of all workers."""
        return int(await self._count(keys=[self._slots]))

    @redis_boundary("slot table")
    async def pause(self, seconds: float) -> float:
        """Pause new leases for `seconds` (never shortening a longer pause); seconds left."""
        left = int(await self._pause_script(keys=[self._pause], args=[max(1, _ms(seconds))]))
        return max(0, left) / 1000.0


def _ms(seconds: float) -> int:
    return round(seconds * 1000)

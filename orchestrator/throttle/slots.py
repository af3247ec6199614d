"""Global low-priority slots of one deployment, leased in a Redis sorted set.

Member = slot id (`worker_id:random`), score = lease expiry in server milliseconds.
Every script reads the Redis server's clock, never the workers': leases written
by one host and reaped by another must agree on "now" even when their clocks
are skewed. Expired leases (a dead worker's) are removed before counting.

A lease lives as long as its call may. Leased, it lasts `lease_s` and the worker's
renewals extend it; when the call starts (`start`), it is lengthened to cover the call's
whole timeout, and renewals never shorten it again. A worker that stalls (SIGSTOP, a paused
VM, a long GC) cannot renew, yet the call it started keeps running at the deployment: had
its lease expired at `lease_s`, another worker would take the slot while the call still ran,
and the deployment would see more low-priority calls than the global limit. The price: a
worker killed mid-call keeps its slots until the calls' timeouts (the kernel closed its
connections, but nobody can tell a dead worker from a frozen one from outside); a worker
restarted under the same id drops its predecessor's leases at start (`drop_owned`). A
lease that expired before its call started (the worker stalled between the two) is not
started: the call takes a fresh slot under the limit instead.
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

# KEYS: slots. ARGV: lease ms, members... Extends live leases, never shortens one (a started
# call's lease covers its timeout) and never revives an expired one: its slot may have been
# leased again since. Returns the members whose lease was gone.
_RENEW = (
    NOW_MS
    + """
local expiry = now_ms + tonumber(ARGV[1])
local gone = {}
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if (not score) or tonumber(score) <= now_ms then
    redis.call('ZREM', KEYS[1], ARGV[i])
    gone[#gone + 1] = ARGV[i]
  elseif tonumber(score) < expiry then
    redis.call('ZADD', KEYS[1], expiry, ARGV[i])
  end
end
return gone
"""
)

# KEYS: slots. ARGV: member, hold ms. The call is starting: a live lease is lengthened to
# now + hold (never shortened). Returns 1, or 0 when the lease had expired (and is removed).
_START = (
    NOW_MS
    + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not score) or tonumber(score) <= now_ms then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
local expiry = now_ms + tonumber(ARGV[2])
if tonumber(score) < expiry then redis.call('ZADD', KEYS[1], expiry, ARGV[1]) end
return 1
"""
)

# KEYS: slots. ARGV: member prefix. Removes the leases whose member starts with it.
_DROP_OWNED = """
local dropped = 0
local cursor = '0'
repeat
  local page = redis.call('ZSCAN', KEYS[1], cursor, 'COUNT', 200)
  cursor = page[1]
  for i = 1, #page[2], 2 do
    local m = page[2][i]
    if string.sub(m, 1, #ARGV[1]) == ARGV[1] then
      dropped = dropped + redis.call('ZREM', KEYS[1], m)
    end
  end
until cursor == '0'
return dropped
"""

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
        self._renew = redis.register_script(_RENEW)
        self._start = redis.register_script(_START)
        self._drop_owned = redis.register_script(_DROP_OWNED)
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
    async def release(self, members: Sequence[str]) -> None:
        """Drop leases (a no-op for leases already gone)."""
        if members:
            await self._redis.zrem(self._slots, *members)

    @redis_boundary("slot table")
    async def renew(self, members: Sequence[str], lease_s: float) -> list[str]:
        """Extend live leases to at least now + lease_s; the members whose lease was gone."""
        if not members:
            return []
        reply: Any = await self._renew(keys=[self._slots], args=[_ms(lease_s), *members])
        return [m.decode() if isinstance(m, bytes) else str(m) for m in reply]

    @redis_boundary("slot table")
    async def start(self, member: str, hold_s: float) -> bool:
        """The call of `member` starts: its lease lasts at least `hold_s` more; False when
        the lease had already expired (the call must take a fresh slot)."""
        return int(await self._start(keys=[self._slots], args=[member, _ms(hold_s)])) == 1

    @redis_boundary("slot table")
    async def drop_owned(self, owner: str) -> int:
        """Remove every lease of `owner` (members `owner:…`); how many there were."""
        return int(await self._drop_owned(keys=[self._slots], args=[f"{owner}:"]))

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

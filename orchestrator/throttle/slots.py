"""Global low-priority slots of one deployment, leased in a Redis sorted set.

Member = slot id (`worker_id:random`), score = lease expiry in server milliseconds.
Every script reads the Redis server's clock, never the workers': leases written
by one host and reaped by another must agree on "now" even when their clocks
are skewed. Expired leases (a dead worker's) are removed before counting.

A slot is counted as long as its call may run. A lease lasts `lease_s` and its worker's
renewals extend it. A worker that stalls (SIGSTOP, a paused VM, a long GC) cannot renew,
yet a call it started keeps running at the deployment: were its lease reaped at `lease_s`,
another worker would take the slot while the call still ran, and the deployment would see
more low-priority calls than the global limit. So a call's start (`start`) writes its
deadline (the request timeout, plus a lease of margin) beside the lease, and an expired
lease whose call is still before its deadline is kept while its worker is alive.

Alive, not dead: both stop renewing, and only a dead worker's calls are gone (the kernel
closed its connections). Each worker stays subscribed to its own Pub/Sub channel
(`keys.slot_owner`) while it runs; the subscription lives exactly as long as the process's
connection (a frozen process keeps its socket open, a killed one loses it at once), so the
scripts read `PUBSUB NUMSUB` to keep a stalled worker's started calls and to reap a
dead worker's leases at `lease_s` as before. A worker restarted under the same id drops
its predecessor's leases at start (`open`). An expired lease is never revived: its slot
may have been leased again, so a call whose lease lapsed before it started (the worker
stalled between the two) takes a fresh slot under the limit instead.
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

# KEYS: slots, calls. ARGV[1]: the owners' channel prefix. Removes expired leases, except
# those of a started call before its deadline whose owner is still subscribed.
_REAP = """
local function reap(prefix)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms)
  for _, m in ipairs(expired) do
    local keep = false
    local deadline = tonumber(redis.call('HGET', KEYS[2], m) or '0')
    if deadline > now_ms then
      local owner = string.match(m, '^(.*):[^:]*$') or m
      local subs = redis.call('PUBSUB', 'NUMSUB', prefix .. owner)
      keep = tonumber(subs[2]) > 0
    end
    if not keep then
      redis.call('ZREM', KEYS[1], m)
      redis.call('HDEL', KEYS[2], m)
    end
  end
end
"""

# KEYS: slots, calls, pause. ARGV: owners' prefix, limit, member, lease ms.
# Returns {1, count} when leased, {0, count} when full, {-1, pause ms left} when paused.
_ACQUIRE = (
    NOW_MS
    + _REAP
    + """
local paused = redis.call('PTTL', KEYS[3])
if paused > 0 then return {-1, paused} end
reap(ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
if n < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[4]), ARGV[3])
  return {1, n + 1}
end
return {0, n}
"""
)

# KEYS: slots, calls, pause. ARGV: owners' prefix, limit, lease ms, members... Leases as
# many of the members (in order) as fit under the limit after reaping; returns how many
# (0 when paused).
_ACQUIRE_MANY = (
    NOW_MS
    + _REAP
    + """
if redis.call('PTTL', KEYS[3]) > 0 then return 0 end
reap(ARGV[1])
local room = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
local n = math.max(0, math.min(room, #ARGV - 3))
if n == 0 then return 0 end
local add = {}
for i = 1, n do
  add[#add + 1] = now_ms + tonumber(ARGV[3])
  add[#add + 1] = ARGV[i + 3]
end
redis.call('ZADD', KEYS[1], unpack(add))
return n
"""
)

# KEYS: slots. ARGV: lease ms, members... Extends the leases still in the table (an expired
# one not yet reaped was not taken by anyone: reaping comes before every lease), never
# shortening one. Returns the members no longer in the table.
_RENEW = (
    NOW_MS
    + """
local expiry = now_ms + tonumber(ARGV[1])
local gone = {}
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not score then
    gone[#gone + 1] = ARGV[i]
  elseif tonumber(score) < expiry then
    redis.call('ZADD', KEYS[1], expiry, ARGV[i])
  end
end
return gone
"""
)

# KEYS: slots, calls. ARGV: member, hold ms. The member's call starts and may run for hold
# ms: its deadline is written. Returns 1, or 0 when the lease is no longer in the table.
_START = (
    NOW_MS
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], now_ms + tonumber(ARGV[2]))
return 1
"""
)

# KEYS: slots, calls. ARGV: members... Drops leases and their calls.
_RELEASE = """
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return #ARGV
"""

# KEYS: slots, calls. ARGV: member prefix. Drops the leases whose member starts with it.
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
      redis.call('HDEL', KEYS[2], m)
    end
  end
until cursor == '0'
return dropped
"""

# KEYS: slots, calls. ARGV: owners' prefix. Live leases (expired ones reaped).
_COUNT = (
    NOW_MS
    + _REAP
    + """
reap(ARGV[1])
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
        self._calls = keys.slot_calls(deployment)
        self._pause = keys.pause(deployment)
        self._owners = keys.slot_owner(deployment, "")
        self._acquire = redis.register_script(_ACQUIRE)
        self._acquire_many = redis.register_script(_ACQUIRE_MANY)
        self._renew = redis.register_script(_RENEW)
        self._start = redis.register_script(_START)
        self._release = redis.register_script(_RELEASE)
        self._drop_owned = redis.register_script(_DROP_OWNED)
        self._count = redis.register_script(_COUNT)
        self._pause_script = redis.register_script(_PAUSE)

    def owner_channel(self, owner: str) -> str:
        """The channel `owner` stays subscribed to while it runs."""
        return self._owners + owner

    @redis_boundary("slot table")
    async def try_lease(self, member: str, limit: int, lease_s: float) -> Attempt:
        """Lease `member` if fewer than `limit` live leases exist and no pause is set."""
        reply: Any = await self._acquire(
            keys=[self._slots, self._calls, self._pause],
            args=[self._owners, limit, member, _ms(lease_s)],
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
            keys=[self._slots, self._calls, self._pause],
            args=[self._owners, limit, _ms(lease_s), *members],
        )
        return int(reply)

    @redis_boundary("slot table")
    async def release(self, members: Sequence[str]) -> None:
        """Drop leases (a no-op for leases already gone)."""
        if members:
            await self._release(keys=[self._slots, self._calls], args=list(members))

    @redis_boundary("slot table")
    async def renew(self, members: Sequence[str], lease_s: float) -> list[str]:
        """Extend leases to at least now + lease_s; the members no longer in the table."""
        if not members:
            return []
        reply: Any = await self._renew(keys=[self._slots], args=[_ms(lease_s), *members])
        return [m.decode() if isinstance(m, bytes) else str(m) for m in reply]

    @redis_boundary("slot table")
    async def start(self, member: str, hold_s: float) -> bool:
        """The call of `member` starts and may run `hold_s`: its lease is kept that long
        while its owner lives; False when the lease is gone (take a fresh slot)."""
        reply = await self._start(keys=[self._slots, self._calls], args=[member, _ms(hold_s)])
        return int(reply) == 1

    @redis_boundary("slot table")
    async def drop_owned(self, owner: str) -> int:
        """Remove every lease of `owner` (members `owner:…`); how many there were."""
        args = [f"{owner}:"]
        return int(await self._drop_owned(keys=[self._slots, self._calls], args=args))

    @redis_boundary("slot table")
    async def count(self) -> int:
        """Live leases of all workers."""
        return int(await self._count(keys=[self._slots, self._calls], args=[self._owners]))

    @redis_boundary("slot table")
    async def pause(self, seconds: float) -> float:
        """Pause new leases for `seconds` (never shortening a longer pause); seconds left."""
        left = int(await self._pause_script(keys=[self._pause], args=[max(1, _ms(seconds))]))
        return max(0, left) / 1000.0


def _ms(seconds: float) -> int:
    return round(seconds * 1000)

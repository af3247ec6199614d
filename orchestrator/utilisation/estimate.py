"""The `estimate` utilisation source: a Redis-held leaky bucket fed by token events.

The bucket mirrors Azure's PTU algorithm (AZURE_FACTS.md §1): the level is in
input-token equivalents, 100 % is `window_s` seconds of capacity, it drains
continuously at `capacity_tpm / 60` per second, an `admit` charges
(prompt - cached) + max_tokens x weight, and a `complete` reconciles with the
actual tokens. One Lua script applies an event atomically and at most once per
(request_id, phase), so a redelivered event is never counted twice.

Time: every drain is computed on the Redis server's clock (`TIME` inside the
script), never on the producers' clocks. Events come from several processes and
hosts whose clocks differ; a drain computed from a skewed producer timestamp
would run the bucket backwards or forwards. A late event is charged in full when
it arrives, which can only over-estimate (conservative: less low-priority work).
Readings convert server-side ages to the reader's own clock, so a reading's age
is exact even when the reader's clock is skewed against the server.

Staleness: an empty bucket with no events is a true "0 %" only while its feeder
is alive. The process that folds events in (`ptu estimator`, or any in-process
feeder) calls `heartbeat()` at least every `max_age_s / 3`; a reading's
`observed_at` is the last heartbeat, so a dead feeder makes readings age past
`max_age_s` and the throttle fails closed. `record()` deliberately does not
heartbeat: a worker recording its own calls must not hide a dead estimator that
is no longer folding in the gateway's high-priority traffic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from orchestrator import keys
from orchestrator.errors import UtilisationUnavailable
from orchestrator.schemas import TokenEvent
from orchestrator.settings import DeploymentConfig
from orchestrator.utilisation.base import Reading

log = structlog.get_logger(__name__)

SOURCE = "estimate"
EVENT_FIELD = "event"
"""The stream entry field holding a token event's JSON."""
EVENTS_MAXLEN = 100_000
"""Approximate cap of the token-event stream (old events carry no information)."""

_NOW = """
local function now_s(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS: bucket, request record.
# ARGV: phase, prompt, cached, max_tokens, completion, weight, rate/s, dedupe ttl ms, now|''.
_RECORD = (
    _NOW
    + """
local now = now_s(ARGV[9])
local phase = ARGV[1]
if redis.call('HEXISTS', KEYS[2], phase) == 1 then return 0 end
local prompt, cached = tonumber(ARGV[2]), tonumber(ARGV[3])
local max_tokens, completion = tonumber(ARGV[4]), tonumber(ARGV[5])
local weight, rate = tonumber(ARGV[6]), tonumber(ARGV[7])
local input = math.max(0, prompt - cached)
local delta
if phase == 'admit' then
  -- an admit arriving after its complete changes nothing: the complete charged it all
  if redis.call('HEXISTS', KEYS[2], 'complete') == 1 then return 0 end
  delta = input + max_tokens * weight
  redis.call('HSET', KEYS[2], 'admit', 1, 'input', input, 'max_tokens', max_tokens)
else
  if redis.call('HEXISTS', KEYS[2], 'admit') == 1 then
    local charged_input = tonumber(redis.call('HGET', KEYS[2], 'input'))
    local charged_max = tonumber(redis.call('HGET', KEYS[2], 'max_tokens'))
    delta = (completion - charged_max) * weight
    -- the actual prompt (and cached) count replaces the gateway's estimate when known
    if prompt > 0 then delta = delta + input - charged_input end
  else
    delta = input + completion * weight
  end
  redis.call('HSET', KEYS[2], 'complete', 1)
end
redis.call('PEXPIRE', KEYS[2], ARGV[8])
local level = tonumber(redis.call('HGET', KEYS[1], 'level') or '0')
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or now)
level = math.max(0, level - rate * math.max(0, now - at))
level = math.max(0, level + delta)
redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', tostring(now))
return 1
"""
)

# KEYS: bucket. ARGV: rate/s, now|''. Returns nil when the bucket was never written,
# else {level drained to now, seconds since the last heartbeat or '-1'} as strings.
_READ = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local now = now_s(ARGV[2])
local level = tonumber(redis.call('HGET', KEYS[1], 'level') or '0')
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or now)
level = math.max(0, level - tonumber(ARGV[1]) * math.max(0, now - at))
local hb = redis.call('HGET', KEYS[1], 'hb')
local age = '-1'
if hb then age = tostring(math.max(0, now - tonumber(hb))) end
return {tostring(level), age}
"""
)

# KEYS: buckets. ARGV: now|''.
_HEARTBEAT = (
    _NOW
    + """
local now = tostring(now_s(ARGV[1]))
for _, key in ipairs(KEYS) do redis.call('HSET', key, 'hb', now) end
return #KEYS
"""
)


class EstimateStore:
    """A `UtilisationSource` computing utilisation from token events (sub-second fresh)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        deployments: Sequence[DeploymentConfig],
        *,
        window_s: float,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
        time_source: Literal["server", "clock"] = "server",
        dedupe_ttl_s: float = 3600.0,
    ) -> None:
        if window_s <= 0 or max_age_s <= 0 or dedupe_ttl_s <= 0:
            raise ValueError("window_s, max_age_s and dedupe_ttl_s must be positive")
        self._redis = redis
        self._deployments = {d.name: d for d in deployments}
        self.window_s = window_s
        self.max_age_s = max_age_s
        self._clock = clock
        # "clock" drives the bucket from `clock` instead of the server's TIME (tests)
        self._time_source = time_source
        self._dedupe_ttl_ms = int(dedupe_ttl_s * 1000)
        self._record = redis.register_script(_RECORD)
        self._read = redis.register_script(_READ)
        self._heartbeat = redis.register_script(_HEARTBEAT)

    @property
    def deployments(self) -> list[str]:
        """Names of the deployments this store tracks."""
        return list(self._deployments)

    def _now_arg(self) -> str:
        return repr(self._clock()) if self._time_source == "clock" else ""

    async def record(self, event: TokenEvent) -> None:
        """Fold one token event into its deployment's bucket, at most once per (id, phase).

        Events for deployments this store does not track are ignored.
        Raises UtilisationUnavailable when Redis cannot be reached (nothing applied).
        """
        d = self._deployments.get(event.deployment)
        if d is None:
            log.debug("estimate_event_ignored", deployment=event.deployment, reason="unknown")
            return
        args: list[Any] = [
            event.phase,
            event.prompt_tokens,
            event.cached_tokens,
            event.max_tokens,
            event.completion_tokens,
            repr(d.weight),
            repr(d.capacity_tpm / 60.0),
            self._dedupe_ttl_ms,
            self._now_arg(),
        ]
        bucket, req = keys.estimate(d.name), keys.estimate_request(d.name, event.request_id)
        try:
            applied = await self._record(keys=[bucket, req], args=args)
        except RedisError as exc:
            raise UtilisationUnavailable(f"estimate {d.name}: record failed: {exc}") from exc
        if not applied:
            log.debug("estimate_event_duplicate", request_id=event.request_id, phase=event.phase)

    async def heartbeat(self) -> None:
        """Declare the feeder alive for every tracked deployment (call every max_age_s / 3)."""
        names = [keys.estimate(n) for n in self._deployments]
        if not names:
            return
        try:
            await self._heartbeat(keys=names, args=[self._now_arg()])
        except RedisError as exc:
            raise UtilisationUnavailable(f"estimate heartbeat failed: {exc}") from exc

    async def read(self, deployment: str) -> Reading:
        """The bucket level drained up to now; `observed_at` is the feeder's last heartbeat.

        Raises UtilisationUnavailable for an unknown deployment, a bucket no feeder
        ever wrote, or an unreachable Redis.
        """
        d = self._deployments.get(deployment)
        if d is None:
            raise UtilisationUnavailable(f"estimate: deployment {deployment!r} is not tracked")
        rate = d.capacity_tpm / 60.0
        local_now = self._clock()
        now_arg = repr(local_now) if self._time_source == "clock" else ""
        try:
            reply = await self._read(keys=[keys.estimate(deployment)], args=[repr(rate), now_arg])
        except RedisError as exc:
            raise UtilisationUnavailable(f"estimate {deployment}: read failed: {exc}") from exc
        if reply is None:
            raise UtilisationUnavailable(f"estimate {deployment}: no feeder has written it yet")
        level, age = float(reply[0]), float(reply[1])
        if age < 0:
            raise UtilisationUnavailable(f"estimate {deployment}: no feeder heartbeat yet")
        return Reading(level / (rate * self.window_s), local_now - age, SOURCE)

    async def close(self) -> None:
        """Nothing to release: the Redis client belongs to the caller."""

    def __repr__(self) -> str:
        names = ",".join(self._deployments)
        return f"<EstimateStore deployments={names} window_s={self.window_s:g}>"


async def publish(redis: aioredis.Redis, event: TokenEvent) -> None:
    """Append a token event to `keys.TOKEN_EVENTS` for `ptu estimator` to fold in.

    Raises UtilisationUnavailable when Redis cannot take it.
    """
    try:
        await redis.xadd(
            keys.TOKEN_EVENTS,
            {EVENT_FIELD: event.model_dump_json()},
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )
    except RedisError as exc:
        raise UtilisationUnavailable(f"token event publish failed: {exc}") from exc

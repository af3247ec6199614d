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

Staleness: an empty bucket with no events is a true "0 %" only while its
feeders are alive and nothing waits unapplied. Two signals, both on the server
clock, make a reading's age:
- heartbeat: every feeder (the ingress and the worker recording in-process via
  `keep_alive()`, `ptu estimator` after each read) writes `hb` at least every
  `max_age_s / 3`; when all feeders die, readings age past `max_age_s` and the
  throttle fails closed. `record()` alone does not count as a heartbeat.
- stream lag: `ptu estimator` stores the id of the newest `TOKEN_EVENTS` entry
  it folded in (`applied`); a reading is at least as old as the oldest entry
  after it. A dead estimator therefore makes readings stale as soon as one
  published event waits longer than `max_age_s`, even while in-process feeders
  keep heartbeating. Stream ids are server time, so this is skew-free too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from orchestrator.core import keys
from orchestrator.core.errors import UtilisationUnavailable
from orchestrator.core.schemas import TokenEvent
from orchestrator.core.settings import DeploymentConfig
from orchestrator.utilisation.base import Reading

log = structlog.get_logger(__name__)

SOURCE = "estimate"
EVENT_FIELD = "event"
"""The stream entry field holding a token event's JSON."""
EVENTS_MAXLEN = 100_000
"""Approximate cap of the token-event stream (old events carry no information)."""

_SCRIPTS = Path(__file__).parent


def _lua(name: str) -> str:
    return (_SCRIPTS / f"{name}.lua").read_text(encoding="utf-8")


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
        self._record = redis.register_script(_lua("record"))
        self._read = redis.register_script(_lua("read"))
        self._heartbeat = redis.register_script(_lua("heartbeat"))

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

    async def heartbeat(self, applied: str | None = None) -> None:
        """Declare the feeder alive for every tracked deployment (call every max_age_s / 3).

        The stream consumer passes `applied`, the id of the newest `TOKEN_EVENTS`
        entry it has folded in; older entries still unapplied make readings stale.
        Raises UtilisationUnavailable when Redis cannot be reached.
        """
        try:
            for name in self._deployments:
                # one call per deployment: each bucket is in its own Cluster slot
                await self._heartbeat(
                    keys=[keys.estimate(name)], args=[self._now_arg(), applied or ""]
                )
        except RedisError as exc:
            raise UtilisationUnavailable(f"estimate heartbeat failed: {exc}") from exc

    async def keep_alive(
        self, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        """Heartbeat every max_age_s / 3 until cancelled (for in-process feeders)."""
        while True:
            try:
                await self.heartbeat()
            except UtilisationUnavailable as exc:
                log.warning("estimate_heartbeat_failed", error=str(exc))
            await sleep(self.max_age_s / 3)

    async def read(self, deployment: str) -> Reading:
        """The bucket level drained up to now, as old as its feeders' knowledge.

        The age is the larger of: time since the last heartbeat, and how long the
        oldest token-event stream entry not yet folded in has been waiting.

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
            if reply is None:
                raise UtilisationUnavailable(f"estimate {deployment}: no feeder has written it yet")
            level, heartbeat_age, server_now = (float(x) for x in reply[:3])
            lag_age = await self._lag_age(_text(reply[3]), server_now)
        except RedisError as exc:
            raise UtilisationUnavailable(f"estimate {deployment}: read failed: {exc}") from exc
        if heartbeat_age < 0:
            raise UtilisationUnavailable(f"estimate {deployment}: no feeder heartbeat yet")
        age = max(heartbeat_age, lag_age)
        return Reading(level / (rate * self.window_s), local_now - age, SOURCE)

    async def _lag_age(self, applied: str, now: float) -> float:
        """How long the oldest token event after `applied` has waited (0 when none).

        Read after the bucket, not with it (another slot): an event folded in
        meanwhile can only make the reading look older, never fresher.
        """
        start = f"({applied}" if applied else "-"
        first = await self._redis.xrange(keys.TOKEN_EVENTS, start, "+", count=1)
        if not first:
            return 0.0
        entry_ms = int(_text(first[0][0]).split("-", 1)[0])
        return max(0.0, now - entry_ms / 1000.0)

    async def close(self) -> None:
        """Nothing to release: the Redis client belongs to the caller."""

    def __repr__(self) -> str:
        names = ",".join(self._deployments)
        return f"<EstimateStore deployments={names} window_s={self.window_s:g}>"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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

"""The breaker of one deployment shared by every ingress replica and worker through Redis.

Each process keeps its own `Breaker` (the sliding window counts its own calls; a
process needs no round trip to count). What is shared is the verdict: a trip is
written to the hash `keys.breaker(d)` (state, open-until in the *server's*
milliseconds, so skewed hosts agree, and an epoch bumped at every closing); every
process reads it at most every `sync_s` and adopts it. Once the open time is over the
hash reads as half-open everywhere, and only the process that wins
`SET keys.breaker_probe(d) NX PX` sends the probe; its success closes the breaker for
all (new epoch), its failure re-opens it for all. A Redis error never blocks traffic:
the local breaker decides alone until Redis answers again. On the ingress's interactive
path every Redis call of the breaker has a deadline (`guard`, `core/fail_open`): a hung
or dead Redis costs a call at most that, and nothing during the cool-down after it.

A trip caused by this process's own credential (a 401/403: `credentials`, its key or
token refused; clients' keys are never forwarded) stays local: it is not written to
Redis, so one process with a wrong key never pauses the others. It is logged at error
(`circuit_opened_locally`) and shows in this process's circuit gauge; while it lasts the
process does not take the shared half-open probe either (its call would fail for its own
reason and hold the probe from a process that can tell).

A deployment has one breaker per API surface (`chat`: chat completions; `responses`: the
Responses API, served by the resource's v1 surface): a resource that does not serve one
(a 404 or 500 on every call) must not pause the other.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import redis.asyncio as aioredis
import structlog

from orchestrator.breaker.machine import Breaker, BreakerConfig, Outcome, State, Verdict
from orchestrator.core import keys
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.fail_open import FailOpen
from orchestrator.throttle.slots import NOW_MS

if TYPE_CHECKING:
    from orchestrator.core.settings import Settings

log = structlog.get_logger(__name__)
_state = redis_boundary("breaker state")
T = TypeVar("T")

Surface = Literal["chat", "responses"]
SURFACES: tuple[Surface, ...] = ("chat", "responses")


LOCAL_REASON: Outcome = "credentials"
"""The trip kept to this process: its own credential was refused."""


def surface_of(endpoint: str) -> Surface:
    """The API surface of a call's endpoint (`chat/completions` or `responses`)."""
    return "responses" if endpoint == "responses" else "chat"


# KEYS: breaker hash. Returns {state, ms left open, epoch, reason, trips}.
_READ = (
    NOW_MS
    + """
local v = redis.call('HMGET', KEYS[1], 'state', 'until_ms', 'epoch', 'reason', 'trips')
local state = v[1] or 'closed'
local left = math.max(0, tonumber(v[2] or '0') - now_ms)
if state == 'open' and left == 0 then state = 'half_open' end
return {state, left, tonumber(v[3] or '0'), v[4] or '', tonumber(v[5] or '0')}
"""
)

# KEYS: breaker hash, probe key. ARGV: open ms, reason. Never shortens a longer open time.
_TRIP = (
    NOW_MS
    + """
local until_ms = now_ms + tonumber(ARGV[1])
local old = tonumber(redis.call('HGET', KEYS[1], 'until_ms') or '0')
if redis.call('HGET', KEYS[1], 'state') ~= 'open' or old <= now_ms then
  redis.call('HINCRBY', KEYS[1], 'trips', 1)
end
if until_ms > old or redis.call('HGET', KEYS[1], 'state') ~= 'open' then
  redis.call('HSET', KEYS[1], 'until_ms', until_ms)
end
redis.call('HSET', KEYS[1], 'state', 'open', 'reason', ARGV[2])
redis.call('DEL', KEYS[2])
return until_ms - now_ms
"""
)

# KEYS: breaker hash, probe key. Closes unless someone re-opened it meanwhile. New epoch.
_CLOSE = (
    NOW_MS
    + """
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until_ms') or '0')
if redis.call('HGET', KEYS[1], 'state') == 'open' and until_ms > now_ms then return -1 end
redis.call('HSET', KEYS[1], 'state', 'closed', 'until_ms', 0, 'reason', '')
redis.call('DEL', KEYS[2])
return redis.call('HINCRBY', KEYS[1], 'epoch', 1)
"""
)


@dataclass(frozen=True, slots=True)
class BreakerView:
    """The shared state of one breaker as `ptu status` shows it."""

    deployment: str
    state: State
    open_left_s: float
    reason: str
    trips: int


async def read_view(
    redis: aioredis.Redis, deployment: str, surface: Surface = "chat"
) -> BreakerView:
    """The shared breaker state of `deployment`'s `surface` (closed when never tripped)."""
    reply: Any = await redis.eval(_READ, 1, keys.breaker(deployment, surface))
    state, left, _epoch, reason, trips = _decode(reply)
    return BreakerView(deployment, state, left, reason, trips)


def _decode(reply: Any) -> tuple[State, float, int, str, int]:
    raw_state = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    state: State = raw_state if raw_state in ("open", "half_open") else "closed"  # type: ignore[assignment]
    reason = reply[3].decode() if isinstance(reply[3], bytes) else str(reply[3])
    return state, int(reply[1]) / 1000.0, int(reply[2]), reason, int(reply[4])


@dataclass(frozen=True, slots=True)
class Sharing:
    """How a process shares a breaker's verdict through Redis."""

    sync_s: float = 0.5
    """The shared state is read at most this often (0: at every call)."""
    guard: FailOpen | None = None
    """The interactive path's time budget on Redis (None: Redis calls are awaited)."""


class SharedBreaker:
    """One deployment's breaker: local counting, verdict shared through Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        deployment: str,
        config: BreakerConfig,
        *,
        endpoint: str = "",
        surface: Surface = "chat",
        sharing: Sharing = Sharing(),
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, State], None] | None = None,
    ) -> None:
        self.deployment = deployment
        self._guard = sharing.guard
        self.endpoint = endpoint
        self.machine = Breaker(config)
        self._redis = redis
        self.surface = surface
        self._key = keys.breaker(deployment, surface)
        self._probe_key = keys.breaker_probe(deployment, surface)
        self._read = redis.register_script(_READ)
        self._trip = redis.register_script(_TRIP)
        self._close = redis.register_script(_CLOSE)
        self._sync_s = sharing.sync_s
        self._clock = clock
        self._synced_at: float | None = None
        self._on_change = on_change
        self._probe_ms = max(1, round(config.probe_timeout_s * 1000))

    @property
    def state(self) -> State:
        """The local copy's state (as of the last sync; an open time that is over reads
        as half-open)."""
        before = self.machine.state
        if self.machine.advance(self._clock()):
            self._changed(before)
        return self.machine.state

    async def allow(self) -> Verdict:
        """`call`, `probe` (this process won the one half-open trial) or `reject`."""
        await self.sync()
        verdict = self.machine.allow(self._clock())
        if verdict != "probe" or self.machine.reason == LOCAL_REASON:
            return verdict  # a local trip's probe is this process's alone
        if self._guard is not None:  # failing open: this process probes
            won = await self._guard.call("breaker_probe", self._take_probe, True)
            return "probe" if won else "reject"
        try:
            won = await self._take_probe()
        except StoreUnavailable as exc:
            self._redis_failed(exc)
            return "probe"
        return "probe" if won else "reject"

    async def record(
        self, outcome: Outcome, *, retry_after_s: float | None = None, probe: bool = False
    ) -> None:
        """Fold a finished call in; share a trip or a closing with every process."""
        before = self.machine.state
        change = self.machine.record(
            self._clock(), outcome, retry_after_s=retry_after_s, probe=probe
        )
        try:
            if change == "opened" and outcome == LOCAL_REASON:
                self._tripped_locally()
            elif change == "opened":
                left = self.machine.open_left(self._clock())
                await self._shared("breaker_trip", lambda: self._share_trip(left), None)
            elif change == "closed":
                epoch = await self._shared("breaker_close", self._share_close, -1)
                if epoch >= 0:
                    self.machine.epoch = max(self.machine.epoch, epoch)
        except StoreUnavailable as exc:
            self._redis_failed(exc)
        if self.machine.state != before:
            self._changed(before)

    # the breaker's state in Redis: its errors leave as StoreUnavailable

    @_state
    async def _take_probe(self) -> bool:
        """Win the one half-open trial of every process (a key with a timeout)."""
        return bool(await self._redis.set(self._probe_key, "1", nx=True, px=self._probe_ms))

    @_state
    async def _share_trip(self, left_s: float) -> None:
        args: list[int | str] = [max(1, round(left_s * 1000)), self.machine.reason]
        await self._trip(keys=[self._key, self._probe_key], args=args)

    @_state
    async def _share_close(self) -> int:
        """Close the shared breaker; its new epoch (negative: nothing to close)."""
        return int(await self._close(keys=[self._key, self._probe_key]))

    @_state
    async def _fetch(self) -> Any:
        return await self._read(keys=[self._key])

    async def sync(self, *, force: bool = False) -> None:
        """Adopt the shared state, at most every `sync_s` unless forced."""
        now = self._clock()
        if not force and self._synced_at is not None and now - self._synced_at < self._sync_s:
            return
        self._synced_at = now
        try:
            reply = await self._shared("breaker_sync", self._fetch, None)
        except StoreUnavailable as exc:
            self._redis_failed(exc)
            return
        if reply is None:  # failed open: the local copy decides
            return
        state, left, epoch, reason, _trips = _decode(reply)
        before = self.machine.state
        self.machine.adopt(self._clock(), state, left, epoch)
        self.machine.advance(self._clock())
        if state == "open" and reason:
            self.machine.reason = reason
        if self.machine.state != before:
            self._changed(before)

    async def _shared(self, what: str, work: Callable[[], Awaitable[T]], default: T) -> T:
        """`work()` under the guard's deadline (failing open to `default`), or as is."""
        if self._guard is None:
            return await work()
        return await self._guard.call(what, work, default)

    def open_left(self) -> float:
        """Seconds the local copy stays open."""
        return self.machine.open_left(self._clock())

    def _tripped_locally(self) -> None:
        log.error(
            "circuit_opened_locally",
            deployment=self.deployment,
            surface=self.surface,
            reason=LOCAL_REASON,
            open_s=round(self.machine.open_left(self._clock()), 3),
            hint="the upstream refused this process's own key or token (401/403); "
            "check its PTU_AZURE_OPENAI_API_KEY or identity; other processes are not paused",
        )

    def _redis_failed(self, exc: StoreUnavailable) -> None:
        """The shared state could not be read or written: the local copy decides meanwhile."""
        log.warning(
            "breaker_redis_failed",
            deployment=self.deployment,
            surface=self.surface,
            error=repr(exc),
        )

    def _changed(self, before: State) -> None:
        m = self.machine
        event = "circuit_opened" if m.state == "open" else f"circuit_{m.state}"
        log.info(
            event,
            deployment=self.deployment,
            surface=self.surface,
            previous=before,
            reason=m.reason or None,
            open_s=round(m.open_left(self._clock()), 3),
        )
        if self._on_change is not None:
            self._on_change(self.deployment, m.state)

    def __repr__(self) -> str:
        return f"<SharedBreaker deployment={self.deployment} {self.surface} {self.machine!r}>"


def breaker_config(settings: Settings, *, probe_timeout_s: float | None = None) -> BreakerConfig:
    """The breaker thresholds from `Settings` (`PTU_BREAKER_*`, `PTU_SPILLOVER_WAIT_MS`)."""
    return BreakerConfig(
        failure_rate=settings.breaker_failure_rate,
        min_calls=settings.breaker_min_calls,
        window_s=settings.breaker_window_s,
        open_s=settings.breaker_open_s,
        max_open_s=max(settings.breaker_max_open_s, settings.breaker_open_s),
        throttle_grace_s=settings.spillover_wait_ms / 1000.0,
        probe_timeout_s=probe_timeout_s or settings.request_timeout_s,
    )

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
- heartbeat: the feeders that see high-priority traffic (the ingress through
  `keep_alive()`, `ptu estimator` after each read) write `hb` at least every
  `max_age_s / 3`; when they all die, readings age past `max_age_s` and the
  throttle fails closed. `record()` alone does not count as a heartbeat, and the
  worker, which records its own calls, deliberately does not heartbeat: it knows
  only the low-priority share, so a worker alone must not make "0 %" look fresh.
- stream lag: `ptu estimator` stores the id of the newest `TOKEN_EVENTS` entry
  it folded in (`applied`); a reading is at least as old as the oldest entry
  after it. A dead estimator therefore makes readings stale as soon as one
  published event waits longer than `max_age_s`, even while in-process feeders
  keep heartbeating. Stream ids are server time, so this is skew-free too.

Calibration (`PTU_CALIBRATION=auto`, the default): the bucket is a model, and a real
deployment departs from it (other applications call it directly, it serves less than the
capacity table says, its bucket is another size, its utilisation is not a bucket level, its
header is late, smoothed or absent). What the deployment tells about itself travels with the
token events (the utilisation header, a 429 and its retry-after, a spilled response,
`x-ratelimit-remaining-tokens`; see `orchestrator/calls/signals.py`) and, when configured, in
the Azure Monitor minute (`drift.py`). `filter.py` says what each signal means and how the
estimate is made of them; it is pure, and this store is its runtime.

Shared state: one filter state per deployment, a JSON document in the deployment's hash.
Every event is applied read-step-write: `load.lua` reads the state, the request's charge
record and the server's clock; `filter.step` runs here; `commit.lua` stores the result only
if the state's version is still the one read (compare-and-set), and marks the event applied
at most once per (request id, phase). A conflict (another process stored first) reads again
and re-steps, so every worker, ingress replica and `ptu estimator` builds one state, as if
the events had come from one process, in two Redis commands per event. `PTU_CALIBRATION=off`
steps the same state with the charges alone: the open-loop model exactly.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import RedisCluster

from orchestrator.core import keys
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.errors import UtilisationUnavailable
from orchestrator.core.redis_replies import text
from orchestrator.core.schemas import TokenEvent
from orchestrator.core.settings import DeploymentConfig
from orchestrator.utilisation.base import Reading
from orchestrator.utilisation.estimate import batch
from orchestrator.utilisation.estimate.calibration import DEFAULT_PARAMS
from orchestrator.utilisation.estimate.drift import MonitorDrift
from orchestrator.utilisation.estimate.events import calibration_of, signal_of
from orchestrator.utilisation.estimate.filter import Signal, read, step
from orchestrator.utilisation.estimate.state import FilterParams, FilterState

log = structlog.get_logger(__name__)

SOURCE = "estimate"
EVENT_FIELD = "event"
"""The stream entry field holding a token event's JSON."""
_JITTER = random.Random()
"""Its own generator: the process's global one is left to the application (and to test
tools that watch it)."""


def jitter_s() -> float:
    """The wait before reading again after a conflict (another writer went first)."""
    return _JITTER.uniform(0.0, 0.002)


MAX_CONFLICTS = 50
"""Compare-and-set retries before an event is given up (logged): many writers at once."""
MINUTE_S = 60.0
RECORD = ("admit", "complete", "observe", "input", "max_tokens", "at")
"""A request's charge record: the fields load.lua returns after the state (its 7th to 12th)."""

_SCRIPTS = Path(__file__).parent


def _lua(name: str) -> str:
    return (_SCRIPTS / f"{name}.lua").read_text(encoding="utf-8")


class EstimateStore:
    """A `UtilisationSource` computing utilisation from token events (sub-second fresh)."""

    DEDUPE_TTL_S = 3600.0
    """How long a request's phases are remembered, so a redelivered token event is folded in
    once (longer than any call, its retries and the token-event stream's redelivery)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        deployments: Sequence[DeploymentConfig],
        *,
        window_s: float,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
        time_source: Literal["server", "clock"] = "server",
        calibration: FilterParams | None = DEFAULT_PARAMS,
        low_priority: bool = False,
    ) -> None:
        if window_s <= 0 or max_age_s <= 0:
            raise ValueError("window_s and max_age_s must be positive")
        self._redis = redis
        self._deployments = {d.name: d for d in deployments}
        self.window_s = window_s
        self.max_age_s = max_age_s
        self._clock = clock
        # "clock" drives the bucket from `clock` instead of the server's TIME (tests)
        self._time_source = time_source
        self._dedupe_ttl_ms = int(self.DEDUPE_TTL_S * 1000)
        self.calibration = calibration
        """The filter's tunables; None = the open-loop model alone (signals ignored)."""
        self._params = calibration or DEFAULT_PARAMS
        self._controlled = low_priority
        """The worker's store: its charges are the throttle's own (see `Signal.controlled`)."""
        self._load = redis.register_script(_lua("load"))
        self._commit = redis.register_script(_lua("commit"))
        self._heartbeat = redis.register_script(_lua("heartbeat"))
        self._drift: MonitorDrift | None = None

    @property
    def deployments(self) -> list[str]:
        """Names of the deployments this store tracks."""
        return list(self._deployments)

    def _now_arg(self) -> str:
        return repr(self._clock()) if self._time_source == "clock" else ""

    def _full(self, d: DeploymentConfig) -> float:
        """The level of 100 %, in tokens: `window_s` seconds of the table capacity."""
        return d.capacity_tpm / 60.0 * self.window_s

    async def record(self, event: TokenEvent) -> None:
        """Fold one token event into its deployment's estimate, at most once per (id, phase).

        Events for deployments this store does not track are ignored.
        Raises UtilisationUnavailable when Redis cannot be reached (nothing applied).
        """
        d = self._deployments.get(event.deployment)
        if d is None:
            log.debug("estimate_event_ignored", deployment=event.deployment, reason="unknown")
            return
        key, req = keys.estimate(d.name), keys.estimate_request(d.name, event.request_id)
        with redis_boundary(f"estimate {d.name}: record", UtilisationUnavailable):
            for _ in range(MAX_CONFLICTS):
                loaded = [
                    text(x) for x in await self._load(keys=[key, req], args=[self._now_arg()])
                ]
                state, version, now = loaded[1], loaded[2], float(loaded[5])
                signal = self._signal(d, event, loaded[6:12])
                if signal is None:
                    log.debug("estimate_event_duplicate", request_id=event.request_id)
                    return
                stepped = step(_state(state), signal, now, self.window_s, self._params)
                args = self._commit_args(version, stepped, event, now)
                stored = await self._commit(keys=[key, req], args=args)
                if stored != -1:
                    return
                await asyncio.sleep(jitter_s())  # another writer went first
        log.warning("estimate_event_dropped", deployment=d.name, reason="conflicts")

    async def record_many(self, events: Sequence[TokenEvent]) -> None:
        """Fold `events` in, in order, as `record` would one after another.

        Several events of one deployment go in one optimistic transaction (`batch`), so a
        process's events never conflict with each other and a batch costs four round trips
        whatever its size. Single events take `record`'s path; on Redis Cluster, whose
        pipelines run no transactions over scripts, each event does, those of distinct
        requests at once (`batch.each`: in the order their writes land, as concurrent
        `record`s would). Raises UtilisationUnavailable when Redis
        cannot be reached (events of the failing batch may be applied or not; a retry
        applies each at most once).
        """
        by_deployment: dict[str, list[TokenEvent]] = {}
        for event in events:
            by_deployment.setdefault(event.deployment, []).append(event)
        for name, group in by_deployment.items():
            d = self._deployments.get(name)
            if d is None:
                log.debug("estimate_event_ignored", deployment=name, reason="unknown")
            elif len(group) == 1:
                await self.record(group[0])
            elif isinstance(self._redis, RedisCluster):
                await batch.each(self, group)
            else:
                with redis_boundary(f"estimate {name}: record", UtilisationUnavailable):
                    await batch.apply(self, d, group)

    def _signal(
        self, d: DeploymentConfig, event: TokenEvent, record: Sequence[str]
    ) -> Signal | None:
        """What `event` tells the filter, given its request's charge record (`RECORD`
        fields as text, '' when missing); None when the event was applied already."""
        admitted, completed, observed = record[0], record[1], record[2]
        seen = {"admit": admitted, "complete": completed, "observe": observed}
        if seen[event.phase] or (event.phase == "admit" and completed):
            return None
        charged = (float(record[3]), float(record[4])) if admitted else None
        signal = signal_of(
            event,
            d,
            full=self._full(d),
            charged=charged,
            calibrated=self.calibration is not None,
            controlled=self._controlled,
        )
        if admitted and record[5]:
            signal = replace(signal, charged_at=float(record[5]))
        return signal

    def _commit_args(
        self, version: str, stepped: FilterState, event: TokenEvent, now: float
    ) -> list[str | int]:
        """commit.lua's ARGV for `event` stepped into `stepped` at `now` over `version`."""
        input_tokens = max(0, event.prompt_tokens - event.cached_tokens)
        args: list[str | int] = [version, _dump(stepped), event.phase]
        return [*args, input_tokens, event.max_tokens, self._dedupe_ttl_ms, repr(now)]

    async def heartbeat(self, applied: str | None = None) -> None:
        """Declare the feeder alive for every tracked deployment (call every max_age_s / 3).

        The stream consumer passes `applied`, the id of the newest `TOKEN_EVENTS`
        entry it has folded in; older entries still unapplied make readings stale.
        Raises UtilisationUnavailable when Redis cannot be reached.
        """
        with redis_boundary("estimate heartbeat", UtilisationUnavailable):
            for name in self._deployments:
                # one call per deployment: each estimate is in its own Cluster slot
                await self._heartbeat(
                    keys=[keys.estimate(name)], args=[self._now_arg(), applied or ""]
                )

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

    @property
    def drift(self) -> MonitorDrift | None:
        """The Azure Monitor poller feeding this store, if attached."""
        return self._drift

    def attach_monitor(self, drift: MonitorDrift) -> None:
        """Let Azure Monitor minutes teach the unseen inflow (polled in the background)."""
        if self.calibration is None:
            raise ValueError("the Azure Monitor minute needs calibration on")
        self._drift = drift

    async def fold_monitor(
        self, deployment: str, minute_start: float, value: float
    ) -> float | None:
        """Fold one Azure Monitor minute (its Maximum, a fraction) into `deployment`'s estimate.

        Returns the unseen inflow learnt after it (a share of capacity), or None when that
        minute or a newer one was folded already. Raises UtilisationUnavailable when Redis
        cannot be reached.
        """
        d = self._deployments.get(deployment)
        if d is None:
            raise UtilisationUnavailable(f"estimate: deployment {deployment!r} is not tracked")
        minute = int(minute_start // MINUTE_S)
        key, req = keys.estimate(d.name), keys.estimate_request(d.name, "monitor")
        signal = Signal(monitor=value, monitor_minute=minute)
        with redis_boundary(f"estimate {deployment}: monitor fold", UtilisationUnavailable):
            for _ in range(MAX_CONFLICTS):
                loaded = [
                    text(x) for x in await self._load(keys=[key, req], args=[self._now_arg()])
                ]
                state = _state(loaded[1])
                if state is not None and state.monitor_minute >= minute:
                    return None
                stepped = step(state, signal, float(loaded[5]), self.window_s, self._params)
                args: list[str | int] = [loaded[2], _dump(stepped), "monitor", 0, 0]
                args += [self._dedupe_ttl_ms, loaded[5]]
                if await self._commit(keys=[key, req], args=args) != -1:
                    return stepped.s
        return None

    async def read(self, deployment: str) -> Reading:
        """The estimate now, as old as its feeders' knowledge.

        The age is the larger of: time since the last heartbeat, and how long the
        oldest token-event stream entry not yet folded in has been waiting.

        Raises UtilisationUnavailable for an unknown deployment, an estimate no feeder
        ever wrote, or an unreachable Redis.
        """
        d = self._deployments.get(deployment)
        if d is None:
            raise UtilisationUnavailable(f"estimate: deployment {deployment!r} is not tracked")
        if self._drift is not None:
            self._drift.kick(self.fold_monitor)
        local_now = self._clock()
        with redis_boundary(f"estimate {deployment}: read", UtilisationUnavailable):
            loaded = [
                text(x)
                for x in await self._load(keys=[keys.estimate(deployment)], args=[self._now_arg()])
            ]
            if loaded[0] == "0":
                raise UtilisationUnavailable(f"estimate {deployment}: no feeder has written it yet")
            server_now = float(loaded[5])
            lag_age = await self._lag_age(loaded[4], server_now)
        if not loaded[3]:
            raise UtilisationUnavailable(f"estimate {deployment}: no feeder heartbeat yet")
        age = max(server_now - float(loaded[3]), lag_age, 0.0)
        state = _state(loaded[1]) or FilterState(t=server_now, born=server_now)
        estimate = read(state, server_now, self.window_s, self._params)
        if self.calibration is None:
            return Reading(estimate.model, local_now - age, SOURCE)
        detail = calibration_of(estimate, state, server_now)
        return Reading(estimate.value, local_now - age, SOURCE, detail)

    async def _lag_age(self, applied: str, now: float) -> float:
        """How long the oldest token event after `applied` has waited (0 when none).

        Read after the estimate, not with it (another slot): an event folded in
        meanwhile can only make the reading look older, never fresher.
        """
        start = f"({applied}" if applied else "-"
        first = await self._redis.xrange(keys.TOKEN_EVENTS, start, "+", count=1)
        if not first:
            return 0.0
        entry_ms = int(text(first[0][0]).split("-", 1)[0])
        return max(0.0, now - entry_ms / 1000.0)

    async def close(self) -> None:
        """Stop the Azure Monitor poller, if any; the Redis client belongs to the caller."""
        if self._drift is not None:
            await self._drift.close()

    def __repr__(self) -> str:
        names = ",".join(self._deployments)
        return f"<EstimateStore deployments={names} window_s={self.window_s:g}>"


def _state(raw: str) -> FilterState | None:
    return FilterState.loads(raw) if raw else None


def _dump(state: FilterState) -> str:
    return state.dumps()

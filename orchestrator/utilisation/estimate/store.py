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
deployment departs from it (other applications call it directly, it serves less than
the capacity table says, its bucket is smaller, or its utilisation is not a bucket
level at all). The deployment tells the truth itself:
- the `azure-openai-deployment-utilization` header of every response the ingress
  (interactive calls, high-priority batch lines) and the worker see. It travels with
  the `complete` token event (a stream's header, known at its first byte, in an
  `observe` event), so the hot path makes no extra round trip;
- every 429, of any priority: the deployment is at or above 100 % now and until
  `retry-after-ms`. The reading is at least 1.0 until then (`floor`) and every candidate
  below becomes at least 100 %: without headers, this is how the estimate learns load it
  cannot see;
- the Azure Monitor minute (`drift.py`, when the endpoint and resource are configured):
  while no fresh header is seen, a reading is at least the bucket plus how much fuller
  the deployment was than the model's own peak of that minute, fading over minutes.

The filter is a bank of candidate models (multiple-model estimation), since what the
deployment means by utilisation is not documented: our bucket, a bucket half the assumed
window (twice our level), the sliding window (the same charges summed over the trailing
window, in 20 slots of the hash), and a corrected bucket (a level of its own, set toward
the reports and fed by a learnt unseen inflow: other applications, a capacity below the
table). Each is tried twice, with the header on time and `header_lag_s` late (a deployment
reporting a delayed value). Every candidate but the corrected bucket keeps its own
additive correction `c` and trend `v` (an alpha-beta filter): the error moves it with a
time-based gain `1 - exp(-dt / tau)`, so its speed does not depend on the call rate; fast
(`tau_up`) when the deployment is fuller than the candidate by more than the header's
noise (`noise_band`), since a miss costs interactive 429s, slow (`tau_down`) otherwise, so
the noise averages out without a bias. Every candidate is scored by the mean square of
its errors before it learnt from them (its one-step prediction error, over `score_s`);
after `min_scored` observations, the reading is the highest of the candidates scoring
within `plausible_ratio` of the best, so a close call leans toward less low-priority
work. `Reading.calibration` names the meaning chosen.

The throttle steers by `Reading.steer`, not only the value: under the sliding meaning a
charge stays a whole window, so it looks ahead to the highest level the window reaches
if no low-priority call starts while the traffic we do not control (everything but the
worker's own calls, which its store marks) goes on at `growth` x its recent rate and the
oldest charges age out. The value itself stays the estimate of the level now.

Safety: without fresh signals a negative correction (the model over-estimates) fades
within seconds and a positive one (unseen load, a 429) fades over `positive_decay_s`,
so when the signals vanish or disagree the estimate leans toward less low-priority
work. The filter runs in the scripts, on the server clock, on the deployment's own
hash: every worker, ingress replica and `ptu estimator` shares one correction and
observations from several processes combine as if from one. A reading's age is still
the model's (the feeders' heartbeats and the stream lag); the correction's own age
(the newest signal behind it) is shown beside it, with the model, the last observed
value and the unseen share, in `Reading.calibration`. `PTU_CALIBRATION=off` ignores
every signal: today's open-loop model exactly.
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
from orchestrator.core.redis_replies import text
from orchestrator.core.schemas import TokenEvent
from orchestrator.core.settings import DeploymentConfig
from orchestrator.utilisation.base import Calibration, Reading
from orchestrator.utilisation.estimate.calibration import DEFAULT_PARAMS, CalibrationParams
from orchestrator.utilisation.estimate.drift import MonitorDrift

log = structlog.get_logger(__name__)

SOURCE = "estimate"
EVENT_FIELD = "event"
"""The stream entry field holding a token event's JSON."""

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
        calibration: CalibrationParams | None = DEFAULT_PARAMS,
        low_priority: bool = False,
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
        self.calibration = calibration
        """The correction filter's constants; None = the open-loop model alone."""
        self._cal_args = calibration.script_args() if calibration else [""] * 8
        # the worker's own calls are marked: the traffic it does not control is the rest
        self._cal_args.append("1" if low_priority else "")
        self._cal_args += calibration.tail_args() if calibration else ["", ""]
        self._record = redis.register_script(_lua("record"))
        self._read = redis.register_script(_lua("read"))
        self._heartbeat = redis.register_script(_lua("heartbeat"))
        self._monitor = redis.register_script(_lua("monitor"))
        self._drift: MonitorDrift | None = None

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
            repr(d.capacity_tpm / 60.0 * self.window_s),
            "" if event.utilisation is None else repr(event.utilisation),
            repr(event.utilisation_age_s),
            "" if event.retry_after_ms is None else repr(event.retry_after_ms / 1000.0),
            *self._cal_args,
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

    @property
    def drift(self) -> MonitorDrift | None:
        """The Azure Monitor drift feeding this store, if attached."""
        return self._drift

    def attach_monitor(self, drift: MonitorDrift) -> None:
        """Let Azure Monitor minutes correct slow drift (polled in the background by `read`)."""
        if self.calibration is None:
            raise ValueError("the Azure Monitor drift needs calibration on")
        self._drift = drift

    async def fold_monitor(
        self, deployment: str, minute_start: float, value: float
    ) -> float | None:
        """Fold one Azure Monitor minute (its Maximum, a fraction) into `deployment`'s estimate.

        Returns the drift stored (how much fuller the deployment was than the model's peak of
        that minute, never negative), or None when that minute or a newer one was folded
        already. Raises UtilisationUnavailable when Redis cannot be reached.
        """
        if deployment not in self._deployments:
            raise UtilisationUnavailable(f"estimate: deployment {deployment!r} is not tracked")
        try:
            reply = await self._monitor(
                keys=[keys.estimate(deployment)], args=[repr(minute_start), repr(value)]
            )
        except RedisError as exc:
            raise UtilisationUnavailable(
                f"estimate {deployment}: monitor fold failed: {exc}"
            ) from exc
        stored = text(reply)
        return float(stored) if stored else None

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
        if self._drift is not None:
            self._drift.kick(self.fold_monitor)
        rate = d.capacity_tpm / 60.0
        local_now = self._clock()
        now_arg = repr(local_now) if self._time_source == "clock" else ""
        full = rate * self.window_s
        cal = self.calibration.read_args(full) if self.calibration else [""] * 10
        try:
            reply = await self._read(
                keys=[keys.estimate(deployment)], args=[repr(rate), now_arg, *cal]
            )
            if reply is None:
                raise UtilisationUnavailable(f"estimate {deployment}: no feeder has written it yet")
            fields = [text(x) for x in reply]
            level, heartbeat_age, server_now = (float(x) for x in fields[:3])
            lag_age = await self._lag_age(fields[8], server_now)
        except RedisError as exc:
            raise UtilisationUnavailable(f"estimate {deployment}: read failed: {exc}") from exc
        if heartbeat_age < 0:
            raise UtilisationUnavailable(f"estimate {deployment}: no feeder heartbeat yet")
        age = max(heartbeat_age, lag_age)
        model = level / full
        if self.calibration is None:
            return Reading(model, local_now - age, SOURCE)
        detail = Calibration(
            model=float(fields[9]) if fields[9] else model,
            correction=float(fields[3]),
            correction_age_s=_optional(fields[4]),
            observed=_optional(fields[5]),
            observed_age_s=_optional(fields[6]),
            throttled_s=float(fields[7]),
            model_kind=fields[10] or "bucket",
            ahead=_optional(fields[11]),
        )
        return Reading(calibrated(detail), local_now - age, SOURCE, detail)

    async def _lag_age(self, applied: str, now: float) -> float:
        """How long the oldest token event after `applied` has waited (0 when none).

        Read after the bucket, not with it (another slot): an event folded in
        meanwhile can only make the reading look older, never fresher.
        """
        start = f"({applied}" if applied else "-"
        first = await self._redis.xrange(keys.TOKEN_EVENTS, start, "+", count=1)
        if not first:
            return 0.0
        entry_ms = int(text(first[0][0]).split("-", 1)[0])
        return max(0.0, now - entry_ms / 1000.0)

    async def close(self) -> None:
        """Stop the Azure Monitor drift, if any; the Redis client belongs to the caller."""
        if self._drift is not None:
            await self._drift.close()

    def __repr__(self) -> str:
        names = ",".join(self._deployments)
        return f"<EstimateStore deployments={names} window_s={self.window_s:g}>"


def calibrated(detail: Calibration) -> float:
    """The calibrated utilisation: model + correction, and at least 100 % while throttled."""
    value = max(0.0, detail.model + detail.correction)
    return max(value, 1.0) if detail.throttled_s > 0 else value


def _optional(text: str) -> float | None:
    return float(text) if text else None

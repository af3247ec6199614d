"""The global low-priority throttle of one deployment (DESIGN.md §3).

The limit comes from the throttle curve applied to a fresh utilisation reading
(re-read at most every `poll_s`); a stale or missing reading gives 0 (fail
closed). The count it limits is global: every worker's in-flight calls are
leases in one Redis sorted set, and one script checks "count < limit" and adds
the lease atomically, so N workers together never exceed the limit. A dead
worker's leases expire after `lease_s`; a live worker keeps its own alive with
`renew()` (a task of the worker calls it every quarter of the lease); a started call's
slot stays counted up to the call's timeout while its worker lives, renewed or not
(`start`, see `throttle.slots`). When the limit
drops below the count, in-flight calls finish and nothing new starts until the
count is below the limit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import redis.asyncio as aioredis
import structlog
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from orchestrator.core.batching import Batcher
from orchestrator.core.errors import StoreUnavailable, UtilisationUnavailable
from orchestrator.core.runtime import Pacing, pause
from orchestrator.core.settings import DeploymentConfig
from orchestrator.core.views import ThrottleView
from orchestrator.throttle.policy import Curve, concurrency_limit, limit_for
from orchestrator.throttle.slots import Slot, SlotTable
from orchestrator.utilisation.base import Reading, UtilisationSource

log = structlog.get_logger(__name__)
CLOSED_WARN_S = 30.0
"""How often a worker repeats why its limit is 0 while the reading stays unusable."""

__all__ = ["Slot", "Throttle"]


class Throttle:
    """Adaptive, Redis-shared concurrency limiter for one deployment's low-priority calls."""

    def __init__(
        self,
        redis: aioredis.Redis,
        deployment: DeploymentConfig,
        source: UtilisationSource,
        view: ThrottleView,
        *,
        worker_id: str,
        pacing: Pacing | None = None,
        poll_s: float = 0.1,
    ) -> None:
        """`view`: the curve (with `deployment`'s overrides) and the slot lease."""
        self._curve = Curve(*view.curve(deployment))
        concurrency_limit(0.0, *self._curve)  # validates the arguments
        if view.slot_lease_s <= 0 or poll_s <= 0:
            raise ValueError("slot_lease_s and poll_s must be positive")
        self.deployment = deployment.name
        self._source = source
        self.lease_s = view.slot_lease_s
        self._worker_id = worker_id
        pacing = pacing or Pacing()
        self._clock = pacing.clock
        self._sleep = pacing.sleep
        self._poll_s = poll_s
        self._redis = redis
        self._table = SlotTable(redis, deployment.name)
        self._presence: PubSub | None = None
        self._held: dict[str, Slot] = {}
        self._limit = 0
        self._reading: Reading | None = None
        self._refreshed_at: float | None = None
        self._closed_warned_at: float | None = None
        self._released = asyncio.Event()
        # slots released while one release is written go together in the next (one ZREM)
        self._releases: Batcher[str, str] = Batcher(self._release_many)

    @property
    def limit(self) -> int:
        """The global concurrency limit computed from the last reading."""
        return self._limit

    @property
    def in_flight(self) -> int:
        """Slots this worker holds."""
        return len(self._held)

    @property
    def reading(self) -> Reading | None:
        """The last reading (None when the source had none)."""
        return self._reading

    async def refresh(self) -> int:
        """Recompute the limit from a fresh reading unless one is under `poll_s` old."""
        now = self._clock()
        if self._refreshed_at is not None and now - self._refreshed_at < self._poll_s:
            return self._limit
        self._refreshed_at = now
        cause = ""
        try:
            reading: Reading | None = await self._source.read(self.deployment)
        except UtilisationUnavailable as exc:
            reading, cause = None, str(exc)
        self._reading = reading
        limit, reason = limit_for(reading, self._clock(), self._source.max_age_s, self._curve)
        if reading is not None and reason == "stale":
            age = reading.age(self._clock())
            cause = f"reading is {age:.1f}s old (max {self._source.max_age_s:g}s)"
        if limit == 0 and cause:
            self._warn_closed(reason, cause, now)
        if limit != self._limit:
            log.info(
                "throttle_limit_changed",
                deployment=self.deployment,
                limit=limit,
                previous=self._limit,
                reason=reason,
                utilisation=None if reading is None else round(reading.value, 4),
            )
        self._limit = limit
        return limit

    async def current(self) -> Reading | None:
        """The reading behind the limit, re-read unless under `poll_s` old."""
        await self.refresh()
        return self._reading

    def _warn_closed(self, reason: str, cause: str, now: float) -> None:
        """Say why low priority is paused (fail closed): at once, then every CLOSED_WARN_S."""
        if self._closed_warned_at is not None and now - self._closed_warned_at < CLOSED_WARN_S:
            return
        self._closed_warned_at = now
        log.warning(
            "throttle_closed",
            deployment=self.deployment,
            reason=reason,
            cause=cause,
            hint="no low-priority call starts until utilisation is readable and fresh",
        )

    async def acquire(self, stop: asyncio.Event) -> Slot | None:
        """Wait for a global slot under the current limit; None once `stop` is set first."""
        while not stop.is_set():
            limit = await self.refresh()
            wait = self._poll_s
            # the global count is at least ours: no need to ask Redis when we fill the limit
            if limit > len(self._held):
                member = f"{self._worker_id}:{uuid.uuid4().hex[:16]}"
                try:
                    attempt = await self._table.try_lease(member, limit, self.lease_s)
                except StoreUnavailable as exc:
                    log.warning("slot_lease_failed", deployment=self.deployment, error=repr(exc))
                else:
                    if attempt.leased:
                        slot = Slot(member, self.deployment, self._clock())
                        self._held[member] = slot
                        return slot
                    wait = max(wait, attempt.paused_s)
            await self._wait(stop, wait)
        return None

    async def acquire_more(self, n: int) -> list[Slot]:
        """Up to `n` more slots at once, without waiting: as many as the current limit
        leaves room for, globally (none on a Redis error: the slots held are enough)."""
        room = min(n, self._limit - len(self._held))
        if room <= 0:
            return []
        members = [f"{self._worker_id}:{uuid.uuid4().hex[:16]}" for _ in range(room)]
        try:
            leased = await self._table.try_lease_many(members, self._limit, self.lease_s)
        except StoreUnavailable as exc:
            log.warning("slot_lease_failed", deployment=self.deployment, error=repr(exc))
            return []
        now = self._clock()
        slots = [Slot(member, self.deployment, now) for member in members[:leased]]
        for slot in slots:
            self._held[slot.id] = slot
        return slots

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        """Sleep `seconds`, waking early on stop or on a local release."""
        self._released.clear()
        await pause(seconds, stop, self._released, sleep=self._sleep)

    async def release(self, slot: Slot) -> None:
        """Hand a slot back (idempotent); on a Redis error its lease simply expires."""
        if self._held.pop(slot.id, None) is None:
            return
        self._released.set()
        try:
            await self._releases.submit(self.deployment, slot.id)
        except StoreUnavailable as exc:
            log.warning("slot_release_failed", deployment=self.deployment, error=repr(exc))

    async def start(self, slot: Slot, call_s: float) -> bool:
        """The call holding `slot` starts and lasts at most `call_s`: its slot stays counted
        that long (plus a lease of margin between Redis's clock and the call's timeout) while
        this worker lives, renewed or not.

        False when the lease is gone (this worker stalled since leasing it and the slot was
        reaped): it is forgotten and the caller must take a fresh one. With Redis
        unreachable the call goes ahead on the lease it has (logged).
        """
        if slot.id not in self._held:
            return False
        try:
            started = await self._table.start(slot.id, call_s + self.lease_s)
        except StoreUnavailable as exc:
            log.warning("slot_start_failed", deployment=self.deployment, error=repr(exc))
            return True
        if not started:
            self._held.pop(slot.id, None)
            self._released.set()
            log.warning("slot_lease_expired_before_call", deployment=self.deployment)
        return started

    async def open(self) -> None:
        """At start: subscribe to this worker's owner channel (what keeps a stalled worker's
        started calls counted, `throttle.slots`) and drop the leases an earlier run under
        this worker id left (it is gone: its id is ours)."""
        try:
            # the script first: a cluster client learns its slot map on its first command,
            # and its Pub/Sub needs that map to find the channel's node
            dropped = await self._table.drop_owned(self._worker_id)
            presence = self._redis.pubsub()
            await presence.subscribe(self._table.owner_channel(self._worker_id))
            self._presence = presence
        except (StoreUnavailable, RedisError, OSError) as exc:
            log.warning("slot_owner_failed", deployment=self.deployment, error=repr(exc))
            return
        if dropped:
            log.info("slot_leases_dropped", deployment=self.deployment, count=dropped)

    async def close(self) -> None:
        """At the end: leave the owner channel (this worker's slots are all released)."""
        presence, self._presence = self._presence, None
        if presence is None:
            return
        try:
            await presence.aclose()  # type: ignore[no-untyped-call]
        except (RedisError, OSError) as exc:
            log.warning("slot_owner_close_failed", deployment=self.deployment, error=repr(exc))

    async def _release_many(self, deployment: str, members: Sequence[str]) -> None:
        await self._table.release(members)

    async def renew(self) -> None:
        """Extend the leases of this worker's slots to now + lease_s."""
        await self._keep_presence()
        members = list(self._held)
        if not members:
            return
        try:
            gone = await self._table.renew(members, self.lease_s)
        except StoreUnavailable as exc:
            log.warning("slot_renew_failed", deployment=self.deployment, error=repr(exc))
            return
        # a slot released while the renewal was in flight is no lost lease: its release
        # simply reached Redis first; a lost one is forgotten (its call, if it started, ran
        # past its own timeout; if not, `start` takes a fresh slot)
        lost = [m for m in gone if self._held.pop(m, None) is not None]
        if lost:
            self._released.set()
            log.warning("slot_leases_lost", deployment=self.deployment, count=len(lost))

    async def _keep_presence(self) -> None:
        """Read the owner channel's connection: a connection Redis closed (a restart) is
        found here and reopened, subscription included, within a renewal."""
        if self._presence is None:
            return
        try:
            while await self._presence.get_message(timeout=0.0) is not None:
                pass  # the subscription's confirmation; nobody publishes on the channel
        except (RedisError, OSError) as exc:
            log.warning("slot_owner_lost", deployment=self.deployment, error=repr(exc))

    async def pause_for(self, seconds: float) -> None:
        """Pause new slots for this deployment on every worker (after a low-priority 429)."""
        try:
            left = await self._table.pause(seconds)
        except StoreUnavailable as exc:
            log.warning("throttle_pause_failed", deployment=self.deployment, error=repr(exc))
            return
        log.info("throttle_paused", deployment=self.deployment, seconds=round(left, 3))

    async def global_in_flight(self) -> int:
        """Live slots of all workers for this deployment; StoreUnavailable when unknown."""
        return await self._table.count()

    def __repr__(self) -> str:
        r = self._reading
        util = "-" if r is None else f"{r.value:.2f}"
        age = "-" if r is None else f"{r.age(self._clock()):.1f}s"
        return (
            f"<Throttle deployment={self.deployment} limit={self._limit} "
            f"in_flight={self.in_flight} utilisation={util} age={age}>"
        )

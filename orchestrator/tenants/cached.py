"""Tenant limit checks from a short-lived local copy of the counters, for the ingress.

The ingress checks a limited tenant's counters on every request, for both
priorities. Reading them from Redis each time would put a round trip on the
high-priority path. Instead each process keeps, per tenant, the counters it last
read (`UsageLedger.counters`: one pipelined read) and decides on that copy plus
the usage it has recorded itself since the read, so its own answers count at once,
exactly as with a read per request. Usage recorded by the other replicas and by
the workers is seen within `REFRESH_S`; the counters already lag behind by the
length of a call, since a call is counted when it ends.

A copy older than `REFRESH_S / 2` is used while one refresh runs in the
background, so a tenant sending steadily never waits for Redis; a copy older than
`REFRESH_S`, or of another minute or quota period, is re-read before deciding
(a tenant's first request after a pause waits for one round trip).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from orchestrator.core.errors import StoreUnavailable
from orchestrator.tenants.config import Tenancy, TenantConfig
from orchestrator.tenants.ledger import Counters, Usage, UsageLedger
from orchestrator.tenants.limits import MINUTE_S, Refusal, decide, period_bounds

log = structlog.get_logger(__name__)

REFRESH_S = 0.2
"""Longest a replica decides on a copy of a tenant's counters."""


@dataclass(slots=True)
class _Copy:
    counters: Counters
    read_at: float
    """Monotonic time the read was sent."""
    own_at_read: int
    """This process's recorded tokens of the tenant when the read was sent."""


class CachedLedger(UsageLedger):
    """A `UsageLedger` whose limit checks read the counters at most every `refresh_s`."""

    def __init__(
        self,
        redis: aioredis.Redis,
        tenancy: Tenancy,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        refresh_s: float = REFRESH_S,
    ) -> None:
        super().__init__(redis, tenancy, clock=clock)
        self._monotonic = monotonic
        self._refresh_s = refresh_s
        self._copies: dict[str, _Copy] = {}
        self._own: dict[str, int] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}

    async def record(self, use: Usage) -> None:
        """Record in Redis, and count the tokens in this process's copy at once."""
        await super().record(use)
        self._own[use.tenant] = self._own.get(use.tenant, 0) + use.total

    async def refusal(self, tenant: str, need: int) -> Refusal | None:
        """As `UsageLedger.refusal`, decided on the local copy of the counters."""
        config = self._tenancy.config(tenant)
        if not config.limited:
            return None
        now = self._clock()
        copy = self._copies.get(tenant)
        age = None if copy is None else self._monotonic() - copy.read_at
        if copy is None or age is None or age > self._refresh_s or not _current(copy, config, now):
            copy = await self._read(tenant, now)  # no copy, or too old to decide on
        elif age > self._refresh_s / 2 and tenant not in self._refreshing:
            task = asyncio.create_task(self._refresh(tenant), name=f"limits-refresh-{tenant}")
            self._refreshing[tenant] = task
        counters = copy.counters
        own = self._own.get(tenant, 0) - copy.own_at_read
        return decide(
            config,
            previous_minute=counters.previous_minute,
            current_minute=counters.current_minute + own,
            period_used=counters.period_used + own,
            need=need,
            now=now,
        )

    async def close(self) -> None:
        """Wait for background refreshes (at shutdown)."""
        tasks = list(self._refreshing.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, tenant: str, now: float) -> _Copy:
        read_at, own = self._monotonic(), self._own.get(tenant, 0)
        counters = await self.counters(tenant, now)
        copy = _Copy(counters, read_at, own)
        latest = self._copies.get(tenant)
        if latest is None or latest.read_at <= read_at:
            self._copies[tenant] = copy
        return copy

    async def _refresh(self, tenant: str) -> None:
        try:
            await self._read(tenant, self._clock())
        except StoreUnavailable as exc:
            # the next request past REFRESH_S reads for itself (and meets the error)
            log.warning("limits_refresh_failed", tenant=tenant, error=repr(exc))
        finally:
            self._refreshing.pop(tenant, None)

    def __repr__(self) -> str:
        return f"<CachedLedger tenants={sorted(self._copies)} refresh_s={self._refresh_s}>"


def _current(copy: _Copy, config: TenantConfig, now: float) -> bool:
    """Is the copy of the minute (and quota period) that contains `now`?"""
    counters = copy.counters
    if counters.minute != int(now // MINUTE_S):
        return False
    if config.token_quota is None:
        return True
    start, _ = period_bounds(config.token_quota_period, now)
    return counters.period == start

"""The ingress's limit checks on a copy of the counters, on a real Redis with injected clocks."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from orchestrator.tenants.cached import CachedLedger
from orchestrator.tenants.config import Tenancy, TenantConfig
from orchestrator.tenants.ledger import Usage, UsageLedger

TENANTS = [
    TenantConfig(name="rate", tokens_per_minute=1000),
    TenantConfig(name="quota", token_quota=500, token_quota_period="daily"),
    TenantConfig(name="free"),
]
START = time.time() // 60 * 60 + 10.0
"""10 s into the current minute (near the server's clock: the counters' expiry is absolute)."""


class Clocks:
    """Wall time (minutes, periods) and monotonic time (copy ages), moved together."""

    def __init__(self) -> None:
        self.wall = START
        self.mono = 100.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class CountingRedis:
    """Counts pipelines sent (each is one round trip) on the way to the real client."""

    def __init__(self, inner: aioredis.Redis) -> None:
        self.inner = inner
        self.pipelines = 0

    def pipeline(self, *args: object, **kwargs: object) -> object:
        self.pipelines += 1
        return self.inner.pipeline(*args, **kwargs)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _ledgers(
    redis: aioredis.Redis, clocks: Clocks
) -> tuple[CachedLedger, CachedLedger, CountingRedis]:
    tenancy = Tenancy(TENANTS, {})
    counting = CountingRedis(redis)
    one = CachedLedger(
        counting,  # type: ignore[arg-type]
        tenancy,
        clock=lambda: clocks.wall,
        monotonic=lambda: clocks.mono,
    )
    other = CachedLedger(redis, tenancy, clock=lambda: clocks.wall, monotonic=lambda: clocks.mono)
    return one, other, counting


def _use(tenant: str, tokens: int) -> Usage:
    return Usage(tenant, "ptu", "high", tokens, 0, 0)


async def test_checks_in_between_reads_cost_no_round_trip(redis: aioredis.Redis) -> None:
    clocks = Clocks()
    one, _, counting = _ledgers(redis, clocks)
    assert await one.refusal("rate", 10) is None
    assert counting.pipelines == 1
    for _ in range(50):
        clocks.advance(0.001)
        assert await one.refusal("rate", 10) is None
    assert counting.pipelines == 1  # 50 checks within 0.05 s: decided on the copy
    assert await one.refusal("free", 10) is None  # unlimited: never read
    assert counting.pipelines == 1


async def test_own_usage_counts_at_once(redis: aioredis.Redis) -> None:
    clocks = Clocks()
    one, _, counting = _ledgers(redis, clocks)
    assert await one.refusal("rate", 100) is None
    before = counting.pipelines
    await one.record(_use("rate", 950))
    clocks.advance(0.01)
    refusal = await one.refusal("rate", 100)
    assert refusal is not None and refusal.status == 429
    # the record's MULTI is the only round trip: the check itself read nothing
    assert counting.pipelines == before + 1


async def test_another_replicas_usage_is_seen_within_the_refresh(redis: aioredis.Redis) -> None:
    clocks = Clocks()
    one, other, _ = _ledgers(redis, clocks)
    assert await one.refusal("quota", 100) is None
    await other.record(_use("quota", 480))
    clocks.advance(0.05)
    assert await one.refusal("quota", 100) is None  # its copy is 0.05 s old: not seen yet
    clocks.advance(0.2)
    refusal = await one.refusal("quota", 100)  # older than REFRESH_S: re-read first
    assert refusal is not None and (refusal.status, refusal.code) == (403, "token_quota_exceeded")


async def test_a_steady_sender_refreshes_in_the_background(redis: aioredis.Redis) -> None:
    clocks = Clocks()
    one, other, counting = _ledgers(redis, clocks)
    assert await one.refusal("rate", 10) is None
    await other.record(_use("rate", 995))
    clocks.advance(0.15)  # past half the refresh: decided on the copy, a refresh starts
    assert await one.refusal("rate", 10) is None
    assert one._refreshing  # the refresh task
    await one.close()
    assert counting.pipelines == 2
    clocks.advance(0.01)
    refusal = await one.refusal("rate", 10)  # on the refreshed copy, no read of its own
    assert refusal is not None and refusal.status == 429
    assert counting.pipelines == 2


async def test_a_new_minute_is_read_before_deciding(redis: aioredis.Redis) -> None:
    clocks = Clocks()
    one, _, _ = _ledgers(redis, clocks)
    await one.record(_use("rate", 990))
    clocks.advance(0.01)
    assert await one.refusal("rate", 50) is not None
    clocks.wall += 50.0  # the next minute, although the monotonic copy age is tiny
    # the previous minute (990) still weighs (1 - 0.0) at its start: still refused, but the
    # decision is on a fresh read of the new minute's counters, as a plain ledger gives
    plain = UsageLedger(redis, Tenancy(TENANTS, {}), clock=lambda: clocks.wall)
    assert await one.refusal("rate", 50) == await plain.refusal("rate", 50)
    clocks.wall += 60.0  # two minutes on: the 990 have faded
    assert await one.refusal("rate", 50) is None

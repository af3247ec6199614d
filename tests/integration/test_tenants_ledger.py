"""The usage ledger's writes: records of a tenant written together sum exactly, and every
key it writes expires (also after Redis lost the keys it had set an expiry on)."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.tenants.config import Tenancy, TenantConfig
from orchestrator.tenants.ledger import HOUR_S, Usage, UsageLedger
from orchestrator.tenants.limits import MINUTE_S, period_bounds

TENANTS = [TenantConfig(name="q", token_quota=10_000_000, token_quota_period="daily")]


async def ttls(redis: aioredis.Redis, tenant: str, now: float) -> list[int]:
    start, _ = period_bounds("daily", now)
    names = [
        keys.tenant_usage(tenant, int(now // HOUR_S)),
        keys.tenant_minute(tenant, int(now // MINUTE_S)),
        keys.tenant_quota(tenant, start),
    ]
    return [await redis.ttl(name) for name in names]


async def test_concurrent_records_sum_exactly_and_every_key_expires(
    redis: aioredis.Redis,
) -> None:
    now = time.time() // 60 * 60 + 5.0
    ledger = UsageLedger(redis, Tenancy(TENANTS, {}), clock=lambda: now)
    uses = [
        Usage("q", f"d{i % 2}", "high" if i % 3 else "low", 10 + i, i % 4, 5) for i in range(50)
    ]
    await asyncio.gather(*(ledger.record(u) for u in uses))
    rows = {(r.deployment, r.priority): r for r in await ledger.rows(now - 3600, now + 1)}
    for (deployment, priority), row in rows.items():
        mine = [u for u in uses if (u.deployment, u.priority) == (deployment, priority)]
        assert row.requests == len(mine)
        assert row.prompt_tokens == sum(u.prompt_tokens for u in mine)
        assert row.cached_tokens == sum(u.cached_tokens for u in mine)
        assert row.completion_tokens == sum(u.completion_tokens for u in mine)
    assert sum(r.requests for r in rows.values()) == 50
    counters = await ledger.counters("q", now)
    assert counters.current_minute == counters.period_used == sum(u.total for u in uses)
    assert all(ttl > 0 for ttl in await ttls(redis, "q", now))


async def test_keys_lost_with_their_expiry_get_it_again(redis: aioredis.Redis) -> None:
    now = time.time() // 60 * 60 + 5.0
    ledger = UsageLedger(redis, Tenancy(TENANTS, {}), clock=lambda: now)
    await ledger.record(Usage("q", "d", "low", 10, 0, 5))
    await redis.flushdb()  # Redis lost the keys (and their expiry) this process had set
    await ledger.record(Usage("q", "d", "low", 10, 0, 5))
    assert all(ttl > 0 for ttl in await ttls(redis, "q", now))
    await ledger.record(Usage("q", "d", "low", 10, 0, 5))
    assert all(ttl > 0 for ttl in await ttls(redis, "q", now))
    assert (await ledger.counters("q", now)).current_minute == 30

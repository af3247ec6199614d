"""Fair-share charges written together while one write is in flight sum exactly per tenant."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from orchestrator.queues.fair import FairShareState
from orchestrator.tenants import fair


async def test_concurrent_charges_sum_per_tenant(redis: aioredis.Redis) -> None:
    state = FairShareState(redis, "d")
    charges = [(f"t{i % 3}", 100.0 + i, float(1 + i % 2), 30.0 * (i % 4 - 1)) for i in range(60)]
    await asyncio.gather(
        *(state.charge(tenant, tokens, w, pending=p) for tenant, tokens, w, p in charges)
    )
    _, _, virtual, _, pending = await state.read()
    for tenant in ("t0", "t1", "t2"):
        mine = [c for c in charges if c[0] == tenant]
        assert virtual[tenant] == pytest.approx(sum(fair.charge(t, w) for _, t, w, _ in mine))
        assert pending[tenant] == pytest.approx(sum(fair.charge(p, w) for _, _, w, p in mine))

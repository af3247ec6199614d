"""The estimate store on a real server, with the server's clock driving the bucket."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from orchestrator.core.settings import DeploymentConfig
from orchestrator.utilisation.estimate.store import EstimateStore
from tests.support.token_events import event

# 10 PTU x 600 TPM = 100 tokens/s; window 10 s -> 100 % = 1,000 tokens; output weight 2
DEPLOYMENT = DeploymentConfig(
    name="d", model="custom", ptus=10, input_tpm_per_ptu=600, output_weight=2
)


async def test_server_clock_drains_the_bucket(redis: aioredis.Redis) -> None:
    store = EstimateStore(redis, [DEPLOYMENT], window_s=10.0, max_age_s=5.0)
    await store.heartbeat()
    await store.record(event("a", "admit", 500, max_tokens=250))  # 1,000 tokens = 100 %
    first = await store.read("d")
    assert 0.9 < first.value <= 1.0
    await asyncio.sleep(0.5)
    second = await store.read("d")
    # 0.5 s at 100 tokens/s drains 5 %
    assert first.value - second.value == pytest.approx(0.05, abs=0.02)


async def test_reader_clock_skew_does_not_change_the_age(redis: aioredis.Redis) -> None:
    def skewed() -> float:
        return time.time() + 900.0  # this host's clock is 15 minutes ahead

    feeder = EstimateStore(redis, [DEPLOYMENT], window_s=10.0, max_age_s=5.0)
    reader = EstimateStore(redis, [DEPLOYMENT], window_s=10.0, max_age_s=5.0, clock=skewed)
    await feeder.heartbeat()
    await asyncio.sleep(0.3)
    reading = await reader.read("d")
    assert reading.age(skewed()) == pytest.approx(0.3, abs=0.2)


async def test_concurrent_redeliveries_count_once(redis: aioredis.Redis) -> None:
    # a frozen clock: under load the real drain between record and read would blur the count
    store = EstimateStore(
        redis, [DEPLOYMENT], window_s=10.0, max_age_s=5.0, clock=lambda: 1000.0, time_source="clock"
    )
    await store.heartbeat()
    admit = event("a", "admit", 100, max_tokens=200)
    done = event("a", "complete", 0, completion_tokens=50)
    await asyncio.gather(*(store.record(admit) for _ in range(20)))
    await asyncio.gather(*(store.record(done) for _ in range(20)))
    assert (await store.read("d")).value == pytest.approx(0.2, abs=0.01)

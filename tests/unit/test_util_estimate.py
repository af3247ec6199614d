from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import pytest

from orchestrator.core import keys
from orchestrator.core.errors import UtilisationUnavailable
from orchestrator.core.schemas import TokenEvent
from orchestrator.core.settings import DeploymentConfig
from orchestrator.utilisation.estimate.store import EstimateStore
from tests.support.clock import FakeClock

# 10 PTU x 600 TPM = 100 tokens/s; window 10 s -> 100 % = 1,000 tokens; output weight 2
DEPLOYMENT = DeploymentConfig(
    name="d", model="custom", ptus=10, input_tpm_per_ptu=600, output_weight=2
)


START = 5_000.0


def store(redis: Any, clock: FakeClock) -> EstimateStore:
    return EstimateStore(
        redis, [DEPLOYMENT], window_s=10.0, max_age_s=5.0, clock=clock, time_source="clock"
    )


def ev(rid: str, phase: str, prompt: int = 0, **kw: int) -> TokenEvent:
    return TokenEvent(
        request_id=rid,
        deployment="d",
        phase=phase,  # type: ignore[arg-type]
        timestamp=0.0,
        prompt_tokens=prompt,
        **kw,
    )


# (seconds to advance before the event, event) ... -> expected utilisation at the end
CASES: dict[str, tuple[list[tuple[float, TokenEvent]], float]] = {
    "admit charges prompt + max_tokens x weight": (
        [(0, ev("a", "admit", 100, max_tokens=200))],
        0.5,
    ),
    "complete reconciles down to the actual tokens": (
        [
            (0, ev("a", "admit", 100, max_tokens=200)),
            (0, ev("a", "complete", completion_tokens=50)),
        ],
        0.2,
    ),
    "complete reconciles up when it overruns": (
        [(0, ev("a", "admit", 100, max_tokens=10)), (0, ev("a", "complete", completion_tokens=60))],
        0.22,
    ),
    "complete without admit charges actual tokens once": (
        [(0, ev("a", "complete", 100, completion_tokens=50))],
        0.2,
    ),
    "cached prompt tokens are not charged": (
        [(0, ev("a", "admit", 300, cached_tokens=200))],
        0.1,
    ),
    "actual prompt at complete replaces the admit estimate": (
        [
            (0, ev("a", "admit", 100, max_tokens=100)),
            (0, ev("a", "complete", 150, completion_tokens=100)),
        ],
        0.35,
    ),
    "redelivered events are counted once": (
        [
            (0, ev("a", "admit", 100, max_tokens=200)),
            (0, ev("a", "admit", 100, max_tokens=200)),
            (0, ev("a", "complete", completion_tokens=50)),
            (0, ev("a", "complete", completion_tokens=50)),
        ],
        0.2,
    ),
    "an admit after its complete changes nothing": (
        [(0, ev("a", "complete", 100, completion_tokens=50)), (0, ev("a", "admit", 100))],
        0.2,
    ),
    "the bucket drains at capacity per second": (
        [(0, ev("a", "admit", 500)), (3, ev("b", "admit", 0))],
        0.2,
    ),
    "drain stops at empty": (
        [(0, ev("a", "admit", 500)), (60, ev("b", "admit", 100))],
        0.1,
    ),
    "reconciling a drained charge never goes negative": (
        [(0, ev("a", "admit", 100, max_tokens=100)), (5, ev("a", "complete"))],
        0.0,
    ),
    "utilisation can exceed 100 %": (
        [(0, ev("a", "admit", 1000, max_tokens=250))],
        1.5,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_bucket(fake_redis: fakeredis.FakeAsyncRedis, name: str) -> None:
    events, expected = CASES[name]
    clock = FakeClock(START)
    s = store(fake_redis, clock)
    await s.heartbeat()
    for advance, event in events:
        clock.now += advance
        await s.record(event)
    await s.heartbeat()
    reading = await s.read("d")
    assert reading.value == pytest.approx(expected)
    assert reading.source == "estimate"


async def test_read_drains_up_to_now(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    clock = FakeClock(START)
    s = store(fake_redis, clock)
    await s.record(ev("a", "admit", 800))
    await s.heartbeat()
    clock.now += 2.5
    reading = await s.read("d")
    assert reading.value == pytest.approx(0.55)


async def test_age_is_time_since_the_feeder_heartbeat(
    fake_redis: fakeredis.FakeAsyncRedis,
) -> None:
    clock = FakeClock(START)
    s = store(fake_redis, clock)
    await s.heartbeat()
    clock.now += 1.0
    await s.record(ev("a", "admit", 100))  # events alone do not prove the feeder alive
    clock.now += 6.0
    reading = await s.read("d")
    assert reading.age(clock.now) == pytest.approx(7.0)
    assert reading.age(clock.now) > s.max_age_s
    await s.heartbeat()
    assert (await s.read("d")).age(clock.now) == pytest.approx(0.0)


async def test_idle_bucket_with_live_feeder_is_fresh_zero(
    fake_redis: fakeredis.FakeAsyncRedis,
) -> None:
    clock = FakeClock(START)
    s = store(fake_redis, clock)
    await s.heartbeat()
    reading = await s.read("d")
    assert (reading.value, reading.age(clock.now)) == (0.0, 0.0)


@pytest.mark.parametrize("setup", ["nothing", "events_without_heartbeat", "unknown_deployment"])
async def test_unavailable(fake_redis: fakeredis.FakeAsyncRedis, setup: str) -> None:
    s = store(fake_redis, FakeClock(START))
    name = "d"
    if setup == "events_without_heartbeat":
        await s.record(ev("a", "admit", 100))
    elif setup == "unknown_deployment":
        await s.heartbeat()
        name = "other"
    with pytest.raises(UtilisationUnavailable):
        await s.read(name)


async def test_events_for_unknown_deployments_are_ignored(
    fake_redis: fakeredis.FakeAsyncRedis,
) -> None:
    s = store(fake_redis, FakeClock(START))
    event = ev("a", "admit", 100).model_copy(update={"deployment": "other"})
    await s.record(event)
    assert await fake_redis.keys("*") == []


async def test_dedupe_records_expire(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    s = store(fake_redis, FakeClock(START))
    await s.record(ev("a", "admit", 100))
    ttl = await fake_redis.pttl(keys.estimate_request("d", "a"))
    assert 0 < ttl <= 3_600_000


async def test_keep_alive_heartbeats_until_cancelled(
    fake_redis: fakeredis.FakeAsyncRedis,
) -> None:
    clock = FakeClock(START)
    s = store(fake_redis, clock)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.now += seconds
        if len(sleeps) == 3:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await s.keep_alive(sleep=sleep)
    assert sleeps == [pytest.approx(5.0 / 3)] * 3
    assert (await s.read("d")).age(clock.now) == pytest.approx(5.0 / 3)

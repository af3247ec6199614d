"""Token events folded in batches (`estimate/batch`, `utilisation/batched`) build the state
that folding them one by one builds, each event at most once, beside concurrent writers."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.core.schemas import TokenEvent
from orchestrator.core.settings import DeploymentConfig
from orchestrator.utilisation.batched import BatchedRecorder
from orchestrator.utilisation.estimate.store import EstimateStore
from tests.support.token_events import event

# 10 PTU x 600 TPM = 100 tokens/s; window 10 s -> 100 % = 1,000 tokens; output weight 2
ONE = DeploymentConfig(name="d", model="custom", ptus=10, input_tpm_per_ptu=600, output_weight=2)
TWO = ONE.model_copy(update={"name": "e"})


def frozen(redis: aioredis.Redis) -> EstimateStore:
    """A store on a frozen clock: the drain between writes and reads does not blur sums."""
    return EstimateStore(
        redis, [ONE, TWO], window_s=10.0, max_age_s=5.0, clock=lambda: 1000.0, time_source="clock"
    )


def trace(deployment: str) -> list[TokenEvent]:
    """Admits, completes (one with the utilisation header, one refused) and an observe."""
    out: list[TokenEvent] = []
    for i in range(6):
        rid = f"r{i}"
        out.append(event(rid, "admit", 40 + i, deployment, max_tokens=30))
        if i % 2:
            out.append(event(rid, "observe", 0, deployment, utilisation=0.2 + i / 100))
        out.append(event(rid, "complete", 40 + i, deployment, completion_tokens=10 + i))
    out.append(event("late", "complete", 0, deployment))
    return out


async def test_a_batch_builds_the_state_one_by_one_builds(redis: aioredis.Redis) -> None:
    store = frozen(redis)
    await store.heartbeat()
    for e in trace("d"):
        await store.record(e)
    await store.record_many(trace("e"))
    one_by_one, batched = (
        await redis.hget(keys.estimate("d"), "st"),
        await redis.hget(keys.estimate("e"), "st"),
    )
    assert batched is not None and batched == one_by_one
    assert (await store.read("e")).value == (await store.read("d")).value > 0


async def test_a_batch_applies_each_event_once(redis: aioredis.Redis) -> None:
    store = frozen(redis)
    await store.heartbeat()
    admit = event("a", "admit", 100, max_tokens=200)  # 500 tokens = 50 %
    await store.record_many([admit, admit, event("b", "admit", 100)])
    await store.record_many([admit, event("b", "admit", 100)])
    assert (await store.read("d")).value == pytest.approx(0.6, abs=0.001)


async def test_batches_beside_other_writers_count_every_event_once(
    redis: aioredis.Redis,
) -> None:
    ours, theirs = frozen(redis), frozen(redis)
    await ours.heartbeat()
    batched = BatchedRecorder(ours)
    events = [event(f"r{i}", "admit", 10) for i in range(60)]  # 1 % each
    await asyncio.gather(
        *(batched.record(e) for e in events[:40]),
        *(theirs.record(e) for e in events[40:]),
        *(theirs.record(e) for e in events[:10]),  # redeliveries of ours, to the other writer
        ours.heartbeat(),  # a write to the hash that aborts a batch in flight
    )
    assert (await ours.read("d")).value == pytest.approx(0.6, abs=0.001)


async def test_a_batch_after_the_server_lost_its_scripts(redis: aioredis.Redis) -> None:
    store = frozen(redis)
    await store.heartbeat()
    await store.record_many([event("a", "admit", 100), event("b", "admit", 100)])
    await redis.script_flush()  # a restarted server has no scripts
    await store.record_many([event("c", "admit", 100), event("d", "admit", 100)])
    assert (await store.read("d")).value == pytest.approx(0.4, abs=0.001)

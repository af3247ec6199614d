"""`ptu estimator` and its consume loop against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

import pytest
import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.core.errors import UtilisationUnavailable
from orchestrator.core.settings import DeploymentConfig
from orchestrator.estimator.redis_stream import GROUP, Estimator, StreamReading
from orchestrator.utilisation.estimate.store import EstimateStore
from tests import redis_mode
from tests.support.token_events import event, publish

# 10 PTU x 600 TPM = 100 tokens/s; window 100 s -> 100 % = 10,000 tokens; output weight 2
DEPLOYMENT = DeploymentConfig(
    name="d", model="custom", ptus=10, input_tpm_per_ptu=600, output_weight=2
)


def store(redis: aioredis.Redis) -> EstimateStore:
    return EstimateStore(redis, [DEPLOYMENT], window_s=100.0, max_age_s=2.0)


async def test_events_are_applied_acknowledged_and_once(redis: aioredis.Redis) -> None:
    s = store(redis)
    await publish(redis, event("a", "admit", 1000, max_tokens=1000))  # 3,000 = 30 %
    await publish(redis, event("a", "admit", 1000, max_tokens=1000))  # redelivered: no effect
    await publish(redis, event("a", "complete", 1000, completion_tokens=500))  # -> 2,000
    apim = {"id": "b", "timestamp": "2027-01-15T12:00:00Z", "deploymentName": "d",
            "promptTokens": 1000, "responseTokens": 500, "totalTokens": 1500}  # fmt: skip
    await redis.xadd(keys.TOKEN_EVENTS, {"event": json.dumps(apim)})  # +2,000
    await redis.xadd(keys.TOKEN_EVENTS, {"event": "not json"})
    await redis.xadd(keys.TOKEN_EVENTS, {"event": "[" * 100_000 + "]" * 100_000})  # deep JSON
    await publish(redis, event("c", "admit", 10).model_copy(update={"deployment": "other"}))
    est = Estimator(redis, s, consumer="c1")
    assert await est.step() == 7
    assert (est.applied, est.skipped) == (5, 2)
    reading = await s.read("d")
    assert reading.value == pytest.approx(0.4, abs=0.01)
    assert reading.age(time.time()) < 1.0
    pending = await redis.xpending(keys.TOKEN_EVENTS, GROUP)
    assert pending["pending"] == 0


async def test_unconsumed_events_make_the_reading_stale(redis: aioredis.Redis) -> None:
    s = store(redis)
    await s.heartbeat()  # an in-process feeder is alive ...
    await publish(redis, event("a", "admit", 100))  # ... but nobody consumes the stream
    await asyncio.sleep(0.4)
    await s.heartbeat()
    stale = await s.read("d")
    assert stale.age(time.time()) >= 0.35
    await Estimator(redis, s, consumer="c1").step()
    fresh = await s.read("d")
    assert fresh.age(time.time()) < 0.2
    assert fresh.value > 0


async def test_crashed_consumer_entries_are_applied_by_its_restart(redis: aioredis.Redis) -> None:
    s = store(redis)
    await publish(redis, event("a", "admit", 1000))
    await redis.xgroup_create(keys.TOKEN_EVENTS, GROUP, id="0")
    # read without applying nor acknowledging: the process died here
    await redis.xreadgroup(GROUP, "c1", {keys.TOKEN_EVENTS: ">"}, count=10)
    restarted = Estimator(redis, s, consumer="c1")
    assert await restarted.step() == 1
    assert (await s.read("d")).value == pytest.approx(0.1, abs=0.01)
    assert (await redis.xpending(keys.TOKEN_EVENTS, GROUP))["pending"] == 0


async def test_old_entries_are_acknowledged_unapplied(redis: aioredis.Redis) -> None:
    s = store(redis)
    old_ms = int((time.time() - 600) * 1000)
    await redis.xadd(keys.TOKEN_EVENTS, {"event": event("a", "admit", 1000).model_dump_json()},
                     id=f"{old_ms}-0")  # fmt: skip
    est = Estimator(redis, s, consumer="c1", reading=StreamReading(horizon_s=300.0))
    assert await est.step() == 1
    assert (est.applied, est.skipped) == (0, 1)
    assert (await s.read("d")).value == 0.0


async def test_idle_blocking_read_survives_a_short_socket_timeout(redis_url: str) -> None:
    client = redis_mode.connect(redis_url, socket_timeout=1.5)
    try:
        await client.flushdb()
        est = Estimator(client, store(client), consumer="c1", reading=StreamReading(block_ms=1000))
        started = time.monotonic()
        assert await est.step() == 0
        assert await est.step() == 0
        assert time.monotonic() - started >= 1.8  # it really blocked
    finally:
        await client.aclose()


async def test_run_applies_until_stopped(redis: aioredis.Redis) -> None:
    s = store(redis)
    est = Estimator(redis, s, consumer="c1", reading=StreamReading(block_ms=100))
    stop = asyncio.Event()
    task = asyncio.create_task(est.run(stop))
    await publish(redis, event("a", "admit", 500))
    for _ in range(100):
        if est.applied:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert est.applied == 1
    assert (await s.read("d")).value == pytest.approx(0.05, abs=0.01)


async def test_cli_runs_until_sigterm(redis: aioredis.Redis, redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTU_")}
    env |= {
        **redis_mode.env(redis_url),
        "PTU_DEPLOYMENTS": json.dumps([DEPLOYMENT.model_dump(exclude_none=True)]),
        "PTU_ESTIMATE_WINDOW_S": "100",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        "estimator",
        "--consumer",
        "cli",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await publish(redis, event("a", "admit", 2000))
        s = store(redis)
        value = None
        for _ in range(200):
            try:
                value = (await s.read("d")).value
            except UtilisationUnavailable:  # not started yet
                value = None
            if value:
                break
            await asyncio.sleep(0.05)
        assert value == pytest.approx(0.2, abs=0.02)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    err = (await proc.stderr.read()).decode()
    assert "estimator_started" in err and "estimator_stopped" in err

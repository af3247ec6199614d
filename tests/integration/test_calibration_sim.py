"""The calibrated estimate against the simulator's reality knobs, with several processes.

Two ingress replicas and a worker feed one Redis; the simulator's own background traffic
(which bypasses everything) makes the model under-estimate, and every process's
observations build one shared correction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from ingress.server import IngressThread
from orchestrator.core import keys
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import QueuedRequest
from orchestrator.core.settings import DeploymentConfig, Settings
from orchestrator.queues.redis_streams import RedisStreamsQueue
from orchestrator.utilisation.estimate.calibration import params_for
from orchestrator.utilisation.estimate.store import EstimateStore
from orchestrator.worker.loop import WorkerTiming
from orchestrator.worker.main import build_worker
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode

DEP = "ptu"
WINDOW_S = 4.0
CHAT = f"/openai/deployments/{DEP}/chat/completions?api-version=2024-10-21"
BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "hello " * 20}], "max_tokens": 20}
# gpt-4o-mini 1 PTU: 37,000 TPM; a 4 s window: 100 % = 2,466 tokens


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs(
        [f"{DEP}=gpt-4o-mini:1"], window_s=WINDOW_S, tbt_ms=0, ttft_ms=0, seed=5
    )
    with SimulatorThread(config) as server:
        yield server


def settings(sim: SimulatorThread, redis_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_cluster": redis_mode.CLUSTER,
        "deployments": [DeploymentConfig(name=DEP, model="gpt-4o-mini", ptus=1)],
        "azure_openai_endpoint": sim.url,
        "azure_openai_api_key": SecretStr("k"),
        "estimate_window_s": WINDOW_S,
        "max_concurrency": 2,
        "request_timeout_s": 10.0,
    }
    values.update(extra)
    return Settings(**values)


@pytest.fixture
async def admin(sim: SimulatorThread) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=sim.url, timeout=10) as client:
        await client.patch(
            f"/sim/deployments/{DEP}",
            json={"utilisation_model": "bucket", "utilisation_header": "exact",
                  "background_share": 0},
        )  # fmt: skip
        await client.post("/sim/reset")
        yield client


def reader(s: Settings, redis: aioredis.Redis, mode: str = "auto") -> EstimateStore:
    return EstimateStore(
        redis,
        s.deployments,
        window_s=WINDOW_S,
        max_age_s=5.0,
        calibration=params_for(mode),  # type: ignore[arg-type]
    )


async def truth(admin: httpx2.AsyncClient) -> float:
    state = (await admin.get("/sim/state")).json()
    return float(state["deployments"][DEP]["utilization"])


async def enqueue(redis: aioredis.Redis, n: int) -> None:
    results, queue = ResultStore(redis, 3600), RedisStreamsQueue(redis, DEP, "producer")
    now = time.time()
    for i in range(n):
        msg = QueuedRequest(
            id=f"lp-{i}", deployment=DEP, body=dict(BODY), reply_key=keys.reply(f"lp-{i}"),
            enqueued_at=now, deadline=now + 60,
        )  # fmt: skip
        await results.register(msg)
        await queue.put(msg)
    await queue.close()


async def test_replicas_and_a_worker_share_one_correction(
    sim: SimulatorThread, redis_url: str, redis: aioredis.Redis, admin: httpx2.AsyncClient
) -> None:
    # another application uses 40 % of the deployment directly: the model cannot see it
    await admin.patch(f"/sim/deployments/{DEP}", json={"utilisation_model": "sliding"})
    await admin.patch(f"/sim/deployments/{DEP}", json={"background_share": 0.4})
    s = settings(sim, redis_url)
    await enqueue(redis, 4)
    built = build_worker(
        s, redis, s.deployments, "w1",
        timing=WorkerTiming(drain_timeout_s=2.0, renew_s=1.0),
    )  # fmt: skip
    stop = asyncio.Event()
    worker = asyncio.create_task(built.worker.run(stop))
    try:
        with IngressThread(s) as a, IngressThread(s) as b:
            async with httpx2.AsyncClient(timeout=10) as client:
                await asyncio.sleep(1.5)  # the background load builds up
                for i in range(8):
                    url = (a if i % 2 else b).url + CHAT
                    stream = i % 4 == 0  # some streamed: observed at their first byte
                    r = await client.post(url, json={**BODY, "stream": stream})
                    assert r.status_code in (200, 429)  # a 429 is a signal too
                    await asyncio.sleep(0.1)
        deadline = time.monotonic() + 10
        while built.worker.lanes[0].dispatcher.counts["completed"] < 4:
            assert time.monotonic() < deadline, "the worker did not finish its 4 requests"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await worker
        await built.close()
    await reader(s, redis).heartbeat()
    calibrated, open_loop = (
        await reader(s, redis).read(DEP),
        await reader(s, redis, "off").read(DEP),
    )
    real = await truth(admin)
    assert calibrated.calibration is not None and open_loop.calibration is None
    # one state: every process's events are in the model the reader sees
    assert calibrated.calibration.model == pytest.approx(open_loop.value, abs=0.02)
    assert real - open_loop.value > 0.25  # the model alone misses the bypassing load
    print(f"truth {real:.3f} calibrated {calibrated.value:.3f} open loop {open_loop.value:.3f}")
    assert calibrated.calibration.observed is not None
    # the header (the simulator's sliding window, 40 % of it others') lifts the reading
    assert calibrated.value - open_loop.value > 0.2


async def test_a_429_without_header_teaches_the_unseen_load(
    sim: SimulatorThread, redis_url: str, redis: aioredis.Redis, admin: httpx2.AsyncClient
) -> None:
    await admin.patch(
        f"/sim/deployments/{DEP}",
        json={"utilisation_header": "absent", "utilisation_model": "sliding"},
    )
    await admin.patch(f"/sim/deployments/{DEP}", json={"background_share": 0.6})
    s = settings(sim, redis_url)
    await asyncio.sleep(WINDOW_S / 2)  # the bypassing load fills half a window
    with IngressThread(s) as ingress:
        async with httpx2.AsyncClient(base_url=ingress.url, timeout=10) as client:
            big = {**BODY, "max_tokens": 300}
            forced = {"x-sim-completion-tokens": "300"}  # ~36 % of the bucket each
            statuses = []
            for _ in range(6):
                statuses.append((await client.post(CHAT, json=big, headers=forced)).status_code)
                if statuses[-1] == 429:
                    break
            assert statuses[-1] == 429
            await asyncio.sleep(0.2)  # the token events are recorded in the background
            store = reader(s, redis)
            await store.heartbeat()
            reading = await store.read(DEP)
    cal = reading.calibration
    assert cal is not None and cal.observed is None
    assert cal.model < 1.0 and cal.correction > 0.1  # what the model could not see
    if cal.throttled_s > 0:
        assert reading.value >= 1.0

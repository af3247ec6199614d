"""A PTU pool of two members, each on its own simulated resource, through the unchanged SDK.

High priority (chat completions in both URL shapes, Responses) goes to a member and names
it; a saturated member's calls move to the other one, never a 429 to the client. Low
priority and Batch API lines naming the pool wait in the pool's one queue and both
members' lanes drain it. A member whose simulator is stopped mid-run hands its share to
the other member: every request has exactly one result, none is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai
import pytest
import redis.asyncio as aioredis

from ingress.server import IngressThread
from orchestrator.cli.status import collect
from orchestrator.cli.status_view import name_cell
from orchestrator.core import keys
from orchestrator.core.errors import UtilisationUnavailable
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import QueuedRequest
from orchestrator.core.settings import Settings, load_settings
from orchestrator.queues.factory import make_queue
from orchestrator.utilisation.static import StaticSource
from orchestrator.utilisation.store_factory import estimate_store
from orchestrator.worker.loop import WorkerTiming
from orchestrator.worker.main import Built, build_worker
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode
from tests.support.stacks import flush
from tests.support.token_events import event

POOL = "gpt-4o-mini-pool"
MESSAGES: Any = [{"role": "user", "content": "Summarise the quarterly report in one line."}]
FAST = {"breaker_min_calls": 2, "breaker_open_s": 30.0, "backoff_base_s": 0.02}


def _sim(name: str, **kwargs: Any) -> SimulatorThread:
    options: dict[str, Any] = {"tbt_ms": 0.0, "ttft_ms": 0.0, "api_key": "k", **kwargs}
    config = SimConfig.from_specs([f"{name}=gpt-4o-mini:15"], **options)
    return SimulatorThread(config)


def _settings(redis_url: str, east: SimulatorThread, west: SimulatorThread, **extra: Any):
    members = [
        {"name": "east", "model": "gpt-4o-mini", "ptus": 15, "pool": POOL, "endpoint": east.url},
        {"name": "west", "model": "gpt-4o-mini", "ptus": 10, "pool": POOL, "endpoint": west.url},
    ]
    return load_settings(
        redis_url=redis_url,
        redis_cluster=redis_mode.CLUSTER,
        azure_openai_api_key="k",
        deployments=members,
        max_concurrency=4,
        request_timeout_s=10.0,
        estimate_window_s=10.0,
        queue_claim_idle_s=2.0,
        **{**FAST, **extra},
    )


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[SimulatorThread, SimulatorThread]]:
    with _sim("east") as east, _sim("west") as west:
        yield east, west


@pytest.fixture(scope="module")
def ingress(
    redis_url: str, sims: tuple[SimulatorThread, SimulatorThread]
) -> Iterator[IngressThread]:
    flush(redis_url)
    with IngressThread(_settings(redis_url, *sims)) as server:
        yield server


def _state(sim: SimulatorThread, name: str) -> dict[str, Any]:
    state: dict[str, Any] = httpx2.get(f"{sim.url}/sim/state").json()["deployments"][name]
    return state


def _low(sim: SimulatorThread, name: str) -> int:
    by: dict[str, Any] = _state(sim, name)["by_priority"]
    return int(by.get("low", {}).get("requests", 0))


async def _worker(settings: Settings, redis: aioredis.Redis, source: Any = None) -> Built:
    timing = WorkerTiming(receive_timeout_s=0.2, heartbeat_s=0.2, drain_timeout_s=2)
    return build_worker(
        settings, redis, settings.deployments, f"w-{uuid.uuid4().hex[:6]}",
        source=source, timing=timing,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def _running(built: Built) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(built.worker.run(stop))
    try:
        yield
    finally:
        stop.set()
        await task
        await built.close()


async def test_high_priority_goes_to_the_roomiest_member_and_a_full_one_hands_over(
    sims: tuple[SimulatorThread, SimulatorThread],
    ingress: IngressThread,
    redis_url: str,
    redis: aioredis.Redis,
) -> None:
    east, west = sims
    client = openai.AsyncOpenAI(base_url=ingress.url + "/v1", api_key="k", max_retries=0)
    azure = openai.AsyncAzureOpenAI(
        azure_endpoint=ingress.url, api_key="k", api_version="2024-10-21", max_retries=0
    )
    store = estimate_store(_settings(redis_url, east, west), redis)
    for _ in range(100):  # the `redis` fixture flushed the database: the next heartbeat
        try:
            await store.read("east")
            await store.read("west")
            break
        except UtilisationUnavailable:
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)  # the router's cached readings are 0.25 s old at most
    # both empty: east (15 PTU) has more room than west (10 PTU)
    raw = await client.chat.completions.with_raw_response.create(
        model=POOL, messages=MESSAGES, max_tokens=20
    )
    assert raw.headers["x-ptu-deployment"] == "east"
    assert "x-ptu-spillover" not in raw.headers  # a member is not a spillover

    # east's estimate at ~76 %: (0.9 - 0.76) x 555k tokens/min < 0.9 x 370k: west has more room
    await store.record(event(uuid.uuid4().hex, "admit", 70_000, deployment="east"))
    await asyncio.sleep(0.3)  # the router's cached readings are 0.25 s old at most
    served = []
    for i in range(4):
        raw = await client.chat.completions.with_raw_response.create(
            model=POOL, messages=MESSAGES, max_tokens=20, stream=i % 2 == 0
        )
        assert raw.http_response.status_code == 200
        served.append(raw.headers["x-ptu-deployment"])
    az = await azure.chat.completions.with_raw_response.create(
        model=POOL, messages=MESSAGES, max_tokens=20
    )
    assert az.parse().choices[0].message.content
    resp = await client.responses.with_raw_response.create(
        model=POOL, input="hello", max_output_tokens=20
    )
    assert resp.parse().output_text
    served += [az.headers["x-ptu-deployment"], resp.headers["x-ptu-deployment"]]
    assert served == ["west"] * 6

    # west full at the service: its 429 moves the call on to east, the client sees no 429
    httpx2.patch(f"{west.url}/sim/deployments/west", json={"ptus": 0.001}).raise_for_status()
    try:
        after: list[str] = []
        for _ in range(4):
            raw = await client.chat.completions.with_raw_response.create(
                model=POOL, messages=MESSAGES, max_tokens=20
            )
            assert raw.http_response.status_code == 200
            after.append(raw.headers["x-ptu-deployment"])
        # the first call still fits (and overflows the tiny bucket); then west answers 429
        assert after[1:] == ["east"] * 3, after
        assert _state(west, "west")["throttled"] >= 1
    finally:
        httpx2.patch(f"{west.url}/sim/deployments/west", json={"ptus": 10}).raise_for_status()
        httpx2.post(f"{west.url}/sim/reset").raise_for_status()
    await client.close()
    await azure.close()


async def test_low_priority_and_a_batch_naming_the_pool_use_both_members(
    sims: tuple[SimulatorThread, SimulatorThread],
    ingress: IngressThread,
    redis_url: str,
    redis: aioredis.Redis,
) -> None:
    east, west = sims
    before = {n: _low(s, n) for n, s in (("east", east), ("west", west))}
    settings = _settings(redis_url, east, west)
    client = openai.AsyncOpenAI(base_url=ingress.url + "/v1", api_key="k", max_retries=0)
    async with _running(await _worker(settings, redis)):
        raw = await client.chat.completions.with_raw_response.create(
            model=POOL, messages=MESSAGES, max_tokens=20,
            extra_headers={"x-priority": "low", "prefer": "wait=20"},
        )  # fmt: skip
        assert raw.http_response.status_code == 200
        assert raw.headers["x-ptu-deployment"] in ("east", "west")
        assert raw.parse().choices[0].message.content
        queued = await client.responses.with_raw_response.create(
            model=POOL, input="hello", max_output_tokens=20,
            extra_headers={"x-priority": "low", "prefer": "wait=20"},
        )  # fmt: skip
        assert queued.http_response.status_code == 200
        assert queued.headers["x-ptu-deployment"] in ("east", "west")
        assert queued.parse().output_text

        lines = [
            {
                "custom_id": f"q-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": POOL, "messages": MESSAGES, "max_tokens": 20},
            }
            for i in range(40)
        ]
        data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
        uploaded = await client.files.create(file=("in.jsonl", data), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        for _ in range(600):
            batch = await client.batches.retrieve(batch.id)
            if batch.status in ("completed", "failed", "cancelled", "expired"):
                break
            await asyncio.sleep(0.05)
        assert batch.status == "completed", batch
        assert batch.request_counts is not None and batch.request_counts.completed == 40
        assert batch.output_file_id is not None
        out = (await client.files.content(batch.output_file_id)).text.splitlines()
        assert sorted(json.loads(x)["custom_id"] for x in out) == sorted(
            x["custom_id"] for x in lines
        )
    after = {n: _low(s, n) for n, s in (("east", east), ("west", west))}
    took = {n: after[n] - before[n] for n in after}
    assert sum(took.values()) >= 42 and took["east"] > 0 and took["west"] > 0, took
    assert await redis.xlen(keys.dead_letter(POOL)) == 0
    await client.close()


async def test_a_member_stopped_mid_run_hands_its_share_to_the_other(
    redis_url: str, redis: aioredis.Redis
) -> None:
    flush(redis_url)
    n = 60
    east = _sim("east", tbt_ms=20.0).start()  # 20 output tokens: ~0.4 s a call
    west = _sim("west", tbt_ms=20.0).start()
    try:
        settings = _settings(redis_url, east, west)
        queue = make_queue(settings, POOL, redis, "producer")
        results = ResultStore(redis, 3600)
        ids = []
        now = time.time()
        for _ in range(n):
            rid = uuid.uuid4().hex
            message = QueuedRequest(
                id=rid, deployment=POOL, body={"messages": MESSAGES, "max_tokens": 20},
                reply_key=keys.reply(rid), enqueued_at=now, deadline=now + 600,
            )  # fmt: skip
            await results.register(message)
            await queue.put(message)
            ids.append(rid)
        await queue.close()
        source = StaticSource({"east": 0.0, "west": 0.0})
        async with _running(await _worker(settings, redis, source)):
            deadline = time.monotonic() + 60
            stopped = False
            while time.monotonic() < deadline:
                docs = [s.result for s in [await results.get(r) for r in ids] if s and s.result]
                if not stopped and sum(d.deployment == "west" for d in docs) >= 4:
                    await asyncio.to_thread(west.stop)  # mid-run, with its share queued
                    stopped, at_stop = True, len(docs)
                if len(docs) == n:
                    break
                await asyncio.sleep(0.05)
        assert stopped and at_stop < n - 10
        states = [await results.get(r) for r in ids]
        docs = [s.result for s in states if s is not None and s.result is not None]
        assert len(docs) == n, f"{len(docs)}/{n} results"  # 0 lost
        assert {d.status for d in docs} == {"completed"}
        assert {d.deployment for d in docs} == {"east", "west"}
        for rid in ids:  # 0 duplicated: one result pushed to each reply key
            assert await redis.llen(keys.reply(rid)) == 1
        assert await redis.xlen(keys.dead_letter(POOL)) == 0  # 0 dead letters
        assert all(d.attempts == 1 for d in docs)  # the outage burnt no attempt
        rows = {r.deployment: r for r in await collect(settings, redis, source, time.time())}
        assert {r.pool for r in rows.values()} == {POOL}
        assert rows["east"].queue_depth == rows["west"].queue_depth == 0  # the pool's queue
        assert name_cell(rows["west"]) == f"west (pool {POOL})"
    finally:
        east.stop()
        west.stop()

"""The worker in-process against the real simulator over loopback and a real Redis.

Covers the happy path, the simulator's fault injection (5xx, 408, 429), expiry,
non-retryable 4xx, and a blocking read idling longer than redis-py's socket timeout.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr
from structlog.testing import capture_logs

from bench.harness.identity import IdentityEndpoint
from orchestrator.core import keys
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import QueuedRequest, ResultDocument
from orchestrator.core.settings import DeploymentConfig, Settings
from orchestrator.queues.redis_streams import RedisStreamsQueue
from orchestrator.utilisation.static import StaticSource
from orchestrator.worker.loop import WorkerTiming
from orchestrator.worker.main import build_worker
from orchestrator.worker.upstream import AzureUpstream, Upstream
from simulator.config import SimConfig
from simulator.openai import tokens
from simulator.server import SimulatorThread
from tests import redis_mode

DEP = "dep"
MESSAGES = [{"role": "user", "content": "Summarise the quarterly report in one line."}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs([f"{DEP}=gpt-4o-mini:15"], window_s=10.0, tbt_ms=0, ttft_ms=0)
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture
async def http(sim: SimulatorThread) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=sim.url, timeout=10) as client:
        await client.post("/sim/reset")
        await client.patch(
            f"/sim/deployments/{DEP}",
            json={"ptus": 15, "error_rate": 0, "timeout_rate": 0, "tbt_ms": 0, "ttft_ms": 0},
        )
        yield client


NO_BREAKER: dict[str, Any] = {"breaker_min_calls": 1_000_000}
"""Keeps the circuit breaker closed, for tests of the retry budget itself."""


def make_settings(sim: SimulatorThread, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_cluster": redis_mode.CLUSTER,
        "deployments": [DeploymentConfig(name=DEP, model="gpt-4o-mini", ptus=15)],
        "azure_openai_endpoint": sim.url,
        "azure_openai_api_key": SecretStr("k"),
        "max_concurrency": 4,
        "max_attempts": 3,
        "backoff_base_s": 0.02,
        "backoff_max_s": 0.1,
        "estimate_window_s": 10.0,
        "request_timeout_s": 10.0,
        "queue_claim_idle_s": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


async def enqueue(redis: aioredis.Redis, n: int, **fields: Any) -> list[str]:
    results = ResultStore(redis, 3600)
    queue = RedisStreamsQueue(redis, DEP, "producer")
    ids = []
    now = time.time()
    body = {"messages": MESSAGES, "max_tokens": 20, **fields.pop("body", {})}
    for _ in range(n):
        rid = uuid.uuid4().hex
        message = QueuedRequest(
            id=rid,
            deployment=DEP,
            body=body,
            reply_key=keys.reply(rid),
            enqueued_at=now,
            deadline=fields.get("deadline", now + 600),
        )
        await results.register(message)
        await queue.put(message)
        ids.append(rid)
    return ids


async def results_of(redis: aioredis.Redis, ids: list[str]) -> dict[str, ResultDocument]:
    store = ResultStore(redis, 3600)
    out = {}
    for rid in ids:
        state = await store.get(rid)
        if state is not None and state.result is not None:
            out[rid] = state.result
    return out


async def run_worker(
    settings: Settings,
    redis: aioredis.Redis,
    ids: list[str],
    *,
    timing: WorkerTiming | None = None,
    timeout_s: float = 30.0,
    before: float = 0.0,
    then: Any = None,
    upstream: Upstream | None = None,
) -> dict[str, ResultDocument]:
    """Run one in-process worker until every id has a result, then stop it."""
    source = StaticSource({DEP: 0.0})
    built = build_worker(
        settings,
        redis,
        settings.deployments,
        "w-test",
        upstream=upstream,
        source=source,
        timing=timing or WorkerTiming(receive_timeout_s=0.2, heartbeat_s=0.2, drain_timeout_s=2),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(built.worker.run(stop))
    try:
        if before:
            await asyncio.sleep(before)
        if then is not None:
            ids = ids + await then()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = await results_of(redis, ids)
            if len(done) == len(ids):
                return done
            await asyncio.sleep(0.05)
        raise AssertionError(f"only {len(await results_of(redis, ids))}/{len(ids)} results")
    finally:
        stop.set()
        await task
        await built.close()


async def sim_state(http: httpx2.AsyncClient) -> dict[str, Any]:
    state: dict[str, Any] = (await http.get("/sim/state")).json()["deployments"][DEP]
    return state


async def test_queued_requests_complete_once_with_low_priority_calls(
    sim: SimulatorThread, redis_url: str, redis: aioredis.Redis, http: httpx2.AsyncClient
) -> None:
    ids = await enqueue(redis, 20)
    done = await run_worker(make_settings(sim, redis_url), redis, ids)

    assert {d.status for d in done.values()} == {"completed"}
    prompt = tokens.estimate_prompt_tokens({"messages": MESSAGES})
    for doc in done.values():
        assert doc.status_code == 200 and doc.attempts == 1 and doc.usage is not None
        assert doc.usage["prompt_tokens"] == prompt
        assert doc.response is not None and doc.response["choices"][0]["message"]["content"]
    for rid in ids:
        assert await redis.llen(keys.reply(rid)) == 1
    state = await sim_state(http)
    assert state["by_priority"]["low"]["requests"] == 20
    assert 1 <= state["peak_in_flight_by_priority"]["low"] <= 4
    assert await redis.xlen(keys.queue(DEP)) == 0
    assert await redis.exists(keys.estimate(DEP))  # the worker's token events were folded in
    assert await redis.hget(keys.WORKERS, "w-test") is None  # heartbeat removed at exit


async def test_5xx_is_retried_then_failed_and_dead_lettered(
    sim: SimulatorThread, redis_url: str, redis: aioredis.Redis, http: httpx2.AsyncClient
) -> None:
    await http.patch(f"/sim/deployments/{DEP}", json={"error_rate": 1.0})
    ids = await enqueue(redis, 3)
    done = await run_worker(make_settings(sim, redis_url, **NO_BREAKER), redis, ids)

    for doc in done.values():
        assert (doc.status, doc.status_code, doc.attempts) == ("failed", 500, 3)
        assert doc.error is not None and doc.error["code"] == "500"
    assert (await sim_state(http))["errors"] == 9
    assert await redis.xlen(keys.dead_letter(DEP)) == 3
    assert await redis.xlen(keys.queue(DEP)) == 0


async def test_408_is_retried_then_failed_with_408(
    sim: SimulatorThread, redis_url: str, redis: aioredis.Redis, http: httpx2.AsyncClient
) -> None:
    await http.patch(f"/sim/deployments/{DEP}", json={"timeout_rate": 1.0})
    ids = await enqueue(redis, 2)
    done = await run_worker(make_settings(sim, redis_url, max_attempts=2, **NO_BREAKER), redis, ids)

    assert {(d.status, d.status_code, d.attempts) for d in done.values()} == {("failed", 408, 2)}
    assert await redis.xlen(keys.dead_letter(DEP)) == 2


async def test_intermittent_faults_are_retried_to_success(
    sim: SimulatorThread, redis_url: str, redis: aioredis.Redis, http: httpx2.AsyncClient
) -> None:
    await http.patch(f"/sim/deployments/{DEP}", json={"error_rate": 0.3, "timeout_rate": 0.1})
    ids = await enqueue(redis, 20)
    done = await run_worker(
        make_settings(sim, redis_url, max_attempts=10, **NO_BREAKER), redis, ids
    )

    assert {d.status for d in done.values()} == {"completed"}
    assert max(d.attempts for d in done.values()) > 1
    assert (await sim_state(http))["errors"] == sum(d.attempts - 1 for d in done.values())


async def test_429_pauses_every_slot_and_retries_after_retry_after(
    sim: SimulatorThread, redis_url: str, redis: aioredis.Redis, http: httpx2.AsyncClient
) -> None:
    # 0.3 PTU of gpt-4o-mini: 185 tokens/s, 100 % = 1,850 tokens; one forced 700-token
    # high-priority completion (prompt + 700 x 3) puts the bucket about 15 % over
    await http.patch(f"/sim/deployments/{DEP}", json={"ptus": 0.3})
    big = await http.post(
        f"/openai/deployments/{DEP}/chat/completions?api-version=2024-10-21",
        json={"messages": MESSAGES, "max_tokens": 700},
        headers={"api-key": "k", "x-ptu-priority": "high", "x-sim-completion-tokens": "700"},
    )
    assert big.status_code == 200
    ids = await enqueue(redis, 8, body={"max_tokens": 5})
    settings = make_settings(sim, redis_url, max_attempts=10, backoff_max_s=5.0)
    with capture_logs() as logs:
        done = await run_worker(settings, redis, ids)

    assert {d.status for d in done.values()} == {"completed"}
    assert max(d.attempts for d in done.values()) >= 2
    low = (await sim_state(http))["by_priority"]["low"]
    assert low["throttled"] == sum(d.attempts - 1 for d in done.values())
    # the first 429 (about 15 % over, at 185 tokens/s: ~1.4 s) pauses every slot that long
    pauses = [e["seconds"] for e in logs if e["event"] == "throttle_paused"]
    assert pauses and max(pauses) > 1.0
    retries = [e["delay_s"] for e in logs if e["event"] == "request_retry"]
    assert max(retries) > 1.0  # waited the service's retry-after-ms, not the short backoff


async def test_a_fresh_worker_probes_a_breaker_another_process_left_open(
    sim: SimulatorThread, redis_url: str, redis: aioredis.Redis, http: httpx2.AsyncClient
) -> None:
    # a previous worker (wrong endpoint) tripped the breaker and exited; this worker never
    # had a call of its own in flight, so only its lane's look at the state can start the
    # probe once the open time is over
    seconds, micros = await redis.time()
    until_ms = seconds * 1000 + micros // 1000 + 1000
    await redis.hset(
        keys.breaker(DEP),
        mapping={"state": "open", "until_ms": until_ms, "reason": "unreachable", "trips": 1},
    )
    ids = await enqueue(redis, 5)
    started = time.monotonic()
    done = await run_worker(make_settings(sim, redis_url), redis, ids, timeout_s=15.0)

    assert {d.status for d in done.values()} == {"completed"}
    assert time.monotonic() - started >= 0.9  # nothing was called while it was open
    assert (await sim_state(http))["requests"] == 5
    assert (await redis.hget(keys.breaker(DEP), "state")) == b"closed"


async def test_expired_requests_get_expired_results_without_calls(
    sim: SimulatorThread, redis_url: str, redis: aioredis.Redis, http: httpx2.AsyncClient
) -> None:
    ids = await enqueue(redis, 3, deadline=time.time() - 1)
    done = await run_worker(make_settings(sim, redis_url), redis, ids)

    assert {(d.status, d.attempts) for d in done.values()} == {("expired", 0)}
    assert (await sim_state(http))["requests"] == 0


async def test_bad_request_fails_at_once_into_the_dead_letter_store(
    sim: SimulatorThread, redis_url: str, redis: aioredis.Redis, http: httpx2.AsyncClient
) -> None:
    ids = await enqueue(redis, 2, body={"max_tokens": -3})
    done = await run_worker(make_settings(sim, redis_url), redis, ids)

    assert {(d.status, d.status_code, d.attempts) for d in done.values()} == {("failed", 400, 1)}
    assert await redis.xlen(keys.dead_letter(DEP)) == 2
    assert await redis.xlen(keys.queue(DEP)) == 0


async def test_blocking_read_longer_than_the_socket_timeout_survives(
    sim: SimulatorThread, redis_url: str, http: httpx2.AsyncClient
) -> None:
    # a client with a 1 s socket timeout, a worker whose receive waits 3 s, idle for 2.5 s
    client = redis_mode.connect(redis_url, socket_timeout=1.0)
    await client.flushdb()
    timing = WorkerTiming(receive_timeout_s=3.0, heartbeat_s=0.5, drain_timeout_s=2)
    try:
        with capture_logs() as logs:
            done = await run_worker(
                make_settings(sim, redis_url),
                client,
                [],
                timing=timing,
                before=2.5,
                then=lambda: enqueue(client, 1),
            )
    finally:
        await client.aclose()
    assert [d.status for d in done.values()] == ["completed"]
    failures = [e for e in logs if e["event"] in ("queue_receive_failed", "queue_redis_error")]
    assert failures == []


async def test_entra_id_bearer_token_authenticates_the_upstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # no API key: DefaultAzureCredential finds the local managed-identity endpoint
    config = SimConfig.from_specs([f"{DEP}=gpt-4o-mini:15"], tbt_ms=0, ttft_ms=0, api_key="tok-1")
    with IdentityEndpoint("tok-1") as identity, SimulatorThread(config) as server:
        for name, value in identity.env.items():
            monkeypatch.setenv(name, value)
        settings = Settings(azure_openai_endpoint=server.url)
        upstream = AzureUpstream.from_settings(settings)
        try:
            response = await upstream.chat(DEP, {"messages": MESSAGES, "max_tokens": 5})
        finally:
            await upstream.close()
    assert response.status_code == 200 and response.usage is not None

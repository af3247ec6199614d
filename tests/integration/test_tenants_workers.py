"""Fair share across two in-process workers on a real Redis and the simulator over loopback.

Both tenants' work is queued before the workers start, so the order of service is
the scheduler's alone, whatever the speed of this machine: plain FIFO would finish
all of A before any of B; fair share interleaves them by weight.
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

from orchestrator.core import keys
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import QueuedRequest, ResultDocument
from orchestrator.core.settings import DeploymentConfig, Settings
from orchestrator.queues.factory import make_queue
from orchestrator.tenants.config import Tenancy, TenantConfig
from orchestrator.tenants.ledger import UsageLedger
from orchestrator.utilisation.static import StaticSource
from orchestrator.worker.loop import WorkerTiming
from orchestrator.worker.main import build_worker
from simulator.config import SimConfig
from simulator.server import SimulatorThread

DEP = "dep"
MESSAGES = [{"role": "user", "content": "Summarise the quarterly report in one line."}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs([f"{DEP}=gpt-4o-mini:15"], window_s=10.0, tbt_ms=0, ttft_ms=5)
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture
async def http(sim: SimulatorThread) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=sim.url, timeout=10) as client:
        await client.post("/sim/reset")
        yield client


def settings_for(sim: SimulatorThread, redis_url: str, tenants: list[TenantConfig]) -> Settings:
    return Settings(
        redis_url=redis_url,
        deployments=[DeploymentConfig(name=DEP, model="gpt-4o-mini", ptus=15)],
        azure_openai_endpoint=sim.url,
        azure_openai_api_key=SecretStr("k"),
        max_concurrency=2,
        request_timeout_s=10.0,
        queue_claim_idle_s=2.0,
        tenants=tenants,
        api_keys={f"key-{t.name}": t.name for t in tenants},
    )


async def enqueue(
    settings: Settings, redis: aioredis.Redis, tenant: str, n: int, max_tokens: int
) -> list[str]:
    queue = make_queue(settings, DEP, redis, "producer")
    results = ResultStore(redis, 3600)
    ids = []
    now = time.time()
    for i in range(n):
        rid = f"{tenant}-{i:03d}"
        message = QueuedRequest(
            id=rid,
            deployment=DEP,
            body={"messages": MESSAGES, "max_tokens": max_tokens},
            tenant=tenant,
            reply_key=keys.reply(rid),
            enqueued_at=now,
            deadline=now + 600,
        )
        await results.register(message)
        await queue.put(message)
        ids.append(rid)
    await queue.close()
    return ids


async def run_two_workers(
    settings: Settings, redis: aioredis.Redis, ids: list[str], timeout_s: float = 90.0
) -> dict[str, ResultDocument]:
    timing = WorkerTiming(receive_timeout_s=0.2, heartbeat_s=0.2, drain_timeout_s=2)
    source = StaticSource({DEP: 0.0})
    built = [
        build_worker(settings, redis, settings.deployments, name, source=source, timing=timing)
        for name in ("w1", "w2")
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(b.worker.run(stop)) for b in built]
    store = ResultStore(redis, 3600)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done: dict[str, ResultDocument] = {}
            for rid in ids:
                state = await store.get(rid)
                if state is not None and state.result is not None:
                    done[rid] = state.result
            if len(done) == len(ids):
                return done
            await asyncio.sleep(0.1)
        raise AssertionError(f"only {len(done)}/{len(ids)} results")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for b in built:
            await b.close()


def _left_when_last(done: dict[str, ResultDocument], last_of: str, other: str) -> int:
    """How many of `other`'s requests were still unfinished when `last_of`'s last one finished."""
    end = max(d.completed_at for d in done.values() if d.tenant == last_of)
    return sum(1 for d in done.values() if d.tenant == other and d.completed_at > end)


@pytest.mark.parametrize(("weight_b", "min_left"), [(1.0, 20), (3.0, 35)])
async def test_two_workers_share_by_weight_and_account_every_token(
    sim: SimulatorThread,
    redis_url: str,
    redis: aioredis.Redis,
    http: httpx2.AsyncClient,
    weight_b: float,
    min_left: int,
) -> None:
    tenants = [TenantConfig(name="a"), TenantConfig(name="b", weight=weight_b)]
    settings = settings_for(sim, redis_url, tenants)
    ids = await enqueue(settings, redis, "a", 60, 8)
    ids += await enqueue(settings, redis, "b", 20, 8)

    done = await run_two_workers(settings, redis, ids)

    assert {d.status for d in done.values()} == {"completed"}
    assert {d.tenant for d in done.values()} == {"a", "b"}
    # FIFO would leave 0 of A's 60; equal weights about 40; weight 3 about 53
    assert _left_when_last(done, "b", "a") >= min_left
    # both workers' usage reached the ledger, and equals what the simulator counted
    state = (await http.get("/sim/state")).json()["deployments"][DEP]
    rows = await UsageLedger(redis, Tenancy(tenants, {})).rows(time.time() - 3600, time.time() + 1)
    assert sum(r.prompt_tokens for r in rows) == state["prompt_tokens"]
    assert sum(r.completion_tokens for r in rows) == state["completion_tokens"]
    assert sum(r.requests for r in rows) == len(ids)
    per_tenant = {t: sum(r.completion_tokens for r in rows if r.tenant == t) for t in "ab"}
    expected = {t: sum(_usage(d)["completion_tokens"] for d in done.values() if d.tenant == t)
                for t in "ab"}  # fmt: skip
    assert per_tenant == expected


async def test_a_lone_tenant_gets_every_slot_and_quota_stops_its_late_lines(
    sim: SimulatorThread, redis_url: str, redis: aioredis.Redis, http: httpx2.AsyncClient
) -> None:
    # each call uses ~25 tokens: a quota of 200 lets the first few run, the rest get 403
    tenants = [TenantConfig(name="a", token_quota=200, token_quota_period="daily")]
    settings = settings_for(sim, redis_url, tenants)
    ids = await enqueue(settings, redis, "a", 30, 8)

    done = await run_two_workers(settings, redis, ids)

    ok = [d for d in done.values() if d.status == "completed"]
    refused = [d for d in done.values() if d.status == "failed"]
    assert ok and refused and len(ok) + len(refused) == 30
    assert {(d.status_code, (d.error or {}).get("code")) for d in refused} == {
        (403, "token_quota_exceeded")
    }
    used = sum(_usage(d)["prompt_tokens"] + _usage(d)["completion_tokens"] for d in ok)
    # at most the calls that were already admitted when the quota ran out overshoot it
    assert used - 200 <= 2 * max(_usage(d)["prompt_tokens"] + 8 for d in ok)
    state = (await http.get("/sim/state")).json()["deployments"][DEP]
    assert state["requests"] == len(ok)  # refused lines never reached the deployment


def _usage(doc: ResultDocument) -> dict[str, Any]:
    assert doc.usage is not None
    return doc.usage

"""Queued work on a PTU with deployment-level spillover (the ARM `spilloverDeploymentName`),
the worker in-process against the simulator over loopback and a real Redis: spilled calls
are counted, pause the deployment, are charged to the standard deployment at pay-as-you-go
price, and with `low_priority_spill: fail` no result comes from the standard deployment."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from orchestrator.cli.usage import period_of, summarise
from orchestrator.core import keys
from orchestrator.core.settings import DeploymentConfig
from orchestrator.tenants.config import Tenancy
from orchestrator.tenants.ledger import UsageLedger
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests.integration.test_worker_sim import DEP, MESSAGES, enqueue, make_settings, run_worker

STD = "paygo"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs(
        [f"{DEP}=gpt-4o-mini:15:spill={STD}", f"{STD}=gpt-4o-mini:10000000:standard"],
        window_s=10.0, tbt_ms=0, ttft_ms=0,
    )  # fmt: skip
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture
async def saturated(sim: SimulatorThread) -> AsyncIterator[httpx2.AsyncClient]:
    """The PTU full for minutes: one admitted call on 0.001 PTU, served by the PTU itself."""
    async with httpx2.AsyncClient(base_url=sim.url, timeout=10) as client:
        await client.post("/sim/reset")
        await client.patch(f"/sim/deployments/{DEP}", json={"ptus": 0.001, "error_rate": 0})
        raw = await client.post(
            f"/openai/deployments/{DEP}/chat/completions?api-version=2024-10-21",
            json={"messages": MESSAGES, "max_tokens": 20},
            headers={"api-key": "k"},
        )
        assert raw.status_code == 200 and raw.headers["x-ms-deployment-name"] == DEP
        yield client
        await client.patch(f"/sim/deployments/{DEP}", json={"ptus": 15})


def _deployments(spill: str) -> list[DeploymentConfig]:
    return [
        DeploymentConfig(name=DEP, model="gpt-4o-mini", ptus=15, low_priority_spill=spill),  # type: ignore[arg-type]
        DeploymentConfig(
            name=STD, model="gpt-4o-mini", kind="standard", tpm=10_000_000,
            input_price_per_mtok=0.15, output_price_per_mtok=0.6,
        ),
    ]  # fmt: skip


async def _state(http: httpx2.AsyncClient) -> dict[str, Any]:
    state: dict[str, Any] = (await http.get("/sim/state")).json()["deployments"]
    return state


async def test_spilled_queued_calls_are_kept_counted_paused_on_and_charged_at_payg(
    sim: SimulatorThread, redis_url: str, redis: aioredis.Redis, saturated: httpx2.AsyncClient
) -> None:
    settings = make_settings(sim, redis_url, deployments=_deployments("keep"))
    since = time.time()
    ids = await enqueue(redis, 4)
    with capture_logs() as logs:
        done = await run_worker(settings, redis, ids)

    assert {(d.status, d.spillover) for d in done.values()} == {("completed", STD)}
    state = await _state(saturated)
    assert state[DEP]["spilled"] == 4 and state[STD]["requests"] == 4
    assert await redis.hget(keys.result_counts(DEP), "spilled") == b"4"
    paused = [e for e in logs if e["event"] == "throttle_paused" and e["deployment"] == DEP]
    assert len(paused) == 4  # every spill paused low priority, as a 429 does
    ledger = UsageLedger(redis, Tenancy(settings.tenants, settings.api_keys))
    period = period_of(since, time.time())
    rows = await ledger.rows(period.start, period.end)
    assert {r.deployment for r in rows} == {STD}  # nothing charged to the PTU
    (line,) = summarise(rows, "deployment", settings, period)
    assert line["requests"] == 4 and line["payg_cost"] > 0
    usage = [d.usage for d in done.values()]
    paid = sum(u["prompt_tokens"] * 0.15 + u["completion_tokens"] * 0.6 for u in usage if u)
    assert line["payg_cost"] == round(paid / 1e6, 6)


async def test_with_fail_no_result_comes_from_the_standard_deployment(
    sim: SimulatorThread, redis_url: str, redis: aioredis.Redis, saturated: httpx2.AsyncClient
) -> None:
    settings = make_settings(sim, redis_url, deployments=_deployments("fail"))
    ids = await enqueue(redis, 4)
    done = await run_worker(settings, redis, ids)

    for doc in done.values():
        assert (doc.status, doc.status_code, doc.response, doc.spillover) == (
            "failed", 409, None, None,
        )  # fmt: skip
        assert doc.error is not None and doc.error["code"] == "spillover_discarded"
    assert (await _state(saturated))[STD]["requests"] == 4  # each was served (and billed) once

"""High priority with Azure's native spillover, through the ingress, the simulator over
loopback and the unchanged `openai` SDK: one round trip per spilled call (streams too), no
interactive failure while the PTU is saturated, and the standard deployment that served is
the one charged and named."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
import redis.asyncio as aioredis

from ingress.server import IngressThread
from orchestrator.core.settings import load_settings
from orchestrator.tenants.config import Tenancy
from orchestrator.tenants.ledger import UsageLedger
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode

MESSAGES: Any = [{"role": "user", "content": "hello"}]


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs(
        [
            "ptu=gpt-4o-mini:15",  # spills because the ingress asks (a native entry)
            "owned=gpt-4o-mini:15:spill=paygo",  # spills because the deployment says so
            "paygo=gpt-4o-mini:10000000:standard",
        ],
        tbt_ms=0.0, ttft_ms=0.0,
    )  # fmt: skip
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    settings = load_settings(
        redis_url=redis_url,
        redis_cluster=redis_mode.CLUSTER,
        azure_openai_endpoint=sim.url,
        azure_openai_api_key="k",
        deployments=[
            {
                "name": "ptu", "model": "gpt-4o-mini", "ptus": 15,
                "spillover": [{"name": "paygo", "native": True}],
            },
            {"name": "owned", "model": "gpt-4o-mini", "ptus": 15},
            {"name": "paygo", "model": "gpt-4o-mini", "kind": "standard", "tpm": 10_000_000},
        ],
    )  # fmt: skip
    with IngressThread(settings) as server:
        yield server


def _saturate(sim: SimulatorThread, name: str) -> None:
    """One admitted call on 0.001 PTU keeps the deployment above 100 % for minutes."""
    httpx2.patch(f"{sim.url}/sim/deployments/{name}", json={"ptus": 0.001}).raise_for_status()
    httpx2.post(
        f"{sim.url}/openai/deployments/{name}/chat/completions?api-version=2024-10-21",
        json={"messages": MESSAGES, "max_tokens": 20},
        headers={"api-key": "k"},
    ).raise_for_status()


def _state(sim: SimulatorThread) -> dict[str, Any]:
    state: dict[str, Any] = httpx2.get(f"{sim.url}/sim/state").json()["deployments"]
    return state


def test_a_native_entry_spills_in_one_round_trip_streams_included(
    sim: SimulatorThread, ingress: IngressThread
) -> None:
    _saturate(sim, "ptu")
    client = openai.OpenAI(base_url=ingress.url + "/v1", api_key="k", max_retries=0)
    for i in range(6):
        raw = client.chat.completions.with_raw_response.create(
            model="ptu", messages=MESSAGES, max_tokens=20, stream=i % 2 == 0,
            extra_headers={"x-ms-spillover-deployment": "nowhere"},  # never forwarded as sent
        )  # fmt: skip
        assert raw.http_response.status_code == 200
        assert (
            raw.headers["x-ptu-deployment"] == "paygo" and raw.headers["x-ptu-spillover"] == "paygo"
        )
        if i % 2 == 0:
            assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            assert raw.parse().choices[0].message.content
    ptu, paygo = _state(sim)["ptu"], _state(sim)["paygo"]
    # one round trip each: the PTU took every call and Azure served it from paygo; no 429
    # reached the ingress, and the ingress never called paygo itself
    assert (ptu["requests"], ptu["spilled"], ptu["throttled"]) == (7, 6, 0)
    assert paygo["spillover_served"] == paygo["requests"] == 6
    metrics = httpx2.get(ingress.url + "/metrics").text
    native = 'ptu_ingress_spillover_total{deployment="ptu",kind="native",reason="azure",to="paygo"}'
    assert native + " 6.0" in metrics
    assert 'kind="chain"' not in metrics
    used = 'ptu_tenant_tokens_total{deployment="paygo",kind="completion",priority="high"'
    assert used in metrics
    assert 'ptu_tenant_tokens_total{deployment="ptu"' not in metrics


async def test_a_deployment_level_spill_is_charged_to_the_standard_deployment(
    sim: SimulatorThread, ingress: IngressThread, redis: aioredis.Redis
) -> None:
    _saturate(sim, "owned")
    since = time.time()
    client = openai.AsyncOpenAI(base_url=ingress.url + "/v1", api_key="k", max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model="owned", messages=MESSAGES, max_tokens=20
    )
    usage = raw.parse().usage
    assert usage is not None and raw.headers["x-ptu-deployment"] == "paygo"
    await client.close()
    ledger = UsageLedger(redis, Tenancy([], {}))
    for _ in range(100):  # the ledger write runs in the background
        rows = await ledger.rows(since - 3600, time.time() + 3600)
        if rows:
            break
        await _sleep()
    (row,) = rows
    assert (row.deployment, row.completion_tokens) == ("paygo", usage.completion_tokens)
    assert _state(sim)["owned"]["spilled"] == 1


async def _sleep() -> None:
    await asyncio.sleep(0.05)

"""The overask reality's proxy: low-priority calls come back short, everything else as is."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import pytest

from bench.harness.output_proxy import create_app
from simulator.app import create_app as create_simulator
from simulator.config import SimConfig
from tests.support.clock import FakeClock

DEPLOYMENT = "gpt-4o-mini-ptu"
URL = f"/openai/deployments/{DEPLOYMENT}/chat/completions?api-version=2024-10-21"


@pytest.fixture
async def proxy() -> AsyncIterator[httpx2.AsyncClient]:
    """The proxy in process, in front of the simulator in process."""
    config = SimConfig.from_specs([f"{DEPLOYMENT}=gpt-4o-mini:15"], tbt_ms=0.0, ttft_ms=0.0)
    sim = create_simulator(config, clock=FakeClock())
    async with (
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=sim)) as upstream,
        httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=create_app("http://sim.test", 100, upstream)),
            base_url="http://proxy.test",
        ) as client,
    ):
        yield client


def _body(i: int) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": f"line {i} " * 50}], "max_tokens": 2000}


async def test_low_priority_calls_use_the_forced_length_and_the_rest_pass_through(
    proxy: httpx2.AsyncClient,
) -> None:
    for i in range(5):
        low = await proxy.post(
            URL, json=_body(i), headers={"api-key": "k", "x-ptu-priority": "low"}
        )
        assert low.status_code == 200
        assert low.json()["usage"]["completion_tokens"] == 100
        assert low.json()["choices"][0]["finish_reason"] == "stop"
        assert low.headers["azure-openai-deployment-utilization"].endswith("%")
        high = await proxy.post(
            URL, json=_body(i), headers={"api-key": "k", "x-ptu-priority": "high"}
        )
        assert high.json()["usage"]["completion_tokens"] >= 400  # 20-100 % of max_tokens
    state = (await proxy.get("/sim/state")).json()
    counts = state["deployments"][DEPLOYMENT]["by_priority"]
    assert counts["low"]["completion_tokens"] == 500
    assert (await proxy.post(URL, json=_body(0))).status_code == 401  # answers as they are

"""A capacity step at run time (`PATCH {"ptus": N}`), seen through the unchanged openai SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai
import pytest

from simulator.config import SimConfig
from simulator.server import SimulatorThread

API_VERSION = "2024-10-21"
MESSAGES: Any = [{"role": "user", "content": "Fill the bucket."}]
HEADER = "azure-openai-deployment-utilization"
# gpt-4o 15 PTU: 37,500 TPM -> 625/s; a 60 s window -> 100 % = 37,500 (drains 1.7 % a second)
FULL = 37_500


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs(["ptu=gpt-4o:15"], window_s=60.0, tbt_ms=0, ttft_ms=0, seed=1)
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture
async def azure(sim: SimulatorThread) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=sim.url, api_key="k", api_version=API_VERSION, max_retries=0
    )
    yield client
    await client.close()


async def utilisation(http: httpx2.AsyncClient) -> float:
    state = (await http.get("/sim/state")).json()["deployments"]["ptu"]
    return float(state["utilization"])


async def test_cut_capacity_turns_the_same_level_into_429s_and_back(
    sim: SimulatorThread, azure: openai.AsyncAzureOpenAI
) -> None:
    async with httpx2.AsyncClient(base_url=sim.url) as http:
        await http.post("/sim/reset")
        try:
            await azure.chat.completions.create(
                model="ptu", messages=MESSAGES, max_tokens=8_400,
                extra_headers={"x-sim-completion-tokens": "8400"},
            )  # fmt: skip
            before = await utilisation(http)
            assert 0.64 <= before <= 0.68  # ~25,200 + the prompt of 37,500
            cut = (await http.patch("/sim/deployments/ptu", json={"ptus": 9})).json()
            assert cut["ptus"] == 9 and cut["capacity_tpm"] == 22_500
            assert cut["utilization"] == pytest.approx(before * 15 / 9, rel=0.02)  # ~1.1
            with pytest.raises(openai.RateLimitError) as refused:
                await azure.chat.completions.create(model="ptu", messages=MESSAGES, max_tokens=5)
            headers = refused.value.response.headers
            assert float(headers[HEADER].rstrip("%")) >= 100.0
            # above 100 % of the new, smaller bucket, drained at the new rate of 375/s
            assert 5_000 <= int(headers["retry-after-ms"]) <= 8_000  # ~2,250 over, 375/s
            restored = (await http.patch("/sim/deployments/ptu", json={"ptus": 15})).json()
            assert restored["utilization"] == pytest.approx(before, abs=0.02)
            served = await azure.chat.completions.with_raw_response.create(
                model="ptu", messages=MESSAGES, max_tokens=5
            )
            assert float(served.headers[HEADER].rstrip("%")) < 70.0
        finally:
            await http.patch("/sim/deployments/ptu", json={"ptus": 15})

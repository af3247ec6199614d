"""Native spillover in the simulator, through the unchanged openai SDK over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai
import pytest

from orchestrator.calls.signals import (
    SERVED_BY_HEADER,
    SPILLED_FROM_HEADER,
    SPILLOVER_ERROR_HEADER,
    SPILLOVER_REQUEST_HEADER,
    read_signals,
)
from simulator.config import SimConfig
from simulator.server import SimulatorThread

API_VERSION = "2024-10-21"
MESSAGES: Any = [{"role": "user", "content": "Spill over, please."}]
FILL = {"x-sim-completion-tokens": "2500"}
UTIL = "azure-openai-deployment-utilization"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    # gpt-4o 15 PTU, 10 s window: 100 % = 6,250; a call of 2,500 forced outputs fills it
    config = SimConfig.from_specs(
        [
            "ptu=gpt-4o:15:spill=paygo",
            "bare=gpt-4o:15",
            "paygo=gpt-4o:1000000:standard",
            "small=gpt-4o:1000:standard",  # 6 RPM: one request per 10 s window
        ],
        window_s=10.0, tbt_ms=0, ttft_ms=0, seed=2, api_key="k",
    )  # fmt: skip
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture
async def http(sim: SimulatorThread) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=sim.url) as client:
        for name in ("ptu", "bare"):
            await client.patch(f"/sim/deployments/{name}", json={"error_rate": 0})
        await client.patch("/sim/deployments/ptu", json={"spillover": "paygo"})
        await client.post("/sim/reset")
        yield client


@pytest.fixture
async def azure(sim: SimulatorThread) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=sim.url, api_key="k", api_version=API_VERSION, max_retries=0
    )
    yield client
    await client.close()


async def fill(azure: openai.AsyncAzureOpenAI, name: str) -> None:
    """Fill a provisioned deployment past 100 % (served by itself: it was below)."""
    raw = await azure.chat.completions.with_raw_response.create(
        model=name, messages=MESSAGES, max_tokens=2_500, extra_headers=FILL
    )
    assert raw.headers[SERVED_BY_HEADER] == name and SPILLED_FROM_HEADER not in raw.headers


async def state(http: httpx2.AsyncClient) -> dict[str, Any]:
    deployments: dict[str, Any] = (await http.get("/sim/state")).json()["deployments"]
    return deployments


async def test_a_saturated_ptu_with_the_property_answers_from_the_standard_deployment(
    http: httpx2.AsyncClient, azure: openai.AsyncAzureOpenAI
) -> None:
    await fill(azure, "ptu")
    raw = await azure.chat.completions.with_raw_response.create(
        model="ptu", messages=MESSAGES, max_tokens=20,
        extra_headers={"x-ptu-priority": "low"},
    )  # fmt: skip
    assert raw.status_code == 200 and raw.parse().usage is not None
    signals = read_signals(raw.headers)
    assert signals.spilled and signals.spilled_from == "ptu" and signals.served("ptu") == "paygo"
    assert raw.headers[SERVED_BY_HEADER] == "paygo" and SPILLOVER_ERROR_HEADER not in raw.headers
    assert UTIL not in raw.headers and "x-ratelimit-remaining-tokens" in raw.headers  # paygo's
    after = await state(http)
    ptu, paygo = after["ptu"], after["paygo"]
    assert (ptu["spilled"], ptu["throttled"], ptu["requests"]) == (1, 0, 2)
    assert ptu["by_priority"]["low"] == {
        "requests": 1, "throttled": 0, "completion_tokens": 0, "spilled": 1,
    }  # fmt: skip
    assert ptu["spillover"] == "paygo" and ptu["completion_tokens"] == 2_500  # the fill only
    assert (paygo["spillover_served"], paygo["requests"]) == (1, 1)
    assert paygo["completion_tokens"] == raw.parse().usage.completion_tokens  # type: ignore[union-attr]


async def test_streams_and_responses_spill_too(
    http: httpx2.AsyncClient, azure: openai.AsyncAzureOpenAI
) -> None:
    await fill(azure, "ptu")
    raw = await azure.chat.completions.with_raw_response.create(
        model="ptu", messages=MESSAGES, max_tokens=12, stream=True,
        stream_options={"include_usage": True}, extra_headers={"x-sim-completion-tokens": "12"},
    )  # fmt: skip
    assert raw.headers[SPILLED_FROM_HEADER] == "ptu" and raw.headers[SERVED_BY_HEADER] == "paygo"
    chunks = [chunk async for chunk in raw.parse()]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    response = await azure.responses.with_raw_response.create(
        model="ptu", input="spill this", max_output_tokens=16
    )
    assert response.headers[SPILLED_FROM_HEADER] == "ptu"
    assert response.parse().status in ("completed", "incomplete")
    assert (await state(http))["ptu"]["spilled"] == 2


async def test_the_request_header_spills_a_ptu_without_the_property(
    http: httpx2.AsyncClient, azure: openai.AsyncAzureOpenAI
) -> None:
    await fill(azure, "bare")
    with pytest.raises(openai.RateLimitError) as refused:
        await azure.chat.completions.create(model="bare", messages=MESSAGES, max_tokens=5)
    assert refused.value.response.headers[SERVED_BY_HEADER] == "bare"
    raw = await azure.chat.completions.with_raw_response.create(
        model="bare", messages=MESSAGES, max_tokens=5,
        extra_headers={SPILLOVER_REQUEST_HEADER: "paygo"},
    )  # fmt: skip
    assert raw.headers[SPILLED_FROM_HEADER] == "bare" and raw.headers[SERVED_BY_HEADER] == "paygo"
    bare = (await state(http))["bare"]
    assert (bare["spilled"], bare["throttled"], bare["spillover"]) == (1, 1, None)


async def test_the_deployment_property_wins_over_the_request(
    http: httpx2.AsyncClient, azure: openai.AsyncAzureOpenAI
) -> None:
    await fill(azure, "ptu")
    raw = await azure.chat.completions.with_raw_response.create(
        model="ptu", messages=MESSAGES, max_tokens=5,
        extra_headers={SPILLOVER_REQUEST_HEADER: "small"},
    )  # fmt: skip
    assert raw.headers[SERVED_BY_HEADER] == "paygo"
    assert (await state(http))["small"]["requests"] == 0


async def test_when_the_standard_deployment_fails_too_the_ptu_answers_with_the_error(
    http: httpx2.AsyncClient, azure: openai.AsyncAzureOpenAI
) -> None:
    await http.patch("/sim/deployments/ptu", json={"spillover": "small"})
    await azure.chat.completions.create(model="small", messages=MESSAGES, max_tokens=5)
    await fill(azure, "ptu")  # `small` has no request left in this 10 s window
    with pytest.raises(openai.RateLimitError) as refused:
        await azure.chat.completions.create(model="ptu", messages=MESSAGES, max_tokens=5)
    headers = refused.value.response.headers
    assert headers[SPILLOVER_ERROR_HEADER] == "429" and headers[SERVED_BY_HEADER] == "ptu"
    assert SPILLED_FROM_HEADER not in headers and "retry-after-ms" in headers
    assert float(headers[UTIL].rstrip("%")) >= 100.0  # the PTU's own 429
    assert not read_signals(headers).spilled
    ptu = (await state(http))["ptu"]
    assert (ptu["spilled"], ptu["spillover_errors"], ptu["throttled"]) == (0, 1, 1)


async def test_a_server_error_spills(
    http: httpx2.AsyncClient, azure: openai.AsyncAzureOpenAI
) -> None:
    await http.patch("/sim/deployments/ptu", json={"error_rate": 1})
    raw = await azure.chat.completions.with_raw_response.create(
        model="ptu", messages=MESSAGES, max_tokens=5
    )
    assert raw.headers[SPILLED_FROM_HEADER] == "ptu"
    ptu = (await state(http))["ptu"]
    assert (ptu["spilled"], ptu["errors"]) == (1, 0)
    await http.patch("/sim/deployments/ptu", json={"spillover": None})
    with pytest.raises(openai.InternalServerError) as failed:
        await azure.chat.completions.create(model="ptu", messages=MESSAGES, max_tokens=5)
    assert failed.value.response.headers[SERVED_BY_HEADER] == "ptu"


async def test_a_missing_target_is_a_spillover_error_and_patch_checks_the_target(
    http: httpx2.AsyncClient, azure: openai.AsyncAzureOpenAI
) -> None:
    await fill(azure, "bare")
    with pytest.raises(openai.RateLimitError) as refused:
        await azure.chat.completions.create(
            model="bare", messages=MESSAGES, max_tokens=5,
            extra_headers={SPILLOVER_REQUEST_HEADER: "nowhere"},
        )  # fmt: skip
    assert refused.value.response.headers[SPILLOVER_ERROR_HEADER] == "404"
    for bad in ("nowhere", "bare", 7):
        reply = await http.patch("/sim/deployments/ptu", json={"spillover": bad})
        assert reply.status_code == 400, bad
    reply = await http.patch("/sim/deployments/paygo", json={"spillover": "small"})
    assert reply.status_code == 400 and "provisioned deployments only" in reply.text
    removed = await http.patch("/sim/deployments/ptu", json={"spillover": None})
    assert removed.json()["spillover"] is None

"""Reasoning-model deployments in the simulator, through the unchanged openai SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai
import pytest

from simulator.config import SimConfig
from simulator.openai import tokens
from simulator.server import SimulatorThread
from tests.support.clock import FakeClock

API_VERSION = "2025-04-01-preview"
MESSAGES: Any = [{"role": "user", "content": "Think first, then answer briefly."}]
UNSUPPORTED = (
    "Unsupported parameter: 'max_tokens' is not supported with this model. "
    "Use 'max_completion_tokens' instead."
)
# o4-mini 15 PTU (simulator figures): 81,000 TPM, output weight 4; a 60 s window -> 100 % = 81,000
FULL = 81_000.0


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock(5_000.0)  # held still: the bucket keeps exactly what was charged


@pytest.fixture(scope="module")
def sim(clock: FakeClock) -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs(
        ["o4=o4-mini:15", "g5=gpt-5-mini:15", "o3std=o3-mini:100000:standard", "4o=gpt-4o:15"],
        window_s=60.0, tbt_ms=0, ttft_ms=0, seed=9,
    )  # fmt: skip
    with SimulatorThread(config, clock=clock) as server:
        yield server


@pytest.fixture
async def azure(sim: SimulatorThread) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    async with httpx2.AsyncClient() as http:
        await http.post(f"{sim.url}/sim/reset")
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=sim.url, api_key="k", api_version=API_VERSION, max_retries=0
    )
    yield client
    await client.close()


async def deployment_state(sim: SimulatorThread, name: str) -> dict[str, Any]:
    async with httpx2.AsyncClient() as http:
        state: dict[str, Any] = (await http.get(f"{sim.url}/sim/state")).json()
    return state["deployments"][name]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", ["o4", "g5", "o3std"])
async def test_max_tokens_is_refused_with_azures_error(
    azure: openai.AsyncAzureOpenAI, name: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await azure.chat.completions.create(model=name, messages=MESSAGES, max_tokens=100)
    body = refused.value.response.json()
    assert body == {
        "error": {
            "message": UNSUPPORTED, "type": "invalid_request_error",
            "param": "max_tokens", "code": "unsupported_parameter",
        }
    }  # fmt: skip
    assert refused.value.response.headers["x-ms-deployment-name"] == name


async def test_max_completion_tokens_bounds_reasoning_and_answer_and_both_are_charged(
    sim: SimulatorThread, azure: openai.AsyncAzureOpenAI
) -> None:
    response = await azure.chat.completions.create(
        model="o4", messages=MESSAGES, max_completion_tokens=2_000
    )
    usage = response.usage
    assert usage is not None and usage.completion_tokens_details is not None
    reasoning = usage.completion_tokens_details.reasoning_tokens or 0
    assert tokens.REASONING_MIN <= reasoning <= tokens.REASONING_MAX
    visible = len((response.choices[0].message.content or "").split())
    assert visible > 0 and usage.completion_tokens == visible + reasoning <= 2_000
    again = await azure.chat.completions.create(
        model="o4", messages=MESSAGES, max_completion_tokens=2_000
    )
    assert again.usage == usage  # deterministic from the seed and the messages
    state = await deployment_state(sim, "o4")
    assert state["completion_tokens"] == 2 * usage.completion_tokens
    charged = 2 * (usage.prompt_tokens + usage.completion_tokens * 4.0)  # the clock stands still
    assert state["utilization"] == pytest.approx(charged / FULL)


async def test_a_small_bound_is_spent_on_reasoning_and_leaves_no_answer(
    azure: openai.AsyncAzureOpenAI,
) -> None:
    response = await azure.chat.completions.create(
        model="g5", messages=MESSAGES, max_completion_tokens=30
    )
    assert response.choices[0].message.content == ""
    assert response.choices[0].finish_reason == "length"
    usage = response.usage
    assert usage is not None and usage.completion_tokens == 30
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 30


async def test_reasoning_effort_scales_the_hidden_tokens(azure: openai.AsyncAzureOpenAI) -> None:
    spent = {}
    for effort in ("low", "medium", "high"):
        response = await azure.chat.completions.create(
            model="g5", messages=MESSAGES, max_completion_tokens=5_000,
            reasoning_effort=effort,  # type: ignore[arg-type]
        )  # fmt: skip
        assert response.usage is not None and response.usage.completion_tokens_details is not None
        spent[effort] = response.usage.completion_tokens_details.reasoning_tokens or 0
    assert spent["low"] < spent["medium"] < spent["high"]
    with pytest.raises(openai.BadRequestError) as refused:
        await azure.chat.completions.create(
            model="g5", messages=MESSAGES, reasoning_effort="extreme",  # type: ignore[arg-type]
        )  # fmt: skip
    assert refused.value.code == "invalid_value"


async def test_a_stream_reports_its_reasoning_tokens(azure: openai.AsyncAzureOpenAI) -> None:
    stream = await azure.chat.completions.create(
        model="o4", messages=MESSAGES, max_completion_tokens=1_500, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens_details is not None
    reasoning = usage.completion_tokens_details.reasoning_tokens or 0
    assert reasoning > 0 and usage.completion_tokens == len(text.split()) + reasoning


async def test_responses_count_reasoning_inside_max_output_tokens(
    sim: SimulatorThread,
) -> None:
    v1 = openai.AsyncOpenAI(base_url=f"{sim.url}/openai/v1", api_key="k", max_retries=0)
    try:
        response = await v1.responses.create(
            model="o4", input="Think, then answer.", max_output_tokens=2_000,
            reasoning={"effort": "high"},
        )  # fmt: skip
        usage = response.usage
        assert usage is not None and response.status == "completed"
        reasoning = usage.output_tokens_details.reasoning_tokens
        assert (
            reasoning > 0 and usage.output_tokens == len(response.output_text.split()) + reasoning
        )
        assert response.reasoning is not None and response.reasoning.effort == "high"
        assert [item.type for item in response.output] == ["reasoning", "message"]
        stream = await v1.responses.create(
            model="o4", input="Think, then answer.", max_output_tokens=2_000, stream=True
        )
        events = [event async for event in stream]
        done = [e.item.type for e in events if e.type == "response.output_item.done"]
        assert done == ["reasoning", "message"]
        final = events[-1]
        assert final.type == "response.completed" and final.response.usage is not None
        streamed = final.response.usage
        assert streamed.output_tokens_details.reasoning_tokens > 0
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert final.response.output_text == text
        assert (
            streamed.output_tokens
            == len(text.split()) + streamed.output_tokens_details.reasoning_tokens
        )
        assert {e.output_index for e in events if e.type == "response.output_text.delta"} == {1}
        cut = await v1.responses.create(model="o4", input="Think hard.", max_output_tokens=16)
        assert cut.status == "incomplete" and cut.output_text == ""
        assert cut.usage is not None and cut.usage.output_tokens_details.reasoning_tokens == 16
    finally:
        await v1.close()


async def test_models_that_do_not_reason_are_unchanged(azure: openai.AsyncAzureOpenAI) -> None:
    response = await azure.chat.completions.create(model="4o", messages=MESSAGES, max_tokens=50)
    usage = response.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert usage.completion_tokens == len((response.choices[0].message.content or "").split())

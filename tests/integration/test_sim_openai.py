"""The unchanged openai SDK against the simulator over loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import httpx2
import openai
import pytest

from simulator.config import SimConfig
from simulator.openai import tokens
from simulator.server import SimulatorThread

API_VERSION = "2024-10-21"
MESSAGES = [{"role": "user", "content": "Write a haiku about provisioned throughput."}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs(
        ["ptu=gpt-4o-mini:15", "tiny=gpt-4o:15", "paygo=gpt-4o-mini:1000:standard"],
        window_s=10.0,
        tbt_ms=0.0,
        ttft_ms=0.0,
        seed=3,
        api_key="secret",
    )
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture
async def azure(sim: SimulatorThread) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    async with httpx2.AsyncClient() as http:
        await http.post(f"{sim.url}/sim/reset")
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=sim.url, api_key="secret", api_version=API_VERSION, max_retries=0
    )
    yield client
    await client.close()


async def test_non_streaming_usage(azure: openai.AsyncAzureOpenAI) -> None:
    raw = await azure.chat.completions.with_raw_response.create(
        model="ptu",
        messages=MESSAGES,
        max_tokens=40,  # type: ignore[arg-type]
    )
    response = raw.parse()
    expected_prompt = tokens.estimate_prompt_tokens({"messages": MESSAGES})
    usage = response.usage
    assert usage is not None
    assert usage.prompt_tokens == expected_prompt
    assert 8 <= usage.completion_tokens <= 40
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert len(response.choices[0].message.content.split()) == usage.completion_tokens  # type: ignore[union-attr]
    assert raw.headers["azure-openai-deployment-utilization"].endswith("%")
    again = await azure.chat.completions.create(model="ptu", messages=MESSAGES, max_tokens=40)  # type: ignore[arg-type]
    assert again.usage is not None and again.usage.completion_tokens == usage.completion_tokens


async def test_forced_completion_length(azure: openai.AsyncAzureOpenAI) -> None:
    response = await azure.chat.completions.create(
        model="ptu",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=30,
        extra_headers={"x-sim-completion-tokens": "500"},
    )
    assert response.usage is not None and response.usage.completion_tokens == 30
    assert response.choices[0].finish_reason == "length"


async def test_streaming_with_usage(azure: openai.AsyncAzureOpenAI) -> None:
    stream = await azure.chat.completions.create(
        model="ptu",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-sim-completion-tokens": "12"},
    )
    chunks = [chunk async for chunk in stream]
    first, last = chunks[0], chunks[-1]
    assert first.choices == [] and first.id == "" and first.created == 0
    assert first.model_extra is not None and "prompt_filter_results" in first.model_extra
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 12
    assert last.usage.prompt_tokens == tokens.estimate_prompt_tokens({"messages": MESSAGES})
    assert last.usage.total_tokens == last.usage.prompt_tokens + 12


async def test_raw_sse_ends_with_done(sim: SimulatorThread) -> None:
    body = {"messages": MESSAGES, "stream": True, "max_tokens": 5}
    async with httpx2.AsyncClient() as http:
        response = await http.post(
            f"{sim.url}/openai/deployments/ptu/chat/completions?api-version={API_VERSION}",
            json=body,
            headers={"api-key": "secret"},
        )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert payloads[0]["choices"] == [] and payloads[0]["id"] == ""
    assert all("usage" not in p for p in payloads)  # only with stream_options.include_usage


async def test_v1_surface(sim: SimulatorThread) -> None:
    client = openai.AsyncOpenAI(base_url=f"{sim.url}/openai/v1", api_key="secret", max_retries=0)
    try:
        response = await client.chat.completions.create(
            model="ptu",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_completion_tokens=20,
        )
        assert response.usage is not None and response.usage.completion_tokens <= 20
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]
        assert missing.value.code == "DeploymentNotFound"
    finally:
        await client.close()


async def test_errors(sim: SimulatorThread, azure: openai.AsyncAzureOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await azure.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]
    assert missing.value.code == "DeploymentNotFound"
    wrong = openai.AsyncAzureOpenAI(
        azure_endpoint=sim.url, api_key="wrong", api_version=API_VERSION, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as denied:
        await wrong.chat.completions.create(model="ptu", messages=MESSAGES)  # type: ignore[arg-type]
    await wrong.close()
    assert denied.value.code == "401"
    url = f"{sim.url}/openai/deployments/ptu/chat/completions?api-version={API_VERSION}"
    async with httpx2.AsyncClient() as http:
        bad_json = await http.post(url, content=b"{not json", headers={"api-key": "secret"})
        no_messages = await http.post(url, json={"model": "x"}, headers={"api-key": "secret"})
        bearer = await http.post(
            url, json={"messages": MESSAGES}, headers={"authorization": "Bearer secret"}
        )
        anonymous = await http.post(url, json={"messages": MESSAGES})
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["type"] == "invalid_request_error"
    assert bad_json.headers["azure-openai-deployment-utilization"].endswith("%")
    assert no_messages.status_code == 400 and no_messages.json()["error"]["param"] == "messages"
    assert bearer.status_code == 200
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "401"


async def test_provisioned_429_shape(azure: openai.AsyncAzureOpenAI) -> None:
    # tiny: gpt-4o 15 PTU -> 625 token equivalents/s, 10 s window -> 100 % = 6,250
    await azure.chat.completions.create(
        model="tiny",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=4_000,
        extra_headers={"x-sim-completion-tokens": "4000"},
    )
    with pytest.raises(openai.RateLimitError) as throttled:
        await azure.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10)  # type: ignore[arg-type]
    response = throttled.value.response
    assert response.status_code == 429
    body = response.json()
    assert body["error"]["code"] == "429"
    assert body["error"]["message"].startswith(
        "Requests have exceeded the throughput limit on your Provisioned-Managed deployment"
    )
    ms = int(response.headers["retry-after-ms"])
    assert 8_000 < ms < 10_000  # level ~12,000 drains to 6,250 at 625/s: ~9.2 s
    assert int(response.headers["retry-after"]) == -(-ms // 1000)
    assert float(response.headers["azure-openai-deployment-utilization"].rstrip("%")) >= 100.0


async def test_standard_rate_limit_headers(azure: openai.AsyncAzureOpenAI) -> None:
    # paygo: 1,000 TPM and 1 request per 10 s window
    raw = await azure.chat.completions.with_raw_response.create(
        model="paygo",
        messages=MESSAGES,
        max_tokens=10,  # type: ignore[arg-type]
    )
    assert "azure-openai-deployment-utilization" not in raw.headers
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 1_000
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as throttled:
        await azure.chat.completions.create(model="paygo", messages=MESSAGES, max_tokens=10)  # type: ignore[arg-type]
    headers = throttled.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 10
    assert "x-ratelimit-remaining-tokens" in headers


async def _sim_state(sim: SimulatorThread, name: str) -> dict[str, object]:
    async with httpx2.AsyncClient() as http:
        state: dict[str, object] = (await http.get(f"{sim.url}/sim/state")).json()
    return state["deployments"][name]  # type: ignore[index, no-any-return]


async def test_responses_charge_the_bucket_as_the_same_chat_call(
    sim: SimulatorThread, azure: openai.AsyncAzureOpenAI
) -> None:
    text = MESSAGES[0]["content"]
    forced = {"x-sim-completion-tokens": "20"}
    await azure.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=100,
        extra_headers=forced,  # type: ignore[arg-type]
    )
    after_chat = await _sim_state(sim, "tiny")
    async with httpx2.AsyncClient() as http:
        await http.post(f"{sim.url}/sim/reset")
    v1 = openai.AsyncOpenAI(base_url=sim.url + "/openai/v1", api_key="secret", max_retries=0)
    raw = await v1.responses.with_raw_response.create(
        model="tiny", input=text, max_output_tokens=100, extra_headers=forced
    )
    after_response = await _sim_state(sim, "tiny")
    response = raw.parse()
    assert response.usage is not None and response.usage.output_tokens == 20
    assert response.usage.input_tokens == tokens.estimate_prompt_tokens({"input": text})
    assert response.usage.input_tokens == tokens.estimate_prompt_tokens({"messages": MESSAGES})
    assert raw.headers["azure-openai-deployment-utilization"].endswith("%")
    assert raw.headers["x-ms-deployment-name"] == "tiny" and raw.headers["apim-request-id"]
    # the same prompt estimate and output: the same charge (the level itself drains too fast
    # to compare between two calls; the charge is a function of these counts)
    for key in ("prompt_tokens", "completion_tokens", "requests"):
        assert after_response[key] == after_chat[key], key
    await v1.close()


async def test_responses_throttle_and_refuse_as_azure_does(
    sim: SimulatorThread, azure: openai.AsyncAzureOpenAI
) -> None:
    await azure.responses.create(
        model="tiny", input="fill it", max_output_tokens=4_000,
        extra_headers={"x-sim-completion-tokens": "4000"},
    )  # fmt: skip
    with pytest.raises(openai.RateLimitError) as throttled:
        await azure.responses.create(model="tiny", input="again", max_output_tokens=16)
    headers = throttled.value.response.headers
    assert 8_000 < int(headers["retry-after-ms"]) < 10_000 and headers["retry-after"]
    with pytest.raises(openai.NotFoundError):
        await azure.responses.create(model="nope", input="hi")
    with pytest.raises(openai.BadRequestError) as low:
        await azure.responses.create(model="ptu", input="hi", max_output_tokens=8)
    assert low.value.code == "integer_below_min_value"
    async with httpx2.AsyncClient() as http:
        url = f"{sim.url}/openai/v1/responses"
        missing = await http.post(url, json={"model": "ptu"}, headers={"api-key": "secret"})
        anonymous = await http.post(url, json={"model": "ptu", "input": "hi"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "input"
    assert anonymous.status_code == 401

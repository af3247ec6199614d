"""The Responses API without a server: estimate, usage, governance, SSE, worker, simulator."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import SecretStr, TypeAdapter

from ingress.chat.call import Call
from ingress.chat.governance import govern
from ingress.chat.sse import SSEFilter
from ingress.chat.targets import Target
from orchestrator.core.schemas import QueuedRequest
from orchestrator.core.settings import Settings
from orchestrator.core.tokens import (
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    estimate_prompt_tokens,
    requested_max_tokens,
    text_tokens,
    usage_counts,
)
from orchestrator.worker.upstream import AzureUpstream
from simulator.openai.responses import ResponseWriter
from tests.unit.test_worker_dispatch import _result, _run_one
from tests.unit.worker_fakes import FakeUpstream, make_rig, request

EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)


def test_the_estimate_counts_input_and_instructions() -> None:
    text = "Summarise the quarterly report in three lines."
    plain = estimate_prompt_tokens({"model": "d", "input": text})
    assert plain == REPLY_PRIMING_TOKENS + TOKENS_PER_MESSAGE + text_tokens(text)
    items = {"input": [{"role": "user", "content": [{"type": "input_text", "text": text}]}]}
    assert estimate_prompt_tokens(items) == plain  # a one-message list counts as the string
    chat = {"messages": [{"role": "user", "content": text}]}
    assert estimate_prompt_tokens(chat) == plain  # and as the same chat message
    told = estimate_prompt_tokens({"input": text, "instructions": "Be brief."})
    assert told == plain + TOKENS_PER_MESSAGE + text_tokens("Be brief.")
    image = {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]}
    assert estimate_prompt_tokens(image) == REPLY_PRIMING_TOKENS + TOKENS_PER_MESSAGE + 85
    output = {"type": "function_call_output", "call_id": "c1", "output": "42 degrees"}
    counted = estimate_prompt_tokens({"input": [output]})
    expected = TOKENS_PER_MESSAGE + text_tokens(json.dumps(output, separators=(",", ":")))
    assert counted == REPLY_PRIMING_TOKENS + expected


def test_max_output_tokens_is_the_budget_and_responses_usage_is_read() -> None:
    assert requested_max_tokens({"max_output_tokens": 64}, 1000) == 64
    assert requested_max_tokens({"input": "x"}, 1000) == 1000
    usage = {
        "input_tokens": 40,
        "input_tokens_details": {"cached_tokens": 16},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 49,
    }
    assert usage_counts(usage) == (40, 9, 16)
    chat = {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 1},
    }
    assert usage_counts(chat) == (5, 2, 1)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"input": "x"}, {"input": "x", "max_output_tokens": 1000}),
        ({"input": "x", "max_output_tokens": 9000}, {"input": "x", "max_output_tokens": 2000}),
        ({"input": "x", "max_output_tokens": None}, {"input": "x", "max_output_tokens": 1000}),
        ({"input": "x", "max_output_tokens": 50}, {"input": "x", "max_output_tokens": 50}),
    ],
)
def test_governance_of_a_response_sets_max_output_tokens_never_max_tokens(
    body: dict[str, Any], expected: dict[str, Any]
) -> None:
    govern(body, ceiling=2000, default=1000, endpoint="responses")
    assert body == expected


def _writer(**body: Any) -> ResponseWriter:
    return ResponseWriter(
        response_id="resp_sim1", created=1_700_000_000, model="gpt-4o-mini",
        body={"model": "ptu", "input": "hi", **body}, input_tokens=8,
    )  # fmt: skip


def _stream(writer: ResponseWriter, tokens: list[str], *, truncated: bool = False) -> bytes:
    parts = [*writer.opening(), *writer.item_added(), *(writer.delta(t) for t in tokens)]
    parts += writer.closing("".join(tokens), len(tokens), truncated=truncated, completed_at=2)
    return b"".join(parts)


def test_the_simulated_body_and_events_are_the_sdk_types() -> None:
    body = _writer(max_output_tokens=20).body("completed", text="a b", output_tokens=2)
    parsed = Response.model_validate_json(json.dumps(body))  # strict JSON validation
    assert parsed.output_text == "a b" and parsed.max_output_tokens == 20
    assert parsed.usage is not None and parsed.usage.total_tokens == 10
    raw = _stream(_writer(), ["Hello", " there"])
    events = [e for e in raw.split(b"\n\n") if e]
    parsed_events = []
    for event in events:
        name, data = event.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: ")
        parsed_events.append(EVENTS.validate_json(data[6:]))
        assert parsed_events[-1].type == name[7:].decode()
    assert [e.sequence_number for e in parsed_events] == list(range(len(events)))
    final = parsed_events[-1]
    assert final.type == "response.completed" and final.response.output_text == "Hello there"
    cut = _stream(_writer(max_output_tokens=16), ["x"] * 16, truncated=True)
    last = EVENTS.validate_json(cut.rsplit(b"data: ", 1)[1])
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"


def test_the_sse_filter_reads_usage_from_the_final_event_and_forwards_everything() -> None:
    raw = _stream(_writer(), ["a", " b", " c"])
    sse = SSEFilter(strip_usage=False)
    out = b"".join(sse.feed(raw[i : i + 7]) for i in range(0, len(raw), 7)) + sse.flush()
    assert out == raw  # every event passes unchanged, split anywhere
    assert sse.usage is not None and usage_counts(sse.usage) == (8, 3, 0)
    assert sse.content_events == 3


def test_a_spilled_response_names_the_next_deployment_in_its_model() -> None:
    std = Target("std", "http://b/openai/deployments/std/chat/completions", False)
    ptu = Target("ptu", "http://a/openai/deployments/ptu/chat/completions", True, (std,))
    payload = b'{"model":"ptu","input":"hi"}'
    call = Call(ptu, payload, "", [], "r1", 3, 10, endpoint="responses")
    assert call.payload_for(ptu) is payload
    assert json.loads(call.payload_for(std)) == {"model": "std", "input": "hi"}
    chat = Call(ptu, b'{"messages":[]}', "?api-version=1", [], "r2", 3, 10)
    assert chat.payload_for(std) == chat.payload  # chat names its deployment in the path


async def test_the_worker_calls_the_v1_responses_api_of_the_resource() -> None:
    seen: list[httpx2.Request] = []
    answer = _writer().body("completed", text="done", output_tokens=1)

    def handler(req: httpx2.Request) -> httpx2.Response:
        seen.append(req)
        return httpx2.Response(
            200, json=answer, headers={"azure-openai-deployment-utilization": "10%"}
        )

    settings = Settings(
        azure_openai_endpoint="http://sim.test", azure_openai_api_key=SecretStr("k"),
        request_timeout_s=5,
    )  # fmt: skip
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    upstream = AzureUpstream.from_settings(settings, http_client=client)
    body = {"model": "x", "input": "hi", "max_output_tokens": 30, "stream": False, "store": False}
    response = await upstream.responses("dep-a", body, headers={"x-ms-client-request-id": "r1"})
    await upstream.close()
    (req,) = seen
    assert str(req.url) == "http://sim.test/openai/v1/responses"  # versionless v1 surface
    assert req.headers["api-key"] == "k" and req.headers["x-ptu-priority"] == "low"
    assert req.headers["x-ms-client-request-id"] == "r1"
    assert json.loads(req.content) == {
        "model": "dep-a", "input": "hi", "max_output_tokens": 30, "store": False,
    }  # fmt: skip
    assert response.body == answer and response.finish_reason == "completed"
    assert usage_counts(response.usage) == (8, 1, 0)
    assert response.utilisation_hint == pytest.approx(0.10)


async def test_a_queued_response_is_sent_to_the_responses_api_and_keeps_its_shape() -> None:
    rig = make_rig(upstream=FakeUpstream())
    message = request("r1")
    body = {"input": "hello " * 10, "max_output_tokens": 50}
    await rig.put(message.model_copy(update={"body": body, "endpoint": "responses"}))
    await rig.put(request("r2"))
    assert await _run_one(rig) == "completed"
    assert await _run_one(rig) == "completed"
    assert rig.upstream.endpoints == ["responses"]  # r2 went to chat completions
    assert (await _result(rig, "r1"))["status"] == "completed"
    admit = rig.tokens.events[0]
    assert admit.max_tokens == 50 and admit.prompt_tokens == estimate_prompt_tokens(body)


def test_the_endpoint_travels_in_the_message_only_when_it_is_not_chat() -> None:
    chat = request("r1")
    assert "endpoint" not in json.loads(chat.model_dump_json())
    moved = chat.model_copy(update={"endpoint": "responses"})
    assert QueuedRequest.model_validate_json(moved.model_dump_json()).endpoint == "responses"


async def test_the_v1_client_keeps_the_entra_token_of_the_resource() -> None:
    seen: list[httpx2.Request] = []
    answer = _writer().body("completed", text="done", output_tokens=1)

    def handler(req: httpx2.Request) -> httpx2.Response:
        seen.append(req)
        return httpx2.Response(200, json=answer)

    async def token() -> str:
        return "entra-token"

    client = openai.AsyncAzureOpenAI(
        azure_endpoint="http://res.test", azure_ad_token_provider=token, api_version="2024-10-21",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)), max_retries=0,
    )  # fmt: skip
    upstream = AzureUpstream(client, timeout_s=5)
    await upstream.responses("dep", {"input": "hi"})
    await upstream.chat("dep", {"messages": [{"role": "user", "content": "hi"}]})
    await upstream.close()
    assert [str(r.url) for r in seen] == [
        "http://res.test/openai/v1/responses",
        "http://res.test/openai/deployments/dep/chat/completions?api-version=2024-10-21",
    ]
    assert {r.headers["authorization"] for r in seen} == {"Bearer entra-token"}

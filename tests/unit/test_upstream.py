"""AzureUpstream against an in-process httpx2 transport: wire shape and error mapping."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from pydantic import SecretStr

from orchestrator.calls.signals import parse_utilisation
from orchestrator.core.errors import ConfigError, UpstreamError, UpstreamThrottled, UpstreamTimeout
from orchestrator.core.retry import parse_retry_after
from orchestrator.core.settings import Settings
from orchestrator.worker.upstream import AzureUpstream

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    "prompt_filter_results": [],
}


def _upstream(handler: Callable[[httpx2.Request], httpx2.Response]) -> AzureUpstream:
    settings = Settings(
        azure_openai_endpoint="http://sim.test",
        azure_openai_api_key=SecretStr("k"),
        request_timeout_s=5,
    )
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return AzureUpstream.from_settings(settings, http_client=client)


async def test_success_sends_azure_shape_with_priority_and_reads_headers() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(
            200,
            json=COMPLETION,
            headers={"azure-openai-deployment-utilization": "42.5%", "apim-request-id": "r1"},
        )

    upstream = _upstream(handler)
    body = {
        "model": "ignored",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 20,
        "stream": True,
        "temperature": 0.1,
        "x_custom": 1,
    }
    response = await upstream.chat("dep-a", body, headers={"x-request-id": "abc"})
    await upstream.close()

    (request,) = seen
    assert request.url.path == "/openai/deployments/dep-a/chat/completions"
    assert request.url.params["api-version"] == "2024-10-21"
    assert request.headers["x-ptu-priority"] == "low"
    assert request.headers["api-key"] == "k"
    assert request.headers["x-request-id"] == "abc"
    sent = json.loads(request.content)
    assert sent["messages"] == body["messages"]
    assert sent["max_tokens"] == 20 and sent["temperature"] == 0.1 and sent["x_custom"] == 1
    assert "stream" not in sent
    assert response.body == COMPLETION  # Azure-only fields survive
    assert response.usage == COMPLETION["usage"]
    assert response.finish_reason == "stop"
    assert response.utilisation_hint == pytest.approx(0.425)
    assert response.request_id == "r1"


def _failing(status: int, headers: dict[str, str] | None = None, body: Any = None) -> AzureUpstream:
    payload = body if body is not None else {"error": {"code": str(status), "message": "m"}}
    return _upstream(lambda r: httpx2.Response(status, json=payload, headers=headers or {}))


async def test_429_maps_to_throttled_with_retry_after_ms() -> None:
    upstream = _failing(429, {"retry-after-ms": "1500", "retry-after": "2"})
    with pytest.raises(UpstreamThrottled) as info:
        await upstream.chat("d", {"messages": []})
    assert info.value.status_code == 429
    assert info.value.retry_after_s == pytest.approx(1.5)
    assert info.value.body == {"error": {"code": "429", "message": "m"}}


async def test_429_falls_back_to_retry_after_seconds() -> None:
    with pytest.raises(UpstreamThrottled) as info:
        await _failing(429, {"retry-after": "3"}).chat("d", {"messages": []})
    assert info.value.retry_after_s == pytest.approx(3.0)


async def test_408_maps_to_timeout() -> None:
    body = {"error": {"code": "Timeout", "message": "The operation was timeout."}}
    with pytest.raises(UpstreamTimeout) as info:
        await _failing(408, body=body).chat("d", {"messages": []})
    assert info.value.status_code == 408 and info.value.retryable
    assert info.value.body == body


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (400, False)])
async def test_other_statuses_keep_status_and_body(status: int, retryable: bool) -> None:
    with pytest.raises(UpstreamError) as info:
        await _failing(status).chat("d", {"messages": []})
    assert type(info.value) is UpstreamError
    assert info.value.status_code == status
    assert info.value.retryable is retryable
    assert info.value.body == {"error": {"code": str(status), "message": "m"}}


async def test_non_json_error_body_is_wrapped() -> None:
    upstream = _upstream(lambda r: httpx2.Response(502, text="bad gateway"))
    with pytest.raises(UpstreamError) as info:
        await upstream.chat("d", {"messages": []})
    assert info.value.body == {"error": {"code": "502", "message": "bad gateway"}}


async def test_transport_timeout_and_connection_errors() -> None:
    def timeout(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("slow", request=request)

    def refused(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    with pytest.raises(UpstreamTimeout) as info:
        await _upstream(timeout).chat("d", {"messages": []})
    assert info.value.status_code == 408
    with pytest.raises(UpstreamError) as info2:
        await _upstream(refused).chat("d", {"messages": []})
    assert info2.value.status_code == 503 and info2.value.retryable


def test_from_settings_needs_an_endpoint() -> None:
    with pytest.raises(ConfigError, match="PTU_AZURE_OPENAI_ENDPOINT"):
        AzureUpstream.from_settings(Settings())


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "x", "retry-after": "4"}, 4.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({"retry-after": "-1"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


@pytest.mark.parametrize(
    ("raw", "expected"), [("42.5%", 0.425), ("110%", 1.1), ("n/a", None), (None, None)]
)
def test_parse_utilisation(raw: str | None, expected: float | None) -> None:
    result = parse_utilisation(raw)
    assert result == (pytest.approx(expected) if expected is not None else None)

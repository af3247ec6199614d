"""What crosses to and from an upstream: the header allow-list each way, and no cookie jar."""

from __future__ import annotations

import httpx2
import pytest
from pydantic import SecretStr

from ingress.chat.headers import forwarded_headers, passed_headers
from ingress.chat.targets import make_client
from orchestrator.calls.no_cookies import NoCookieJar
from orchestrator.core.settings import Settings
from orchestrator.worker.upstream import AzureUpstream

COMPLETION = {
    "id": "c",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value", "forwarded"),
    [
        (b"accept", b"application/json", True),
        (b"user-agent", b"AsyncOpenAI/Python 1.0", True),
        (b"x-stainless-lang", b"python", True),
        (b"x-stainless-retry-count", b"0", True),
        (b"openai-beta", b"assistants=v2", True),
        (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", True),
        (b"x-ms-client-request-id", b"r-1", True),
        (b"x-ms-useragent", b"sdk", True),
        (b"x-sim-completion-tokens", b"5", True),  # the simulator's knob; Azure ignores it
        # credentials of any kind
        (b"api-key", b"client-key", False),
        (b"authorization", b"Bearer t", False),
        (b"ocp-apim-subscription-key", b"sub", False),
        (b"x-api-key", b"k", False),
        (b"cookie", b"session=1", False),
        (b"proxy-authorization", b"Basic x", False),
        # identities and addresses a front added
        (b"x-ms-client-principal-name", b"alice@example.com", False),
        (b"x-ms-client-principal-id", b"1", False),
        (b"x-forwarded-for", b"10.0.0.1", False),
        (b"x-forwarded-host", b"api.example.com", False),
        (b"forwarded", b"for=10.0.0.1", False),
        (b"x-real-ip", b"10.0.0.1", False),
        # the deployment's to choose, not the client's
        (b"x-ms-spillover-deployment", b"paygo", False),
        # hop-by-hop and what the ingress writes itself
        (b"connection", b"keep-alive", False),
        (b"keep-alive", b"timeout=5", False),
        (b"te", b"trailers", False),
        (b"upgrade", b"h2c", False),
        (b"transfer-encoding", b"chunked", False),
        (b"host", b"ingress", False),
        (b"content-length", b"10", False),
        (b"content-type", b"text/plain", False),
        (b"accept-encoding", b"gzip", False),
        # the ingress's own
        (b"x-priority", b"high", False),
        (b"x-reply-key", b"k", False),
        (b"x-ptu-ttl-s", b"3", False),
        (b"prefer", b"wait=5", False),
        # anything not on the list
        (b"x-custom-anything", b"1", False),
    ],
)
def test_request_headers_on_the_allow_list_only(name: bytes, value: bytes, forwarded: bool) -> None:
    assert forwarded_headers([(name, value)]) == ([(name, value)] if forwarded else [])


def test_headers_a_connection_header_names_are_not_forwarded_either_way() -> None:
    raw = [
        (b"connection", b"close, X-Stainless-Lang , user-agent"),
        (b"x-stainless-lang", b"python"),
        (b"user-agent", b"sdk"),
        (b"accept", b"application/json"),
    ]
    assert forwarded_headers(raw) == [(b"accept", b"application/json")]
    back = [(b"Connection", b"x-ms-region"), (b"x-ms-region", b"eu"), (b"apim-request-id", b"1")]
    assert passed_headers(back) == [(b"apim-request-id", b"1")]


@pytest.mark.parametrize(
    ("name", "passed"),
    [
        (b"retry-after-ms", True),
        (b"retry-after", True),
        (b"Azure-OpenAI-Deployment-Utilization", True),
        (b"x-ratelimit-remaining-tokens", True),
        (b"apim-request-id", True),
        (b"x-ms-deployment-name", True),
        (b"content-type", True),
        (b"Set-Cookie", False),
        (b"set-cookie2", False),
        (b"connection", False),
        (b"keep-alive", False),
        (b"proxy-authenticate", False),
        (b"trailer", False),
        (b"transfer-encoding", False),
        (b"upgrade", False),
        (b"content-length", False),
        (b"content-encoding", False),
        (b"date", False),
        (b"server", False),
    ],
)
def test_response_headers_drop_cookies_and_hop_by_hop(name: bytes, passed: bool) -> None:
    assert passed_headers([(name, b"v")]) == ([(name.lower(), b"v")] if passed else [])


def _set_cookie_upstream(cookies_sent: list[str | None]) -> httpx2.MockTransport:
    def handler(request: httpx2.Request) -> httpx2.Response:
        cookies_sent.append(request.headers.get("cookie"))
        return httpx2.Response(
            200, json=COMPLETION, headers={"set-cookie": "affinity=tenant-a; Path=/"}
        )

    return httpx2.MockTransport(handler)


async def test_the_jar_keeps_no_cookie_across_calls() -> None:
    sent: list[str | None] = []
    async with httpx2.AsyncClient(
        cookies=NoCookieJar(), transport=_set_cookie_upstream(sent)
    ) as client:
        for _ in range(2):
            (await client.get("http://upstream.test/x")).raise_for_status()
        assert len(client.cookies.jar) == 0
    assert sent == [None, None]


async def test_the_ingress_client_has_the_jar_that_keeps_nothing() -> None:
    client = make_client(Settings())
    try:
        assert isinstance(client.cookies.jar, NoCookieJar)
    finally:
        await client.aclose()


async def test_the_worker_sdk_client_sends_no_cookie_it_was_given() -> None:
    settings = Settings(
        azure_openai_endpoint="http://sim.test", azure_openai_api_key=SecretStr("k")
    )
    upstream = AzureUpstream.from_settings(settings)  # the SDK client the worker builds
    http = upstream._client._client
    assert isinstance(http.cookies.jar, NoCookieJar)
    sent: list[str | None] = []
    http._transport = _set_cookie_upstream(sent)  # the same client, answered in-process
    body = {"messages": [{"role": "user", "content": "hi"}]}
    for _ in range(2):
        await upstream.chat("dep", body)
    await upstream.close()
    assert sent == [None, None]

"""The high-priority proxy against a mock transport: spillover, events, headers, errors."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from azure.core.credentials import AccessToken
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from ingress.chat.accounting import Accounting
from ingress.chat.call import Call
from ingress.chat.credentials import ApiKeyAuth, EntraAuth
from ingress.chat.proxy import Proxy
from ingress.chat.spillover import SpilloverPolicy
from ingress.chat.targets import Target
from ingress.chat.token_events import TokenEvents
from ingress.http.errors import ApiError
from ingress.metrics import IngressMetrics
from orchestrator.core.entra import COGNITIVE_SERVICES_SCOPE, EntraTokens
from orchestrator.core.schemas import TokenEvent

STD = Target("std", "http://up/openai/deployments/std/chat/completions", False)
PTU = Target("ptu", "http://up/openai/deployments/ptu/chat/completions", True, (STD,))
PTU_ALONE = Target("ptu", PTU.url, True)
OK_BODY = {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 5}}


class Sink:
    def __init__(self) -> None:
        self.events: list[TokenEvent] = []

    async def record(self, event: TokenEvent) -> None:
        self.events.append(event)


class Upstream:
    """Answers from a script of (status, headers) per deployment call, in order."""

    def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
        self.script = list(script)
        self.seen: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.seen.append(request)
        status, headers = self.script.pop(0)
        body = OK_BODY if status == 200 else {"error": {"code": str(status), "message": "x"}}
        return httpx2.Response(status, json=body, headers=headers)

    @property
    def deployments(self) -> list[str]:
        return [r.url.path.split("/")[3] for r in self.seen]


def _proxy(up: Upstream, sink: Sink, wait_ms: int = 0) -> tuple[Proxy, list[float]]:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(up))
    events = TokenEvents(sink, clock=lambda: 1000.0)
    proxy = Proxy(
        client,
        ApiKeyAuth("key"),
        events,
        IngressMetrics(),
        policy=SpilloverPolicy(wait_ms, sleep=sleep),
    )
    return proxy, slept


def _call(target: Target) -> Call:
    return Call(
        target=target,
        payload=b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":100}',
        query="?api-version=2024-10-21",
        client_headers=[(b"x-sim-completion-tokens", b"5"), (b"api-key", b"client-secret")],
        request_id="req_1",
        prompt_tokens=10,
        max_tokens=100,
    )


async def _forward(proxy: Proxy, call: Call) -> tuple[int, dict[str, str], Any]:
    resp = await proxy.forward(call)
    await proxy.recorder.events.drain()
    return resp.status_code, dict(resp.headers), json.loads(bytes(resp.body))


async def test_plain_call_passes_status_headers_and_records_events() -> None:
    up = Upstream([(200, {"azure-openai-deployment-utilization": "42.5%"})])
    sink = Sink()
    proxy, _ = _proxy(up, sink)
    status, headers, body = await _forward(proxy, _call(PTU))
    assert status == 200
    assert headers["azure-openai-deployment-utilization"] == "42.5%"
    assert body == OK_BODY
    sent = up.seen[0]
    assert sent.headers["api-key"] == "key"  # the resource key, never the client's
    assert sent.headers["x-ptu-priority"] == "high"
    assert sent.headers["x-sim-completion-tokens"] == "5"
    assert sent.url.query == b"api-version=2024-10-21"
    assert [(e.phase, e.prompt_tokens, e.max_tokens, e.completion_tokens) for e in sink.events] == [
        ("admit", 10, 100, 0),
        ("complete", 11, 100, 5),
    ]
    # the deployment's header travels with the complete event, for the calibration
    assert [e.utilisation for e in sink.events] == [None, 0.425]
    assert sink.events[1].retry_after_ms is None


async def test_429_without_spillover_reaches_the_client_with_retry_headers() -> None:
    up = Upstream([(429, {"retry-after-ms": "1500", "retry-after": "2"})])
    sink = Sink()
    proxy, _ = _proxy(up, sink)
    status, headers, _ = await _forward(proxy, _call(PTU_ALONE))
    assert status == 429
    assert headers["retry-after-ms"] == "1500"
    assert headers["retry-after"] == "2"
    assert [(e.phase, e.completion_tokens, e.prompt_tokens) for e in sink.events] == [
        ("admit", 0, 10),
        ("complete", 0, 0),
    ]
    assert sink.events[1].retry_after_ms == 1500  # ">= 100 % for 1.5 s"


async def test_a_stream_is_observed_at_its_first_byte() -> None:
    def sse(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200,
            content=b'data: {"choices":[]}\n\ndata: [DONE]\n\n',
            headers={"content-type": "text/event-stream",
                     "azure-openai-deployment-utilization": "61%"},
        )  # fmt: skip

    sink = Sink()
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(sse))
    events = TokenEvents(sink, clock=lambda: 1000.0)
    proxy = Proxy(client, ApiKeyAuth("key"), events, IngressMetrics())
    call = _call(PTU)
    call.stream = True
    await proxy.forward(call)  # the headers arrived: the stream has not been relayed yet
    await events.drain()
    assert [(e.phase, e.utilisation) for e in sink.events] == [("admit", None), ("observe", 0.61)]


async def test_429_spills_to_the_standard_deployment() -> None:
    up = Upstream([(429, {"retry-after-ms": "1500"}), (200, {"x-ratelimit-remaining-tokens": "9"})])
    sink = Sink()
    proxy, slept = _proxy(up, sink, wait_ms=100)
    status, headers, _ = await _forward(proxy, _call(PTU))
    assert status == 200
    assert up.deployments == ["ptu", "std"]
    assert headers["x-ptu-spillover"] == "std"
    assert headers["x-ratelimit-remaining-tokens"] == "9"
    assert slept == []
    # the PTU's admission was taken back; the standard deployment is not in the estimate
    assert [e.phase for e in sink.events] == ["admit", "complete"]
    assert all(e.deployment == "ptu" for e in sink.events)


async def test_short_retry_after_waits_and_retries_the_ptu_once() -> None:
    up = Upstream([(429, {"retry-after-ms": "80"}), (200, {})])
    proxy, slept = _proxy(up, Sink(), wait_ms=100)
    status, headers, _ = await _forward(proxy, _call(PTU))
    assert status == 200
    assert up.deployments == ["ptu", "ptu"]
    assert slept == [0.08]
    assert "x-ptu-spillover" not in headers


async def test_retry_throttled_again_spills() -> None:
    up = Upstream([(429, {"retry-after-ms": "10"}), (429, {"retry-after-ms": "10"}), (200, {})])
    proxy, slept = _proxy(up, Sink(), wait_ms=100)
    status, _, _ = await _forward(proxy, _call(PTU))
    assert status == 200
    assert up.deployments == ["ptu", "ptu", "std"]
    assert slept == [0.01]


async def test_spillover_throttled_too_returns_its_429() -> None:
    up = Upstream([(429, {"retry-after-ms": "5000"}), (429, {"retry-after": "7"})])
    proxy, _ = _proxy(up, Sink())
    status, headers, _ = await _forward(proxy, _call(PTU))
    assert status == 429
    assert headers["retry-after"] == "7"
    assert headers["x-ptu-spillover"] == "std"


async def test_connection_failure_is_502_and_takes_the_admission_back() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused")

    sink = Sink()
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(refuse))
    events = TokenEvents(sink)
    proxy = Proxy(client, ApiKeyAuth("k"), events, IngressMetrics())
    with pytest.raises(ApiError) as info:
        await proxy.forward(_call(PTU))
    await events.drain()
    assert info.value.status == 502
    assert [e.phase for e in sink.events] == ["admit", "complete"]


async def test_standard_target_records_no_events() -> None:
    up = Upstream([(200, {})])
    sink = Sink()
    proxy, _ = _proxy(up, sink)
    status, _, _ = await _forward(proxy, _call(STD))
    assert status == 200
    assert sink.events == []


class FakeCredential:
    """An async credential whose tokens live `lifetime_s` from now (real wall clock)."""

    def __init__(self, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        self.calls = 0
        self.scopes: list[tuple[str, ...]] = []
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        self.scopes.append(scopes)
        return AccessToken(f"t{self.calls}", int(time.time() + self.lifetime_s))

    async def close(self) -> None:
        self.closed = True


async def test_entra_token_is_cached_while_it_is_far_from_expiry() -> None:
    cred = FakeCredential(lifetime_s=3600)
    auth = EntraAuth(EntraTokens(cred))  # type: ignore[arg-type]
    assert await auth.headers() == {"authorization": "Bearer t1"}
    assert await auth.headers() == {"authorization": "Bearer t1"}
    assert cred.calls == 1
    assert cred.scopes == [(COGNITIVE_SERVICES_SCOPE,)]
    await auth.close()
    assert cred.closed


async def test_entra_token_is_refreshed_shortly_before_expiry() -> None:
    cred = FakeCredential(lifetime_s=60)  # inside azure-core's 5-minute refresh window
    auth = EntraAuth(EntraTokens(cred))  # type: ignore[arg-type]
    assert await auth.headers() == {"authorization": "Bearer t1"}
    assert await auth.headers() == {"authorization": "Bearer t2"}
    assert cred.calls == 2


async def test_complete_waits_for_its_admit() -> None:
    order: list[str] = []

    class SlowSink:
        async def record(self, event: TokenEvent) -> None:
            if event.phase == "admit":
                import asyncio

                await asyncio.sleep(0)
                await asyncio.sleep(0)
            order.append(event.phase)

    events = TokenEvents(SlowSink())
    admitted = events.admit("r", "ptu", 5, 10)
    events.complete(admitted, "r", "ptu", 10, {"prompt_tokens": 5, "completion_tokens": 1})
    await events.drain()
    assert order == ["admit", "complete"]


async def test_a_failing_sink_never_fails_the_call() -> None:
    class Broken:
        async def record(self, event: TokenEvent) -> None:
            raise RuntimeError("redis down")

    events = TokenEvents(Broken())
    events.complete(events.admit("r", "ptu", 5, 10), "r", "ptu", 10, None)
    await events.drain()
    assert "pending=0" in repr(events)


def test_usage_is_read_from_the_end_of_the_document() -> None:
    from ingress.chat.sniff import usage_of as _usage_of

    doc = {
        "choices": [{"message": {"content": 'a "usage": {"x": 1} in text'}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }
    assert _usage_of(json.dumps(doc).encode()) == {"prompt_tokens": 3, "completion_tokens": 4}
    assert _usage_of(b'{"choices": []}') is None
    assert _usage_of(b'{"usage": null}') is None
    assert _usage_of(b'{"usage": {"prompt_tokens": 1') is None


def test_an_unparseable_upstream_url_is_400_not_500() -> None:
    proxy, _ = _proxy(Upstream([]), Sink())
    assert str(proxy.transport.url(PTU, "?api-version=1")).endswith("?api-version=1")
    with pytest.raises(ApiError) as info:
        proxy.transport.url(PTU, "?x=" + "a" * 70_000)
    assert info.value.status == 400 and info.value.code == "invalid_query"


async def test_a_streaming_request_is_relayed_as_sse_whatever_the_upstream_content_type() -> None:
    """Some upstreams (e.g. microsoft/aoai-api-simulator) stream without `text/event-stream`."""
    events = [
        b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n',
        b"data: [DONE]\n\n",
    ]

    class Events(httpx2.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for event in events:
                yield event

    def upstream(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, stream=Events(), headers={"content-type": "text/plain"})

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(upstream))
    sink = Sink()
    events_out = TokenEvents(sink, clock=lambda: 1000.0)
    proxy = Proxy(client, ApiKeyAuth("key"), events_out, IngressMetrics())
    call = _call(PTU_ALONE)
    call.stream = True
    resp = await proxy.forward(call)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    await resp({"type": "http"}, receive, send)
    await proxy.recorder.events.drain()
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"] == b"text/event-stream"
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"".join(events)
    assert [e.phase for e in sink.events] == ["admit", "complete"]
    assert sink.events[-1].completion_tokens == 1


EU = Target("eu", "http://eu/openai/deployments/eu/chat/completions", False)
CHAIN = Target("ptu", PTU.url, True, (STD, EU))


@pytest.mark.parametrize(
    ("script", "used", "path"),
    [
        ([(500, {}), (200, {})], "std", ["ptu", "std"]),
        ([(503, {}), (408, {}), (200, {})], "eu", ["ptu", "std", "eu"]),
        ([(401, {}), (200, {})], "std", ["ptu", "std"]),
        ([(400, {})], "ptu", ["ptu"]),  # the caller's mistake: no other deployment fixes it
        ([(500, {}), (502, {}), (504, {})], "eu", ["ptu", "std", "eu"]),  # the last one's answer
    ],
)
async def test_failures_move_along_the_spillover_chain(
    script: list[tuple[int, dict[str, str]]], used: str, path: list[str]
) -> None:
    up = Upstream(script)
    proxy, _ = _proxy(up, Sink())
    status, headers, _ = await _forward(proxy, _call(CHAIN))
    assert up.deployments == path
    assert status == script[-1][0]
    assert headers["x-ptu-deployment"] == used


async def test_timeout_and_refused_connection_spill_over() -> None:
    seen: list[str] = []

    def flaky(request: httpx2.Request) -> httpx2.Response:
        name = request.url.path.split("/")[3]
        seen.append(name)
        if name == "ptu":
            raise httpx2.ReadTimeout("slow")
        if name == "std":
            raise httpx2.ConnectError("refused")
        return httpx2.Response(200, json=OK_BODY)

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(flaky))
    metrics = IngressMetrics()
    proxy = Proxy(client, ApiKeyAuth("k"), TokenEvents(Sink()), metrics)
    resp = await proxy.forward(_call(CHAIN))
    assert resp.status_code == 200 and resp.headers["x-ptu-deployment"] == "eu"
    assert seen == ["ptu", "std", "eu"]
    text = metrics.render().decode()
    assert 'deployment="ptu",kind="chain",reason="timeout",to="std"' in text
    assert 'deployment="std",kind="chain",reason="connection",to="eu"' in text


async def test_a_stream_broken_before_its_first_byte_spills_over() -> None:
    class Broken(httpx2.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            raise httpx2.ReadError("reset")
            yield b""

    class Events(httpx2.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            yield b'data: {"choices":[]}\n\ndata: [DONE]\n\n'

    def answer(request: httpx2.Request) -> httpx2.Response:
        if request.url.path.split("/")[3] == "ptu":
            return httpx2.Response(
                200, headers={"content-type": "text/event-stream"}, stream=Broken()
            )
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=Events())

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
    proxy = Proxy(client, ApiKeyAuth("k"), TokenEvents(Sink()), IngressMetrics())
    call = _call(CHAIN)
    call.stream = True
    resp = await proxy.forward(call)
    assert dict(resp.headers)["x-ptu-deployment"] == "std"


NATIVE_SPILL = {"x-ms-spillover-from-deployment": "ptu", "x-ms-deployment-name": "paygo"}


async def test_a_natively_spilled_answer_is_charged_and_named_as_the_standard_deployments() -> None:
    up = Upstream([(200, NATIVE_SPILL)])
    sink = Sink()
    metrics = IngressMetrics(deployments=["ptu", "paygo"])
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(up))
    events = TokenEvents(sink, clock=lambda: 1000.0)
    proxy = Proxy(client, ApiKeyAuth("key"), events, metrics, accounting=Accounting(metrics, None))
    with capture_logs() as logs:
        status, headers, _ = await _forward(proxy, _call(PTU_ALONE))
    assert status == 200 and up.deployments == ["ptu"]  # one round trip
    assert headers["x-ptu-deployment"] == "paygo" and headers["x-ptu-spillover"] == "paygo"
    # the PTU's estimate learns it was full, and is charged nothing for the spilled call
    _, complete = sink.events
    assert complete.deployment == "ptu" and complete.spilled
    assert (complete.prompt_tokens, complete.completion_tokens) == (0, 0)
    (access,) = [e for e in logs if e["event"] == "access"]
    assert (access["deployment"], access["spillover"]) == ("ptu", "paygo")
    text = generate_latest(metrics.registry).decode()
    assert 'deployment="paygo",kind="completion",priority="high",tenant="default"} 5.0' in text
    assert 'ptu_tenant_tokens_total{deployment="ptu"' not in text


async def test_a_natively_spilled_stream_charges_the_standard_deployment() -> None:
    def sse(request: httpx2.Request) -> httpx2.Response:
        body = (
            b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
            b'data: {"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":5}}\n\n'
            b"data: [DONE]\n\n"
        )
        return httpx2.Response(
            200, content=body, headers={"content-type": "text/event-stream", **NATIVE_SPILL}
        )

    sink = Sink()
    metrics = IngressMetrics(deployments=["ptu", "paygo"])
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(sse))
    events = TokenEvents(sink, clock=lambda: 1000.0)
    proxy = Proxy(client, ApiKeyAuth("key"), events, metrics, accounting=Accounting(metrics, None))
    call = _call(PTU_ALONE)
    call.stream = True
    resp = await proxy.forward(call)
    assert dict(resp.headers)["x-ptu-deployment"] == "paygo"
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    await resp({"type": "http"}, receive, send)
    await events.drain()
    assert [(e.phase, e.spilled, e.completion_tokens) for e in sink.events] == [
        ("admit", False, 0),
        ("observe", True, 0),
        ("complete", False, 0),
    ]
    text = generate_latest(metrics.registry).decode()
    assert 'deployment="paygo",kind="completion",priority="high",tenant="default"} 5.0' in text


NATIVE = Target("ptu", PTU.url, True, (STD, EU), native="std")
SPILL_FAILED = {"x-ms-spillover-from-deployment": "ptu", "x-ms-spillover-error": "429"}


async def test_a_native_entry_is_asked_of_azure_and_a_clients_own_choice_is_dropped() -> None:
    up = Upstream([(200, {"x-ms-spillover-from-deployment": "ptu", "x-ms-deployment-name": "std"})])
    metrics = IngressMetrics()
    proxy = Proxy(
        httpx2.AsyncClient(transport=httpx2.MockTransport(up)), ApiKeyAuth("k"),
        TokenEvents(Sink()), metrics,
    )  # fmt: skip
    call = _call(NATIVE)
    call.client_headers = [*call.client_headers, (b"x-ms-spillover-deployment", b"eu")]
    resp = await proxy.forward(call)
    assert resp.status_code == 200 and resp.headers["x-ptu-deployment"] == "std"
    assert up.deployments == ["ptu"]  # one round trip
    assert up.seen[0].headers.get_list("x-ms-spillover-deployment") == ["std"]
    text = metrics.render().decode()
    assert (
        'ptu_ingress_spillover_total{deployment="ptu",kind="native",reason="azure",to="std"}'
        in text
    )
    # without a native entry the client's header goes nowhere
    up = Upstream([(200, {})])
    proxy, _ = _proxy(up, Sink())
    call = _call(PTU)
    call.client_headers = [*call.client_headers, (b"x-ms-spillover-deployment", b"std")]
    await _forward(proxy, call)
    assert "x-ms-spillover-deployment" not in up.seen[0].headers


@pytest.mark.parametrize(
    ("script", "path", "served"),
    [
        # Azure tried the native entry and it failed too: our walk skips it
        ([(429, SPILL_FAILED), (200, {})], ["ptu", "eu"], "eu"),
        # Azure spills nothing on a 408: our walk calls the native entry itself
        ([(408, {}), (200, {})], ["ptu", "std"], "std"),
        # the PTU's 429 without a spill attempt (no such header) moves on to the entry too
        ([(429, {}), (200, {})], ["ptu", "std"], "std"),
    ],
)
async def test_our_walk_stays_for_what_azure_does_not_spill(
    script: list[tuple[int, dict[str, str]]], path: list[str], served: str
) -> None:
    up = Upstream(script)
    proxy, _ = _proxy(up, Sink())
    status, headers, _ = await _forward(proxy, _call(NATIVE))
    assert (status, up.deployments, headers["x-ptu-deployment"]) == (200, path, served)


async def test_when_azure_tried_the_only_entry_the_ptus_answer_is_the_clients() -> None:
    up = Upstream([(429, {**SPILL_FAILED, "retry-after-ms": "900"})])
    proxy, _ = _proxy(up, Sink())
    status, headers, _ = await _forward(
        proxy, _call(Target("ptu", PTU.url, True, (STD,), native="std"))
    )
    assert (status, up.deployments, headers["retry-after-ms"]) == (429, ["ptu"], "900")


async def test_a_chain_entry_with_a_service_tier_asks_for_it() -> None:
    tiered = Target(
        "ptu", PTU.url, True, (Target(STD.name, STD.url, False, service_tier="priority"),)
    )
    up = Upstream([(429, {}), (200, {})])
    proxy, _ = _proxy(up, Sink())
    await _forward(proxy, _call(tiered))
    first, second = (json.loads(r.content) for r in up.seen)
    assert "service_tier" not in first and second["service_tier"] == "priority"

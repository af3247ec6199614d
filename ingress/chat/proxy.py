"""High priority: straight to the PTU deployment, spilling over along its chain on failure.

One shared pooled client; the request body is forwarded as received unless
governance or the usage option changed it; status and headers (retry-after-ms,
retry-after, azure-openai-deployment-utilization, x-ratelimit-*) come back as the
deployment sent them, plus `x-ptu-deployment` naming the deployment that answered.

Spillover, for a deployment with a `spillover` chain (one or more deployments, on
any resource): a 429, 408, 5xx, 401/403, timeout or connection error moves the call
to the next deployment of the chain; for a stream, only before its first bytes are
relayed (they are read before the client sees the status). On a 429 with
`retry-after-ms` <= `PTU_SPILLOVER_WAIT_MS` the ingress first waits and tries the same
deployment once more. A deployment whose circuit breaker is open is skipped without a
call (reason `circuit_open`); the last deployment of the chain is always called, so
without spillover the client gets what the PTU answers. Every hop is counted in
`ptu_ingress_spillover_total{deployment,to,reason}`.

A Responses API call goes to the resource's `/openai/v1/responses` (versionless; the
deployment is the body's `model`, rewritten to the spillover deployment's name when
the call moves on); its usage is read from the response's `usage`, for a stream from
the final `response.completed` event.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2
import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ingress.chat.accounting import Accounting
from ingress.chat.credentials import UpstreamAuth
from ingress.chat.sse import SSEFilter
from ingress.chat.targets import Target
from ingress.chat.token_events import TokenEvents
from ingress.http.errors import ApiError
from ingress.metrics import IngressMetrics
from orchestrator.breaker.shared import SharedBreaker
from orchestrator.calls.outcome import NoAnswer, Outcome, breaker_verdict, finish_reason
from orchestrator.calls.signals import Signals, read_signals
from orchestrator.core.schemas import PRIORITY_LABEL_HEADER, Endpoint
from orchestrator.telemetry.base import NOOP_CALL, OFF, LLMCall, Telemetry

log = structlog.get_logger(__name__)

RawHeaders = Sequence[tuple[bytes, bytes]]
_DROP_REQUEST = frozenset(
    b"host content-length content-type api-key authorization connection keep-alive "
    b"transfer-encoding te trailer upgrade expect cookie proxy-authorization "
    b"proxy-connection accept-encoding x-priority x-reply-key".split()
)
_FIXED_HEADERS = (
    (b"content-type", b"application/json"),
    (PRIORITY_LABEL_HEADER.encode(), b"high"),
)
DEPLOYMENT_HEADER = b"x-ptu-deployment"
"""Response header naming the deployment that answered (the target or a spillover)."""
_URL_CACHE_SIZE = 256
_DECODER = json.JSONDecoder()
_FINISH_REASON = re.compile(rb'"finish_reason"\s*:\s*"([A-Za-z_]{1,40})"')
_DROP_RESPONSE = frozenset(
    b"connection keep-alive transfer-encoding content-length content-encoding "
    b"date server upgrade trailer set-cookie".split()
)


@dataclass(slots=True)
class Call:
    """One high-priority chat completion (or response) on its way upstream."""

    target: Target
    payload: bytes
    query: str
    client_headers: RawHeaders
    request_id: str
    prompt_tokens: int
    max_tokens: int
    stream: bool = False
    strip_usage: bool = False
    tenant: str = "default"
    priority: str = "high"
    endpoint: Endpoint = "chat/completions"
    span: LLMCall = NOOP_CALL
    """The GenAI client span of the call (ended with its outcome in `Proxy.ended`)."""

    def payload_for(self, target: Target) -> bytes:
        """The body sent to `target`: a response names its deployment in `model`."""
        if self.endpoint != "responses" or target is self.target:
            return self.payload
        body = json.loads(self.payload)
        body["model"] = target.name
        return json.dumps(body, separators=(",", ":")).encode()


def forwarded_headers(raw: RawHeaders) -> list[tuple[bytes, bytes]]:
    """The client's headers minus hop-by-hop, credentials and the ingress's own."""
    return [(k, v) for k, v in raw if k not in _DROP_REQUEST and not k.startswith(b"x-ptu-")]


def passed_headers(raw: RawHeaders) -> list[tuple[bytes, bytes]]:
    """The deployment's response headers the client gets back (names lowercased, as ASGI wants)."""
    out = []
    for k, v in raw:
        name = k.lower()
        if name not in _DROP_RESPONSE:
            out.append((name, v))
    return out


class _Failed(Exception):
    """No response from a target: timed out (`timeout`) or not reachable (`connection`)."""

    def __init__(self, reason: NoAnswer, target: Target) -> None:
        super().__init__(reason)
        self.reason: NoAnswer = reason
        self.target = target


@dataclass(slots=True)
class _Answer:
    """The response chosen for the client, from which target, and its first stream bytes."""

    resp: httpx2.Response
    used: Target
    admitted: asyncio.Task[None] | None
    first: bytes = b""
    chunks: AsyncIterator[bytes] | None = None
    signals: Signals | None = None
    """What the response's headers said about the deployment (read once, in `_try`)."""


def spill_reason(status: int) -> str | None:
    """Why a response is worth trying the next deployment for; None when it is the answer."""
    if status == 429:
        return "429"
    if status == 408:
        return "408"
    if status >= 500:
        return "5xx"
    if status in (401, 403):
        return "auth"
    return None


class Proxy:
    """Forwards high-priority calls; owns spillover, the breakers and the token events."""

    def __init__(
        self,
        client: httpx2.AsyncClient,
        auth: UpstreamAuth,
        events: TokenEvents,
        metrics: IngressMetrics,
        *,
        spillover_wait_ms: int,
        breakers: Mapping[str, SharedBreaker] | None = None,
        accounting: Accounting | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        timer: Callable[[], float] = time.perf_counter,
        telemetry: Telemetry = OFF,
    ) -> None:
        self._telemetry = telemetry
        self._client = client
        self._accounting = accounting
        self._timer = timer
        self._auth = auth
        self._events = events
        self._metrics = metrics
        self._spillover_wait_ms = spillover_wait_ms
        self._breakers = dict(breakers or {})
        self._sleep = sleep
        self._auth_raw: dict[int, tuple[dict[str, str], list[tuple[bytes, bytes]]]] = {}
        self._urls: dict[str, httpx2.URL] = {}

    def _url(
        self, target: Target, query: str, endpoint: Endpoint = "chat/completions"
    ) -> httpx2.URL:
        """The parsed upstream URL, cached: parsing costs more than the rest of the call."""
        key = (target.responses_url if endpoint == "responses" else target.url) + query
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            try:
                url = httpx2.URL(key)
            except httpx2.InvalidURL as exc:
                raise ApiError(400, "invalid_query", "the query string is not valid") from exc
            self._urls[key] = url
        return url

    async def _headers(self, target: Target, base: list[tuple[bytes, bytes]]) -> list[Any]:
        auth = target.auth or self._auth
        current = await auth.headers()
        cached = self._auth_raw.get(id(auth))
        if cached is None or cached[0] is not current:  # re-encode only when it changed
            cached = (current, [(k.encode(), v.encode()) for k, v in current.items()])
            self._auth_raw[id(auth)] = cached
        return base + cached[1]

    async def forward(self, call: Call) -> Response:
        """The deployment's answer to `call`, streamed when the call streams."""
        headers = forwarded_headers(call.client_headers)
        headers.extend(_FIXED_HEADERS)
        if self._telemetry.enabled:
            call.span = self._telemetry.llm_call(
                call.target.name, request_id=call.request_id, priority=call.priority,
                tenant=call.tenant, max_tokens=call.max_tokens or None,
            )  # fmt: skip
        started = self._timer()
        try:
            answer = await self._send_spilling(call, headers)
        except ApiError as exc:
            self.ended(call, call.target, exc.status, started, None, None, None)
            raise
        ttfb = self._timer() - started
        resp, used = answer.resp, answer.used
        # The request decides: some upstreams stream without `text/event-stream`.
        if answer.chunks is not None:
            sse = SSEFilter(strip_usage=call.strip_usage)
            return UpstreamStream(answer, sse, call, self, (started, ttfb))
        content = await resp.aread() if call.stream else resp.content
        if call.stream:
            await resp.aclose()
        usage = _usage_of(content) if resp.status_code < 300 else None
        if used.provisioned:
            self.finished(answer.admitted, call, used, usage, answer)
        reason = _finish_reason(content) if call.endpoint != "responses" else _response_end(content)
        self.ended(call, used, resp.status_code, started, ttfb, usage, reason)
        out = Response(content, status_code=resp.status_code)
        out.raw_headers.extend(passed_headers(resp.headers.raw))
        out.raw_headers.extend(answered_by(call, used))
        return out

    def finished(
        self,
        admitted: asyncio.Task[None] | None,
        call: Call,
        used: Target,
        usage: dict[str, Any] | None,
        answer: _Answer | None = None,
    ) -> None:
        """Record the `complete` token event of a call to a provisioned deployment.

        With the deployment's `answer`, the event carries what its headers said (the
        estimate calibrates itself on the utilisation header, a 429's retry-after, ...).
        """
        if not used.provisioned:
            return
        self._events.complete(
            admitted, call.request_id, used.name, call.max_tokens, usage, call.tenant,
            status_code=None if answer is None else answer.resp.status_code,
            signals=None if answer is None else answer.signals,
        )  # fmt: skip

    def observed(self, call: Call, answer: _Answer) -> None:
        """Record what a stream's headers reported at its first byte."""
        if answer.used.provisioned and answer.signals is not None:
            self._events.observe(
                answer.admitted, call.request_id, answer.used.name, answer.signals, call.tenant
            )

    def ended(
        self,
        call: Call,
        used: Target,
        status_code: int,
        started: float,
        ttfb_s: float | None,
        usage: dict[str, Any] | None,
        finish_reason: str | None,
    ) -> None:
        """Account for a finished call: its span, counters, latency, access log, usage ledger."""
        call.span.end(status_code, usage=usage, finish_reason=finish_reason)
        if self._accounting is None:
            return
        self._accounting.finished(
            Outcome(
                request_id=call.request_id,
                tenant=call.tenant,
                deployment=call.target.name,
                priority=call.priority,
                status_code=status_code,
                latency_s=self._timer() - started,
                ttfb_s=ttfb_s,
                usage=usage,
                finish_reason=finish_reason,
                spillover=used.name if used is not call.target else None,
            )
        )

    async def _send_spilling(self, call: Call, base: list[tuple[bytes, bytes]]) -> _Answer:
        """Try the deployment, then its spillover chain, until one answers usefully.

        A target is skipped while its breaker is open (unless it is the last one left);
        a 429, 408, 5xx, 401/403, timeout or connection error moves on to the next target;
        the last target's answer (or error) is the client's.
        """
        chain = (call.target, *call.target.spillover)
        for i, target in enumerate(chain):
            last = i == len(chain) - 1
            breaker = self._breakers.get(target.name)
            verdict = await breaker.allow() if breaker is not None else "call"
            if verdict == "reject" and not last:
                self._spilled(call, target, chain[i + 1], "circuit_open")
                continue
            tracked = breaker if verdict != "reject" else None  # a forced call is not counted
            answer = await self._try(call, target, base, tracked, verdict == "probe", last)
            if isinstance(answer, _Answer):
                return answer
            self._spilled(call, target, chain[i + 1], answer)
        raise AssertionError("the last target always answers")  # pragma: no cover

    async def _try(
        self,
        call: Call,
        target: Target,
        base: list[tuple[bytes, bytes]],
        breaker: SharedBreaker | None,
        probe: bool,
        last: bool,
    ) -> _Answer | str:
        """One target's answer, or the reason to move on to the next target."""
        headers = await self._headers(target, base)
        waited = False
        while True:
            admitted = self._admit(call, target)
            try:
                answer = await self._send(target, call, headers, admitted)
            except _Failed as failed:
                self.finished(admitted, call, target, None)
                if breaker is not None:
                    await breaker.record(breaker_verdict(None, failed.reason), probe=probe)
                if last:
                    raise _api_error(failed) from failed
                return failed.reason
            status = answer.resp.status_code
            reason = spill_reason(status)
            answer.signals = read_signals(answer.resp.headers)
            wait_s = answer.signals.retry_after_s if status == 429 else None
            wait_ms = None if wait_s is None else wait_s * 1000.0
            if breaker is not None:
                await breaker.record(
                    breaker_verdict(status),
                    retry_after_s=None if wait_ms is None else wait_ms / 1000.0,
                    probe=probe,
                )
            if status == 429:
                self._metrics.throttled(target.name)
            if reason is None or last:
                return answer
            self.finished(admitted, call, target, None, answer)
            await answer.resp.aclose()
            if (
                status == 429
                and not waited
                and wait_ms is not None
                and wait_ms <= self._spillover_wait_ms
            ):
                waited = True
                await self._sleep(wait_ms / 1000.0)
                continue
            return reason

    def _spilled(self, call: Call, frm: Target, to: Target, reason: str) -> None:
        self._metrics.spillover(frm.name, to.name, reason)
        log.info("spillover", request_id=call.request_id, ptu=frm.name, to=to.name, reason=reason)

    def _admit(self, call: Call, target: Target) -> asyncio.Task[None] | None:
        if not target.provisioned:
            return None
        return self._events.admit(
            call.request_id, target.name, call.prompt_tokens, call.max_tokens, call.tenant
        )

    async def _send(
        self,
        target: Target,
        call: Call,
        headers: list[tuple[bytes, bytes]],
        admitted: asyncio.Task[None] | None,
    ) -> _Answer:
        """The response of one target; a stream's first bytes are read here, before relaying.

        Raises _Failed on a timeout or a connection error (also one before a stream's
        first bytes), so the caller can still spill over.
        """
        request = self._client.build_request(
            "POST",
            self._url(target, call.query, call.endpoint),
            content=call.payload_for(target),
            headers=headers,
        )
        resp: httpx2.Response | None = None
        try:
            resp = await self._client.send(request, stream=call.stream)
            if not (call.stream and resp.status_code == 200):
                return _Answer(resp, target, admitted)
            if resp.is_stream_consumed:  # already buffered (an in-process transport)
                return _Answer(resp, target, admitted, resp.content, _nothing())
            chunks = resp.aiter_raw()
            first = b""
            async for chunk in chunks:
                first = chunk
                break
            return _Answer(resp, target, admitted, first, chunks)
        except httpx2.TimeoutException as exc:
            log.warning("upstream_timeout", deployment=target.name, error=repr(exc))
            await _close(resp)
            raise _Failed("timeout", target) from exc
        except httpx2.HTTPError as exc:
            log.warning("upstream_unreachable", deployment=target.name, error=repr(exc))
            await _close(resp)
            raise _Failed("connection", target) from exc

    def __repr__(self) -> str:
        return f"<Proxy spillover_wait_ms={self._spillover_wait_ms} events={self._events!r}>"


def answered_by(call: Call, used: Target) -> list[tuple[bytes, bytes]]:
    """`x-ptu-deployment` naming the deployment that answered (+ `x-ptu-spillover` if not ours)."""
    out = [(DEPLOYMENT_HEADER, used.name.encode())]
    if used is not call.target:
        out.append((b"x-ptu-spillover", used.name.encode()))
    return out


def _api_error(failed: _Failed) -> ApiError:
    name = failed.target.name
    if failed.reason == "timeout":
        return ApiError(504, "upstream_timeout", f"deployment {name} timed out")
    return ApiError(502, "upstream_unavailable", f"deployment {name} is unreachable")


async def _nothing() -> AsyncIterator[bytes]:
    empty: tuple[bytes, ...] = ()
    for chunk in empty:
        yield chunk


async def _close(resp: httpx2.Response | None) -> None:
    if resp is not None:
        await resp.aclose()


class UpstreamStream(Response):
    """Relays an SSE response event by event; records usage when it ends."""

    def __init__(
        self,
        answer: _Answer,
        sse: SSEFilter,
        call: Call,
        proxy: Proxy,
        timing: tuple[float, float],
    ) -> None:
        upstream = answer.resp
        self.status_code = upstream.status_code
        self._timing = timing
        self._finish_reason: str | None = None
        self.background = None
        self.raw_headers = [
            (k, v) for k, v in passed_headers(upstream.headers.raw) if k != b"content-type"
        ]
        self.raw_headers.append((b"content-type", b"text/event-stream"))
        self.raw_headers.extend(answered_by(call, answer.used))
        self._answer = answer
        proxy.observed(call, answer)
        self._sse = sse
        self._call = call
        self._proxy = proxy

    def _note_finish(self, chunk: bytes) -> None:
        if b'"finish_reason"' in chunk:
            self._finish_reason = _finish_reason(chunk) or self._finish_reason

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the status, then each whole event as it arrives."""
        sse, answer = self._sse, self._answer
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code,
                 "headers": self.raw_headers}
            )  # fmt: skip
            self._note_finish(answer.first)
            out = sse.feed(answer.first)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            assert answer.chunks is not None
            async for chunk in answer.chunks:
                self._note_finish(chunk)
                out = sse.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            await send({"type": "http.response.body", "body": sse.flush(), "more_body": False})
        except httpx2.HTTPError as exc:
            log.warning("upstream_stream_broken", request_id=self._call.request_id, error=repr(exc))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await answer.resp.aclose()
            usage = sse.usage or _approximate_usage(self._call, sse)
            self._proxy.finished(answer.admitted, self._call, answer.used, usage)
            started, ttfb = self._timing
            self._proxy.ended(
                self._call, answer.used, self.status_code, started, ttfb, usage, self._finish_reason
            )


def _usage_of(content: bytes) -> dict[str, Any] | None:
    """The `usage` object of a completion, parsing only that object (it comes last)."""
    at = content.rfind(b'"usage"')
    start = content.find(b"{", at) if at >= 0 else -1
    if start < 0:
        return None
    try:
        usage, _ = _DECODER.raw_decode(content[start:].decode("utf-8", "replace"))
    except ValueError:
        return None
    return usage if isinstance(usage, dict) else None


def _finish_reason(content: bytes) -> str | None:
    """The last `finish_reason` string in a completion or SSE chunk."""
    found = _FINISH_REASON.findall(content[-4096:]) if content else None
    return found[-1].decode() if found else None


def _response_end(content: bytes) -> str | None:
    """A response's (Responses API) finish reason: its incomplete reason, else its status."""
    try:
        body = json.loads(content)
    except ValueError:
        return None
    return finish_reason(body) if isinstance(body, dict) else None


def _approximate_usage(call: Call, sse: SSEFilter) -> dict[str, Any]:
    """A stream that ended without its usage chunk: one token per content event."""
    return {"prompt_tokens": call.prompt_tokens, "completion_tokens": sse.content_events}

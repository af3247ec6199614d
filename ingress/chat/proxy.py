"""High priority: straight to the PTU deployment, spilling to a standard one on 429.

One shared pooled client; the request body is forwarded as received unless
governance or the usage option changed it; status and headers (retry-after-ms,
retry-after, azure-openai-deployment-utilization, x-ratelimit-*) come back as the
deployment sent them. Spillover, for a deployment with `spillover` configured:
on 429, when `retry-after-ms` <= `PTU_SPILLOVER_WAIT_MS` the ingress waits and
tries the PTU once more, otherwise (or if that retry is throttled too) it calls the
standard deployment. Without spillover the 429 reaches the client unchanged.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2
import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ingress.chat.credentials import UpstreamAuth
from ingress.chat.sse import SSEFilter
from ingress.chat.targets import Target
from ingress.chat.token_events import TokenEvents
from ingress.http.errors import ApiError
from ingress.metrics import IngressMetrics
from orchestrator.core.retry import parse_retry_after
from orchestrator.core.schemas import PRIORITY_LABEL_HEADER
from orchestrator.utilisation.estimate.calibration import header_utilisation

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
_URL_CACHE_SIZE = 256
_DECODER = json.JSONDecoder()
_DROP_RESPONSE = frozenset(
    b"connection keep-alive transfer-encoding content-length content-encoding "
    b"date server upgrade trailer set-cookie".split()
)


@dataclass(slots=True)
class Call:
    """One high-priority chat completion on its way upstream."""

    target: Target
    payload: bytes
    query: str
    client_headers: RawHeaders
    request_id: str
    prompt_tokens: int
    max_tokens: int
    stream: bool = False
    strip_usage: bool = False


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


class Proxy:
    """Forwards high-priority calls; owns spillover and the token events around them."""

    def __init__(
        self,
        client: httpx2.AsyncClient,
        auth: UpstreamAuth,
        events: TokenEvents,
        metrics: IngressMetrics,
        *,
        spillover_wait_ms: int,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._auth = auth
        self._events = events
        self._metrics = metrics
        self._spillover_wait_ms = spillover_wait_ms
        self._sleep = sleep
        self._auth_seen: dict[str, str] | None = None
        self._auth_raw: list[tuple[bytes, bytes]] = []
        self._urls: dict[str, httpx2.URL] = {}

    def _url(self, target: Target, query: str) -> httpx2.URL:
        """The parsed upstream URL, cached: parsing costs more than the rest of the call."""
        key = target.url + query
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

    async def forward(self, call: Call) -> Response:
        """The deployment's answer to `call`, streamed when the call streams."""
        headers = forwarded_headers(call.client_headers)
        headers.extend(_FIXED_HEADERS)
        auth = await self._auth.headers()
        if auth is not self._auth_seen:  # re-encode only when the credential changed
            self._auth_seen = auth
            self._auth_raw = [(k.encode(), v.encode()) for k, v in auth.items()]
        headers.extend(self._auth_raw)
        resp, used, admitted = await self._send_spilling(call, headers)
        if used is not call.target:
            self._metrics.spillover(call.target.name, used.name)
        # The request decides: some upstreams stream without `text/event-stream`.
        if call.stream and resp.status_code == 200:
            sse = SSEFilter(strip_usage=call.strip_usage)
            return UpstreamStream(resp, sse, call, used, admitted, self)
        content = await resp.aread() if call.stream else resp.content
        if call.stream:
            await resp.aclose()
        if used.provisioned:
            usage = _usage_of(content) if resp.status_code < 300 else None
            self.finished(admitted, call, used, usage, resp)
        out = Response(content, status_code=resp.status_code)
        out.raw_headers.extend(passed_headers(resp.headers.raw))
        if used is not call.target:
            out.raw_headers.append((b"x-ptu-spillover", used.name.encode()))
        return out

    def finished(
        self,
        admitted: asyncio.Task[None] | None,
        call: Call,
        used: Target,
        usage: dict[str, Any] | None,
        answer: httpx2.Response | None = None,
    ) -> None:
        """Record the `complete` token event of a call to a provisioned deployment.

        With the deployment's `answer`, the event carries its utilisation header and,
        for a 429, its retry-after (the estimate calibrates itself on both).
        """
        if not used.provisioned:
            return
        utilisation = retry = None
        if answer is not None:
            utilisation = header_utilisation(answer.headers)
            if answer.status_code == 429:
                retry = 1000.0 * (parse_retry_after(answer.headers) or 0.0)
        self._events.complete(
            admitted, call.request_id, used.name, call.max_tokens, usage,
            utilisation=utilisation, retry_after_ms=retry,
        )  # fmt: skip

    def observed(self, admitted: asyncio.Task[None] | None, call: Call, used: Target,
                 answer: httpx2.Response) -> None:  # fmt: skip
        """Record the utilisation a stream's headers reported at its first byte."""
        utilisation = header_utilisation(answer.headers) if used.provisioned else None
        if utilisation is not None:
            self._events.observe(admitted, call.request_id, used.name, utilisation)

    async def _send_spilling(
        self, call: Call, headers: list[tuple[bytes, bytes]]
    ) -> tuple[httpx2.Response, Target, asyncio.Task[None] | None]:
        target = call.target
        admitted = self._admit(call, target)
        resp = await self._send(target, call, headers, admitted)
        spill = target.spillover
        if resp.status_code != 429:
            return resp, target, admitted
        self._metrics.throttled(target.name)
        if spill is None:
            return resp, target, admitted
        self.finished(admitted, call, target, None, resp)
        wait_s = parse_retry_after(resp.headers)
        await resp.aclose()
        if wait_s is not None and wait_s * 1000.0 <= self._spillover_wait_ms:
            await self._sleep(wait_s)
            admitted = self._admit(call, target)
            resp = await self._send(target, call, headers, admitted)
            if resp.status_code != 429:
                return resp, target, admitted
            self.finished(admitted, call, target, None, resp)
            await resp.aclose()
        log.info("spillover", request_id=call.request_id, ptu=target.name, to=spill.name)
        return await self._send(spill, call, headers, None), spill, None

    def _admit(self, call: Call, target: Target) -> asyncio.Task[None] | None:
        if not target.provisioned:
            return None
        return self._events.admit(call.request_id, target.name, call.prompt_tokens, call.max_tokens)

    async def _send(
        self,
        target: Target,
        call: Call,
        headers: list[tuple[bytes, bytes]],
        admitted: asyncio.Task[None] | None,
    ) -> httpx2.Response:
        request = self._client.build_request(
            "POST", self._url(target, call.query), content=call.payload, headers=headers
        )
        try:
            return await self._client.send(request, stream=call.stream)
        except httpx2.TimeoutException as exc:
            self.finished(admitted, call, target, None)
            log.warning("upstream_timeout", deployment=target.name, error=repr(exc))
            raise ApiError(504, "upstream_timeout", f"deployment {target.name} timed out") from exc
        except httpx2.HTTPError as exc:
            self.finished(admitted, call, target, None)
            log.warning("upstream_unreachable", deployment=target.name, error=repr(exc))
            raise ApiError(
                502, "upstream_unavailable", f"deployment {target.name} is unreachable"
            ) from exc

    def __repr__(self) -> str:
        return f"<Proxy spillover_wait_ms={self._spillover_wait_ms} events={self._events!r}>"


class UpstreamStream(Response):
    """Relays an SSE response event by event; records usage when it ends."""

    def __init__(
        self,
        upstream: httpx2.Response,
        sse: SSEFilter,
        call: Call,
        used: Target,
        admitted: asyncio.Task[None] | None,
        proxy: Proxy,
    ) -> None:
        self.status_code = upstream.status_code
        self.background = None
        self.raw_headers = [
            (k, v) for k, v in passed_headers(upstream.headers.raw) if k != b"content-type"
        ]
        self.raw_headers.append((b"content-type", b"text/event-stream"))
        if used is not call.target:
            self.raw_headers.append((b"x-ptu-spillover", used.name.encode()))
        self._upstream = upstream
        self._sse = sse
        self._call = call
        self._used = used
        self._admitted = admitted
        self._proxy = proxy
        proxy.observed(admitted, call, used, upstream)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the status, then each whole event as it arrives."""
        sse = self._sse
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code,
                 "headers": self.raw_headers}
            )  # fmt: skip
            async for chunk in self._upstream.aiter_raw():
                out = sse.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            await send({"type": "http.response.body", "body": sse.flush(), "more_body": False})
        except httpx2.HTTPError as exc:
            log.warning("upstream_stream_broken", request_id=self._call.request_id, error=repr(exc))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self._upstream.aclose()
            usage = sse.usage or _approximate_usage(self._call, sse)
            self._proxy.finished(self._admitted, self._call, self._used, usage)


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


def _approximate_usage(call: Call, sse: SSEFilter) -> dict[str, Any]:
    """A stream that ended without its usage chunk: one token per content event."""
    return {"prompt_tokens": call.prompt_tokens, "completion_tokens": sse.content_events}

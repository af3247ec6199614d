"""The HTTP leg of a high-priority call: one pooled client, cached URLs and auth headers.

`send` returns a target's response; for a stream it reads the first bytes before the
client sees anything, so a stream that breaks before them can still spill over. A timeout
or a connection error (also one before a stream's first bytes) raises `NoResponse`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import structlog

from ingress.chat.call import Answer, Call
from ingress.chat.credentials import UpstreamAuth
from ingress.chat.targets import Target
from ingress.http.errors import ApiError
from orchestrator.calls.outcome import NoAnswer
from orchestrator.core.schemas import Endpoint

log = structlog.get_logger(__name__)

_URL_CACHE_SIZE = 256


class NoResponse(Exception):
    """No response from a target: timed out (`timeout`) or not reachable (`connection`)."""

    def __init__(self, reason: NoAnswer, target: Target) -> None:
        super().__init__(reason)
        self.reason: NoAnswer = reason
        self.target = target

    def api_error(self) -> ApiError:
        """The client's answer when no target is left to try."""
        name = self.target.name
        if self.reason == "timeout":
            return ApiError(504, "upstream_timeout", f"deployment {name} timed out")
        return ApiError(502, "upstream_unavailable", f"deployment {name} is unreachable")


class Transport:
    """Sends a call's body to one target with that target's credentials."""

    def __init__(self, client: httpx2.AsyncClient, auth: UpstreamAuth) -> None:
        self._client = client
        self._auth = auth
        self._auth_raw: dict[int, tuple[dict[str, str], list[tuple[bytes, bytes]]]] = {}
        self._urls: dict[str, httpx2.URL] = {}

    def url(
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

    async def headers(self, target: Target, base: list[tuple[bytes, bytes]]) -> list[Any]:
        """`base` plus the target's credential headers (re-encoded only when they changed)."""
        auth = target.auth or self._auth
        current = await auth.headers()
        cached = self._auth_raw.get(id(auth))
        if cached is None or cached[0] is not current:
            cached = (current, [(k.encode(), v.encode()) for k, v in current.items()])
            self._auth_raw[id(auth)] = cached
        return base + cached[1]

    async def send(
        self,
        target: Target,
        call: Call,
        headers: list[tuple[bytes, bytes]],
        admitted: asyncio.Task[None] | None,
    ) -> Answer:
        """The response of one target; a stream's first bytes are read here, before relaying."""
        request = self._client.build_request(
            "POST",
            self.url(target, call.query, call.endpoint),
            content=call.payload_for(target),
            headers=headers,
        )
        resp: httpx2.Response | None = None
        try:
            resp = await self._client.send(request, stream=call.stream)
            if not (call.stream and resp.status_code == 200):
                return Answer(resp, target, admitted)
            if resp.is_stream_consumed:  # already buffered (an in-process transport)
                return Answer(resp, target, admitted, resp.content, _nothing())
            chunks = resp.aiter_raw()
            first = b""
            async for chunk in chunks:
                first = chunk
                break
            return Answer(resp, target, admitted, first, chunks)
        except httpx2.TimeoutException as exc:
            log.warning("upstream_timeout", deployment=target.name, error=repr(exc))
            await _close(resp)
            raise NoResponse("timeout", target) from exc
        except httpx2.HTTPError as exc:
            log.warning("upstream_unreachable", deployment=target.name, error=repr(exc))
            await _close(resp)
            raise NoResponse("connection", target) from exc

    def __repr__(self) -> str:
        return f"<Transport urls={len(self._urls)}>"


async def _nothing() -> AsyncIterator[bytes]:
    empty: tuple[bytes, ...] = ()
    for chunk in empty:
        yield chunk


async def _close(resp: httpx2.Response | None) -> None:
    if resp is not None:
        await resp.aclose()

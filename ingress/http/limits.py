"""Limits on what a client may make the ingress hold: header count and size, body-read time.

uvicorn (h11) caps the size of the request head (`MAX_HEADER_BYTES`) but not the
number of headers, and waits forever for a body that never comes (a
`content-length` larger than what is sent). `RequestLimits` refuses more than
`MAX_HEADERS` headers with 431 and gives every read of the body `BODY_READ_TIMEOUT_S`
(408 `request_timeout`), both in the OpenAI error envelope. A client that hangs up
is not an error of ours: `ClientDisconnect` is logged at info, without a traceback.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingress.http import access
from ingress.http.errors import ApiError, error_response

log = structlog.get_logger(__name__)

MAX_HEADERS = 100
MAX_HEADER_BYTES = 16_384
BODY_READ_TIMEOUT_S = 30.0


class BodyReadTimeout(ApiError):
    """The client stopped sending its body."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, "request_timeout", f"the request body did not arrive in {seconds:g}s")


class RequestLimits:
    """ASGI middleware: header count limit and a time limit on each body read."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_headers: int = MAX_HEADERS,
        body_timeout_s: float = BODY_READ_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.max_headers = max_headers
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("headers", ())) > self.max_headers:
            access.note(error="too_many_headers")
            response = error_response(
                431, "too_many_headers", f"a request may carry at most {self.max_headers} headers"
            )
            await response(scope, receive, send)
            return

        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                # after the body, receive() only waits for a disconnect (a streamed answer
                # listens for it as long as it runs): never time that out
                return await receive()
            try:
                async with asyncio.timeout(self.body_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise BodyReadTimeout(self.body_timeout_s) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)


async def client_disconnected(request: Request, exc: Exception) -> Response:
    """The client went away mid-request: nothing to answer, nothing to alarm anyone about."""
    log.info("client_disconnected", path=request.url.path, method=request.method)
    return Response(status_code=499)


def handlers() -> dict[Any, Any]:
    """Exception handlers for the limits (merged into the app's)."""
    return {ClientDisconnect: client_disconnected}

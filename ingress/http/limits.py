"""Limits on what a client may make the ingress hold: header count and size, body-read time.

uvicorn (h11) caps the size of the request head (`MAX_HEADER_BYTES`) but not the
number of headers, and waits forever for a body that never comes (a
`content-length` larger than what is sent). `RequestLimits` refuses more than
`MAX_HEADERS` headers with 431 and gives every read of the body `BODY_READ_TIMEOUT_S`
(408 `request_timeout`), both in the OpenAI error envelope. A client that hangs up
is not an error of ours: `ClientDisconnect` is logged at info, without a traceback;
`unless_disconnected` raises it as soon as the client hangs up while the ingress waits for
an upstream answer, cancelling that call (`hung_up` is the one watch of a hang-up).

A time limit per read alone lets a client that trickles its body (a byte every few
seconds) hold a connection forever, so the whole body has a deadline too: it may take
`BODY_READ_TIMEOUT_S` plus one second per `MIN_BODY_RATE` bytes received so far. A
body arriving at a usable rate (a 200 MB upload at 16 KiB/s or better) is never cut;
a trickle is cut `BODY_READ_TIMEOUT_S` after its first byte, give or take what it sent.
A rate rule rather than a fixed total, because bodies range from a few hundred bytes
of chat to a batch file of 200 MB, and a `content-length` is the client's claim.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingress.http import access
from ingress.http.errors import ApiError, error_response

log = structlog.get_logger(__name__)

T = TypeVar("T")

MAX_HEADERS = 100
MAX_HEADER_BYTES = 16_384
BODY_READ_TIMEOUT_S = 30.0
MIN_BODY_RATE = 16_384
"""Bytes per second a body must average, past its first `BODY_READ_TIMEOUT_S`."""


class BodyReadTimeout(ApiError):
    """The client stopped sending its body, or sends it too slowly."""

    def __init__(self, seconds: float, *, trickle: bool = False) -> None:
        message = (
            f"the request body arrived too slowly (under {MIN_BODY_RATE} bytes per second "
            f"past its first {seconds:g}s)"
            if trickle
            else f"the request body did not arrive in {seconds:g}s"
        )
        super().__init__(408, "request_timeout", message)


class RequestLimits:
    """ASGI middleware: header count limit and a time limit on each body read."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_headers: int = MAX_HEADERS,
        body_timeout_s: float = BODY_READ_TIMEOUT_S,
        min_body_rate: float = MIN_BODY_RATE,
    ) -> None:
        self.app = app
        self.max_headers = max_headers
        self.body_timeout_s = body_timeout_s
        self.min_body_rate = min_body_rate

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
        loop = asyncio.get_running_loop()
        started: float | None = None
        received = 0

        async def timed_receive() -> Message:
            nonlocal body_done, started, received
            if body_done:
                # after the body, receive() only waits for a disconnect (a streamed answer
                # listens for it as long as it runs): never time that out
                return await receive()
            now = loop.time()
            if started is None:
                started = now
            # the whole body's deadline so far: the grace plus what its bytes have earned
            left = started + self.body_timeout_s + received / self.min_body_rate - now
            timeout = min(self.body_timeout_s, left)
            try:
                async with asyncio.timeout(max(0.0, timeout)):
                    message = await receive()
            except TimeoutError:
                raise BodyReadTimeout(
                    self.body_timeout_s, trickle=left < self.body_timeout_s
                ) from None
            received += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)


async def client_disconnected(request: Request, exc: Exception) -> Response:
    """The client went away mid-request: nothing to answer, nothing to alarm anyone about."""
    log.info("client_disconnected", path=request.url.path, method=request.method)
    return Response(status_code=499)


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """`work`'s result, or `ClientDisconnect` as soon as the client hangs up (its request
    body read): `work` is cancelled, which closes whatever upstream call it was making."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(hung_up(receive))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watch
    if not task.done() or task.cancelled():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnect()
    return task.result()


async def hung_up(receive: Receive) -> None:
    """Return once the client has hung up (call after its request body was read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def handlers() -> dict[Any, Any]:
    """Exception handlers for the limits (merged into the app's)."""
    return {ClientDisconnect: client_disconnected}

"""The ingress's request limits: header count, body-read timeout, quiet disconnects."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from ingress.http import errors, limits
from ingress.metrics import IngressMetrics


async def echo(request: Request) -> Response:
    return JSONResponse({"bytes": len(await request.body())})


def app(body_timeout_s: float = 5.0) -> Starlette:
    return Starlette(
        routes=[Route("/echo", echo, methods=["POST"])],
        middleware=[Middleware(limits.RequestLimits, body_timeout_s=body_timeout_s)],
        exception_handlers={**errors.exception_handlers(IngressMetrics()), **limits.handlers()},
    )


async def call(
    asgi: Any, headers: list[tuple[bytes, bytes]], messages: list[dict[str, Any]]
) -> tuple[int, dict[str, Any]]:
    """Drive one request; `messages` are what the client sends, then it sends nothing."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/echo", "raw_path": b"/echo", "query_string": b"",
        "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }  # fmt: skip
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.Event().wait()  # a client that stopped sending
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(asgi(scope, receive, send), timeout=10)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body) if body else {}


async def test_too_many_headers_is_431_in_the_envelope() -> None:
    headers = [(f"x-h{i}".encode(), b"v") for i in range(limits.MAX_HEADERS + 1)]
    status, body = await call(app(), headers, [{"type": "http.request", "body": b""}])
    assert status == 431 and body["error"]["code"] == "too_many_headers"


async def test_a_body_that_stops_coming_is_408_not_a_hang() -> None:
    headers = [(b"content-length", b"100")]
    first = [{"type": "http.request", "body": b"x" * 10, "more_body": True}]
    status, body = await call(app(body_timeout_s=0.2), headers, first)
    assert status == 408 and body["error"]["code"] == "request_timeout"


async def test_a_whole_body_is_read_as_usual() -> None:
    status, body = await call(app(), [], [{"type": "http.request", "body": b"abc"}])
    assert status == 200 and body == {"bytes": 3}


async def test_client_disconnect_is_logged_at_info_without_traceback() -> None:
    with capture_logs() as logs:
        status, _ = await call(app(), [], [{"type": "http.disconnect"}])
    assert status == 499
    [entry] = [e for e in logs if e["event"] == "client_disconnected"]
    assert entry["log_level"] == "info" and "exc_info" not in entry
    assert not [e for e in logs if e["log_level"] == "error"]

"""The ingress's request limits: header count, body-read timeout, quiet disconnects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
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


async def test_a_trickled_body_is_cut_by_the_whole_body_deadline() -> None:
    """A byte every 50 ms never trips the per-read limit; the rate rule ends it."""
    asgi = Starlette(
        routes=[Route("/echo", echo, methods=["POST"])],
        middleware=[Middleware(limits.RequestLimits, body_timeout_s=0.5, min_body_rate=100.0)],
        exception_handlers={**errors.exception_handlers(IngressMetrics()), **limits.handlers()},
    )
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/echo", "raw_path": b"/echo", "query_string": b"",
        "headers": [(b"content-length", b"1000")], "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []
    trickled = 0

    async def receive() -> dict[str, Any]:
        nonlocal trickled
        await asyncio.sleep(0.05)
        trickled += 1
        return {"type": "http.request", "body": b"x", "more_body": trickled < 1000}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(asgi(scope, receive, send), timeout=10)
    elapsed = loop.time() - began
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = json.loads(
        b"".join(m.get("body", b"") for m in sent if m["type"] != "http.response.start")
    )
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert "too slowly" in body["error"]["message"]
    # 0.5 s of grace plus 20 bytes/s earning a fifth of a second each second: ~0.63 s,
    # far before the 50 s the 1,000 bytes would take
    assert trickled < 100, trickled
    assert elapsed < 5.0


async def test_a_steady_body_at_the_minimum_rate_is_read_whole() -> None:
    chunks = [{"type": "http.request", "body": b"y" * 400, "more_body": True}] * 5
    chunks.append({"type": "http.request", "body": b"", "more_body": False})
    asgi = Starlette(
        routes=[Route("/echo", echo, methods=["POST"])],
        middleware=[Middleware(limits.RequestLimits, body_timeout_s=0.5, min_body_rate=100.0)],
        exception_handlers={**errors.exception_handlers(IngressMetrics()), **limits.handlers()},
    )
    status, body = await call(asgi, [], chunks)
    assert status == 200 and body == {"bytes": 2000}

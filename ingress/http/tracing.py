"""The HTTP server span of every ingress request (installed only while tracing is on).

A pure ASGI middleware, outermost, so the span also covers requests refused by the
limits or auth and a stream until its last byte. It continues the client's W3C
`traceparent` when one is sent; probes and `/metrics` are not traced.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.telemetry.base import Telemetry

UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


class TracingMiddleware:
    """Wraps each HTTP request in `Telemetry.server`, naming it by the matched route."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self._telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Trace `scope` unless it is a probe; pass everything through unchanged."""
        if scope["type"] != "http" or scope["path"] in UNTRACED:
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in (b"traceparent", b"tracestate")
        }
        with self._telemetry.server(scope["method"], scope["path"], headers) as span:

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.response(int(message["status"]))
                await send(message)

            try:
                await self.app(scope, receive, traced_send)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None)
                if isinstance(template, str):
                    span.route(template)

    def __repr__(self) -> str:
        return f"<TracingMiddleware telemetry={self._telemetry!r}>"

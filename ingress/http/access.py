"""The access line of every request the ingress answers, with the client's address.

A call the ingress forwards is logged when it ends by `chat/accounting` (the call path:
`calls/outcome.Outcome.log_access`, the one definition of the line). Everything else the
ingress answers itself: its refusals (401, 400, 404, 413, 429, ...) and its 202s, long
polls, files and batches. `AccessLog`, the outermost middleware, writes their line with
the same `Outcome.log_access`, from what the request told it while it ran (`note`: the
tenant once authenticated, the deployment, priority and request id once known, the
error code answered), unless the call path wrote one (`logged`).

The client's address, the method and the path are bound to structlog's context for the
request (`client`, `method`, `path`), so every line written while it runs carries them,
the call path's access line included. Health probes and metrics scrapes are logged
only when they fail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.calls.outcome import Outcome

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
"""Paths polled by probes and scrapers: logged only when they fail."""


@dataclass(slots=True)
class Seen:
    """What the ingress learnt of one request while answering it."""

    tenant: str = ""
    deployment: str = ""
    priority: str = ""
    request_id: str = ""
    error: str | None = None
    """The error code the ingress answered with, if it refused."""
    logged: bool = False
    """The call path wrote the request's access line itself."""


_seen: ContextVar[Seen | None] = ContextVar("ptu_access_seen", default=None)


def note(
    *,
    tenant: str | None = None,
    deployment: str | None = None,
    priority: str | None = None,
    request_id: str | None = None,
    error: str | None = None,
) -> None:
    """Record what is known of the current request (nothing outside `AccessLog`)."""
    seen = _seen.get()
    if seen is None:
        return
    seen.tenant = tenant or seen.tenant
    seen.deployment = deployment or seen.deployment
    seen.priority = priority or seen.priority
    seen.request_id = request_id or seen.request_id
    seen.error = error or seen.error


def logged() -> None:
    """The call path wrote the current request's access line: `AccessLog` writes none."""
    seen = _seen.get()
    if seen is not None:
        seen.logged = True


def client_address(scope: Scope) -> str | None:
    """`host:port` of the peer (`[v6]:port`), as the server saw it."""
    client = scope.get("client")
    if not client:
        return None
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class AccessLog:
    """ASGI middleware: the access line of each request no call path logged."""

    def __init__(self, app: ASGIApp, *, timer: Callable[[], float] = time.perf_counter) -> None:
        self.app = app
        self.timer = timer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen, started, status = Seen(), self.timer(), 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        token = _seen.set(seen)
        path = scope.get("path", "")
        bound = structlog.contextvars.bound_contextvars(
            client=client_address(scope), method=scope.get("method"), path=path
        )
        with bound:
            try:
                await self.app(scope, receive, observed)
            finally:
                _seen.reset(token)
                if not seen.logged and (path not in PROBES or status >= 400):
                    Outcome(
                        request_id=seen.request_id,
                        tenant=seen.tenant,
                        deployment=seen.deployment,
                        priority=seen.priority,
                        status_code=status,
                        latency_s=self.timer() - started,
                        error=seen.error,
                    ).log_access()

    def __repr__(self) -> str:
        return "<AccessLog>"

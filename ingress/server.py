"""Running the ingress under uvicorn in a background thread (tests, benchmarks).

    with IngressThread(settings) as ingress:     # free loopback port
        httpx2.post(ingress.url + "/v1/chat/completions", ...)

The app gets its own event loop in the thread, so pass no loop-bound clients
(`redis=`, `http_client=`) created elsewhere; let it build them from settings.
"""

from __future__ import annotations

from typing import Any

import uvicorn

from ingress.app import create_app
from ingress.http import limits
from orchestrator.core.serving import ServerThread, free_port, serve_until
from orchestrator.core.settings import Settings

__all__ = ["IngressThread", "serve_until", "uvicorn_config"]


def uvicorn_config(app: Any, host: str, port: int, *, drain_s: float = 5.0) -> uvicorn.Config:
    """uvicorn settings for the ingress: no access log, long keep-alive, graceful drain."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        http="h11",
        h11_max_incomplete_event_size=limits.MAX_HEADER_BYTES,  # the whole request head
        timeout_graceful_shutdown=max(1, int(drain_s)),
    )


class IngressThread(ServerThread):
    """The ingress on a loopback port in a daemon thread; a context manager."""

    def __init__(
        self, settings: Settings, *, host: str = "127.0.0.1", port: int | None = None, **kw: Any
    ) -> None:
        port = port or free_port(host)
        super().__init__(uvicorn_config(create_app(settings, **kw), host, port), name="ingress")

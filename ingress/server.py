"""Running the ingress under uvicorn in a background thread (tests, benchmarks).

    with IngressThread(settings) as ingress:     # free loopback port
        httpx2.post(ingress.url + "/v1/chat/completions", ...)

The app gets its own event loop in the thread, so pass no loop-bound clients
(`redis=`, `http_client=`) created elsewhere; let it build them from settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import uvicorn

from ingress.app import create_app
from orchestrator.embedded import free_port
from orchestrator.errors import PTUError
from orchestrator.settings import Settings


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
        timeout_graceful_shutdown=max(1, int(drain_s)),
    )


class ForegroundServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the entry point."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing: `run_until_signal` owns SIGINT/SIGTERM."""
        yield


async def serve_until(config: uvicorn.Config, stop: asyncio.Event) -> int:
    """Serve until `stop` is set, then let uvicorn drain open connections and exit.

    Raises PTUError (one line) when the server cannot start, e.g. the port is taken.
    """
    server = ForegroundServer(config)

    async def watch() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(watch())
    try:
        await server.serve()
    except SystemExit:  # uvicorn exits the process when it cannot bind
        raise PTUError(
            f"cannot serve on {config.host}:{config.port} (see the error above)"
        ) from None
    finally:
        watcher.cancel()
    return 0


class IngressThread:
    """The ingress on a loopback port in a daemon thread; a context manager."""

    def __init__(
        self, settings: Settings, *, host: str = "127.0.0.1", port: int | None = None, **kw: Any
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.app = create_app(settings, **kw)
        self._server = uvicorn.Server(uvicorn_config(self.app, self.host, self.port))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:PORT`."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> IngressThread:
        """Start serving and wait until uvicorn reports it started."""
        self._thread = threading.Thread(target=self._server.run, name="ingress", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise PTUError(f"ingress did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit (running the lifespan shutdown) and wait for the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None

    def __enter__(self) -> IngressThread:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<IngressThread url={self.url} running={self._server.started}>"

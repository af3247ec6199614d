"""Running an ASGI app under uvicorn: in the foreground of a verb, or in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Self

import uvicorn

from orchestrator.core.errors import PTUError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ForegroundServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the entry point."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing: `run_until_signal` owns SIGINT/SIGTERM."""
        yield


async def serve_until(
    config: uvicorn.Config, stop: asyncio.Event, sockets: list[socket.socket] | None = None
) -> int:
    """Serve until `stop` is set, then let uvicorn drain open connections and exit.

    `sockets`: listening sockets to serve on instead of binding `config`'s host and port.
    Raises PTUError (one line) when the server cannot start, e.g. the port is taken.
    """
    server = ForegroundServer(config)

    async def watch() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(watch())
    try:
        await server.serve(sockets=sockets)
    except SystemExit:  # uvicorn exits the process when it cannot bind
        raise PTUError(
            f"cannot serve on {config.host}:{config.port} (see the error above)"
        ) from None
    finally:
        watcher.cancel()
    return 0


class ServerThread:
    """An app under uvicorn in a daemon thread (tests, benchmarks); a context manager.

    The app gets its own event loop in the thread, so it must not be handed
    loop-bound clients created elsewhere.
    """

    def __init__(self, config: uvicorn.Config, *, name: str = "server") -> None:
        self.host = config.host
        self.port = config.port
        self.app = config.app
        self._name = name
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:PORT`."""
        scheme = "https" if self._server.config.ssl_certfile else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> Self:
        """Start serving and wait until uvicorn reports it started."""
        self._thread = threading.Thread(target=self._server.run, name=self._name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise PTUError(f"{self._name} did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit (running the lifespan shutdown) and wait for the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} url={self.url} running={self._server.started}>"

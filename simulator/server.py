"""Running the simulator under uvicorn: in the foreground (CLI) or in a background thread."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import uvicorn

from orchestrator.embedded import free_port
from orchestrator.errors import PTUError
from simulator.app import create_app
from simulator.config import SimConfig


class ForegroundServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the entry point."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing: `run_until_signal` owns SIGINT/SIGTERM."""
        yield


def uvicorn_config(
    app: object,
    host: str,
    port: int,
    *,
    certfile: Path | None = None,
    keyfile: Path | None = None,
) -> uvicorn.Config:
    """uvicorn settings for the simulator: no access log, keep-alive long enough for load."""
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        ssl_certfile=str(certfile) if certfile else None,
        ssl_keyfile=str(keyfile) if keyfile else None,
    )


class SimulatorThread:
    """The simulator on a loopback port in a daemon thread; a context manager for tests."""

    def __init__(
        self,
        config: SimConfig,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.app = create_app(config, clock=clock)
        self._server = uvicorn.Server(uvicorn_config(self.app, self.host, self.port))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:PORT`."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> SimulatorThread:
        """Start serving and wait until the port accepts connections."""
        self._thread = threading.Thread(target=self._server.run, name="simulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise PTUError(f"simulator did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SimulatorThread url={self.url} running={self._server.started}>"

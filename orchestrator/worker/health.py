"""The worker's liveness and readiness, served beside `/metrics` on `PTU_METRICS_PORT`.

The worker has no HTTP API, so Kubernetes' probes ask the metrics port:

- `GET /healthz` (liveness): 200 while the worker's event loop runs. The loop beats
  every second (`beat`, from `runtime.every`); the HTTP server is a thread of its own, so
  a loop stuck on a blocking call or a deadlock stops the beats and, `stale_after_s`
  later, the probe fails and the kubelet restarts the container. A Redis or upstream
  outage does not: the loop keeps beating while it waits, and restarting would not help.
- `GET /readyz` (readiness): 200 from the end of the start-up checks (Redis reachable,
  credentials usable) until the stop begins, and while live; 503 `starting`,
  `stopping` or `stalled` otherwise. Nothing routes traffic to a worker, but the
  readiness gate shows a worker that never finished starting, and a rollout waits for it.

Everything else is the Prometheus exposition of the worker's registry, behind
`PTU_METRICS_API_KEY` when it is set (`core.operator_key`; the probes stay open: the
kubelet sends no key).
"""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from orchestrator.core.operator_key import OperatorKey

STALE_AFTER_S = 30.0
BEAT_S = 1.0


class Health:
    """Liveness from the loop's beats, readiness from the worker's phase; `now` injected."""

    __slots__ = ("_clock", "_last", "_phase", "stale_after_s")

    def __init__(
        self, *, stale_after_s: float = STALE_AFTER_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self.stale_after_s = stale_after_s
        self._last = clock()
        self._phase = "starting"

    def beat(self) -> None:
        """The event loop is running (called every `BEAT_S` from the loop)."""
        self._last = self._clock()

    def started(self) -> None:
        """The start-up checks passed: ready."""
        self._phase = "ready"

    def stopping(self) -> None:
        """The stop began: no longer ready (the drain may take a while)."""
        self._phase = "stopping"

    def live(self) -> bool:
        """True while the loop beat within `stale_after_s`."""
        return self._clock() - self._last <= self.stale_after_s

    def answer(self, path: str) -> tuple[int, dict[str, Any]] | None:
        """(status, body) of a probe path; None for any other path."""
        if path == "/healthz":
            if self.live():
                return 200, {"status": "ok"}
            return 503, {"status": "stalled", "since_s": round(self._clock() - self._last, 1)}
        if path == "/readyz":
            phase = self._phase if self.live() else "stalled"
            return (200 if phase == "ready" else 503), {"status": phase}
        return None

    def __repr__(self) -> str:
        return f"<Health phase={self._phase} beat_age_s={self._clock() - self._last:.1f}>"


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the log: say nothing."""


def serve(
    registry: CollectorRegistry,
    health: Health | None,
    port: int,
    addr: str = "0.0.0.0",
    *,
    key: OperatorKey | None = None,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve the probes (unless `health` is None) and `/metrics` (behind `key` when it
    requires one) from a daemon thread (port 0 picks one)."""
    metrics = make_wsgi_app(registry)
    if key is not None and key.required:
        metrics = key.wsgi(metrics)

    def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        answered = None if health is None else health.answer(path)
        if answered is None:
            return metrics(environ, start)  # type: ignore[no-any-return]
        status, body = answered
        reason = "OK" if status == 200 else "Service Unavailable"
        start(f"{status} {reason}", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    server = make_server(addr, port, app, _Server, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="ptu-metrics", daemon=True)
    thread.start()
    return server, thread

"""A local stand-in for the App Service managed-identity endpoint, so Entra ID auth runs locally.

`DefaultAzureCredential` in a worker with `IDENTITY_ENDPOINT` and
`IDENTITY_HEADER` set asks that endpoint for a token (the way it does on App
Service and Container Apps). The harness serves it on loopback and hands out a
fixed token the simulator's metrics API accepts, so the Azure Monitor source
runs its real credential and SDK code path against the simulator.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

TOKEN_LIFETIME_S = 3600


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.headers.get("X-IDENTITY-HEADER") != self.server.secret:
            self.send_error(401, "bad X-IDENTITY-HEADER")
            return
        body = json.dumps(
            {
                "access_token": self.server.token,
                "expires_on": str(int(time.time()) + TOKEN_LIFETIME_S),
                "resource": "https://management.azure.com/",
                "token_type": "Bearer",
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the harness has its own logs."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    secret: str
    token: str


class IdentityEndpoint:
    """Serves managed-identity tokens on loopback in a thread; a context manager."""

    def __init__(self, token: str) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.secret = secrets.token_hex(16)
        self._server.token = token
        self._thread: threading.Thread | None = None

    @property
    def env(self) -> dict[str, str]:
        """The variables that point DefaultAzureCredential at this endpoint."""
        host, port = self._server.server_address[:2]
        return {
            "IDENTITY_ENDPOINT": f"http://{host!s}:{port}/msi/token",
            "IDENTITY_HEADER": self._server.secret,
        }

    def __enter__(self) -> IdentityEndpoint:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="identity-endpoint", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __repr__(self) -> str:
        return f"<IdentityEndpoint {self.env['IDENTITY_ENDPOINT']}>"

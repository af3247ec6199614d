"""Shared pieces of the Azure Monitor tests: a movable clock, a credential, a TLS server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from azure.core.credentials import AccessToken

from orchestrator.core.serving import ServerThread, free_port
from simulator.tls import TLSFiles

T0 = 1_800_000_000 - 1_800_000_000 % 60
"""A minute boundary, 2027-01-15."""


class StaticCredential:
    """The smallest AsyncTokenCredential: azure-core's bearer policy only calls get_token."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("sim-token", int(time.time()) + 3600)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> StaticCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


@contextmanager
def serve_tls(app: Any, tls: TLSFiles) -> Iterator[str]:
    """Serve `app` over TLS on a free loopback port; yields its https URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        ssl_certfile=str(tls.cert_pem),
        ssl_keyfile=str(tls.key_pem),
        log_level="warning",
    )
    with ServerThread(config, name="monitor-test") as server:
        yield server.url

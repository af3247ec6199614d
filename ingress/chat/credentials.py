"""Upstream authentication: the PTU resource's API key, or an Entra ID token.

With `PTU_AZURE_OPENAI_API_KEY` every call carries `api-key`. Without it the
ingress asks `azure.identity.aio.DefaultAzureCredential` for a
`https://cognitiveservices.azure.com/.default` token and reuses it until five
minutes before it expires, so the hot path awaits nothing but a cached value.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from orchestrator.core.errors import MissingDependencyError
from orchestrator.core.settings import Settings
from orchestrator.core.startup import credential_error

log = structlog.get_logger(__name__)

SCOPE = "https://cognitiveservices.azure.com/.default"
REFRESH_MARGIN_S = 300.0


class _Token(Protocol):
    @property
    def token(self) -> str:
        """The bearer token."""

    @property
    def expires_on(self) -> int:
        """Expiry, epoch seconds."""


class TokenCredential(Protocol):
    """The part of azure-core's async credential the cache needs."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> _Token:
        """A token for `scopes`."""

    async def close(self) -> None:
        """Release the credential's resources."""


class UpstreamAuth(Protocol):
    """Headers that authenticate a call to the deployment."""

    async def headers(self) -> dict[str, str]:
        """Authentication headers for one call."""

    async def close(self) -> None:
        """Release resources."""


class ApiKeyAuth:
    """The resource key as the `api-key` header."""

    def __init__(self, key: str) -> None:
        self._headers = {"api-key": key}

    async def headers(self) -> dict[str, str]:
        """The `api-key` header."""
        return self._headers

    async def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return "<ApiKeyAuth>"


class EntraAuth:
    """A cached Entra ID bearer token, refreshed shortly before it expires."""

    def __init__(
        self, credential: TokenCredential, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._credential = credential
        self._clock = clock
        self._headers: dict[str, str] = {}
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    async def headers(self) -> dict[str, str]:
        """`Authorization: Bearer <token>`, fetching a new token only when due."""
        if self._clock() < self._refresh_at:
            return self._headers
        async with self._lock:
            if self._clock() >= self._refresh_at:
                token = await self._credential.get_token(SCOPE)
                self._headers = {"authorization": f"Bearer {token.token}"}
                self._refresh_at = token.expires_on - REFRESH_MARGIN_S
                log.info("entra_token_refreshed", expires_on=token.expires_on)
        return self._headers

    async def close(self) -> None:
        """Close the credential."""
        await self._credential.close()

    def __repr__(self) -> str:
        return f"<EntraAuth refresh_at={self._refresh_at:.0f}>"


def _entra() -> EntraAuth:
    try:
        from azure.identity.aio import DefaultAzureCredential
    except ImportError as exc:
        raise MissingDependencyError("azure-identity", "azure") from exc
    return EntraAuth(DefaultAzureCredential())


def upstream_auth(settings: Settings) -> UpstreamAuth:
    """ApiKeyAuth when a key is configured, else EntraAuth on DefaultAzureCredential."""
    if settings.azure_openai_api_key is not None:
        return ApiKeyAuth(settings.azure_openai_api_key.get_secret_value())
    return _entra()


def deployment_auths(settings: Settings, default: UpstreamAuth) -> dict[str, UpstreamAuth]:
    """Each deployment's credential: `default` unless its entry names `api_key_env`.

    Raises ConfigError when a named key variable is unset.
    """
    out: dict[str, UpstreamAuth] = {}
    by_key: dict[str, UpstreamAuth] = {}
    for d in settings.deployments:
        if d.api_key_env is None:
            out[d.name] = default
            continue
        key = settings.api_key_of(d)
        assert key is not None
        secret = key.get_secret_value()
        out[d.name] = by_key.setdefault(secret, ApiKeyAuth(secret))
    return out


async def check_credentials(auths: dict[str, UpstreamAuth], timeout_s: float = 30.0) -> None:
    """Obtain every credential once before serving; ConfigError naming the one that fails."""
    seen: set[int] = set()
    for name, auth in auths.items():
        if id(auth) in seen:
            continue
        seen.add(id(auth))
        try:
            async with asyncio.timeout(timeout_s):
                await auth.headers()
        except Exception as exc:  # any credential failure is a start-up error
            raise credential_error(f"deployment {name!r}", exc) from exc

"""Upstream authentication: the PTU resource's API key, or an Entra ID token.

With `PTU_AZURE_OPENAI_API_KEY` every call carries `api-key`. Without it every
call carries `Authorization: Bearer …` from `orchestrator.core.entra`, the same
cached `DefaultAzureCredential` token provider the worker hands the openai SDK,
so the hot path awaits nothing but a cached value.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from orchestrator.core.entra import EntraTokens, default_entra_tokens
from orchestrator.core.settings import Settings
from orchestrator.core.startup import credential_error, quiet_credential_chain


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
    """`Authorization: Bearer <token>` from a cached Entra ID token provider."""

    def __init__(self, tokens: EntraTokens) -> None:
        self._tokens = tokens

    async def headers(self) -> dict[str, str]:
        """The bearer header; the provider asks the credential only when the token is due."""
        return {"authorization": f"Bearer {await self._tokens.token()}"}

    async def close(self) -> None:
        """Close the credential."""
        await self._tokens.close()

    def __repr__(self) -> str:
        return f"<EntraAuth {self._tokens!r}>"


def upstream_auth(settings: Settings) -> UpstreamAuth:
    """ApiKeyAuth when a key is configured, else EntraAuth on DefaultAzureCredential."""
    if settings.azure_openai_api_key is not None:
        return ApiKeyAuth(settings.azure_openai_api_key.get_secret_value())
    return EntraAuth(default_entra_tokens())


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
                with quiet_credential_chain():
                    await auth.headers()
        except Exception as exc:  # any credential failure is a start-up error
            raise credential_error(f"deployment {name!r}", exc) from exc

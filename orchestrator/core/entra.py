"""Entra ID bearer tokens for Azure OpenAI, shared by the worker and the ingress.

Without `PTU_AZURE_OPENAI_API_KEY` both processes authenticate with
`DefaultAzureCredential` for the `https://cognitiveservices.azure.com/.default`
scope through `azure.identity.aio.get_bearer_token_provider` (AZURE_FACTS.md):
azure-core's bearer-token policy behind it caches the token and asks the
credential again only inside its refresh window (minutes before expiry), under a
lock, so concurrent calls await a cached value. The SDK is the `[azure]` extra
and is imported only when Entra ID is used.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from orchestrator.core.errors import MissingDependencyError

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"


class EntraTokens:
    """A cached bearer-token provider on one credential; `token()` is what the SDKs call."""

    def __init__(self, credential: AsyncTokenCredential) -> None:
        try:
            from azure.identity.aio import get_bearer_token_provider
        except ImportError as exc:
            raise MissingDependencyError("azure-identity", "azure") from exc
        self._credential = credential
        self.token: Callable[[], Awaitable[str]] = get_bearer_token_provider(
            credential, COGNITIVE_SERVICES_SCOPE
        )
        """The bearer token (without `Bearer `), fetched only when the cached one is due."""

    async def close(self) -> None:
        """Close the credential."""
        await self._credential.close()

    def __repr__(self) -> str:
        return f"<EntraTokens credential={type(self._credential).__name__}>"


def default_credential() -> AsyncTokenCredential:
    """`DefaultAzureCredential` (environment, workload or managed identity, CLI), async."""
    try:
        from azure.identity.aio import DefaultAzureCredential
    except ImportError as exc:
        raise MissingDependencyError("azure-identity", "azure") from exc
    return DefaultAzureCredential()


def default_entra_tokens() -> EntraTokens:
    """Tokens from `default_credential()`."""
    return EntraTokens(default_credential())

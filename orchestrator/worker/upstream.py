"""The Azure OpenAI client of the worker, with errors translated at this boundary.

`AzureUpstream` wraps `openai.AsyncAzureOpenAI` with the SDK's own retries off
(`max_retries=0`: the worker owns retries and the throttle), labels every call
with `x-ptu-priority`, reads response headers through `with_raw_response`, and
turns the SDK's exceptions into `orchestrator.core.errors` by type and status code:
an error answer as `calls.outcome.upstream_error` types it (429 → UpstreamThrottled
with its retry-after, 408 → UpstreamTimeout, 401/403/404 → UpstreamUnreachable), client
timeouts → UpstreamTimeout, no connection → UpstreamUnreachable.

A queued Responses API request (`responses`) goes to the resource's v1 surface,
`{endpoint}/openai/v1/responses`, which takes no `api-version` and names the
deployment in `model`: a copy of the same client (same credential, same pool) with
that base URL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

import openai
import structlog
from openai import omit

from orchestrator.calls.no_cookies import NoCookieJar
from orchestrator.calls.outcome import UpstreamResponse, upstream_error
from orchestrator.calls.signals import read_signals
from orchestrator.core.entra import EntraTokens, default_entra_tokens
from orchestrator.core.errors import (
    ConfigError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from orchestrator.core.schemas import PRIORITY_LABEL_HEADER

if TYPE_CHECKING:
    import httpx2
    from pydantic import SecretStr

    from orchestrator.core.settings import Settings

log = structlog.get_logger(__name__)

CONNECTION_FAILED_STATUS = 503
"""Status recorded when no response arrived at all (retryable, like a 5xx)."""

# fields the worker never forwards: the deployment is in the URL (a response's
# `model` is set to it), and a queued request is answered as one document, never streamed
_DROPPED_FIELDS = frozenset({"model", "messages", "stream", "stream_options"})
_RESPONSES_DROPPED = frozenset({"model", "stream", "stream_options"})
V1_PATH = "/openai/v1"


class Upstream(Protocol):
    """Sends one chat completion, or one response (Responses API), to a deployment."""

    async def chat(
        self,
        deployment: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """Call the deployment once, without retrying.

        Raises UpstreamThrottled (429), UpstreamTimeout (408 or no answer in
        time) or UpstreamError (any other failure, with its status and body).
        """

    async def responses(
        self,
        deployment: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """Create one response (Responses API) on the deployment; raises as `chat` does."""

    async def close(self) -> None:
        """Release the HTTP client and credentials."""


def connection_cause(exc: BaseException) -> str:
    """The innermost cause of a connection failure, one line (`ConnectError: [Errno 111] ...`)."""
    inner: BaseException = exc
    while inner.__cause__ is not None or inner.__context__ is not None:
        nxt = inner.__cause__ or inner.__context__
        assert nxt is not None
        inner = nxt
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {text}"[:200] if text else type(inner).__name__


def _error_body(response: httpx2.Response) -> dict[str, object]:
    try:
        data = json.loads(response.text)
    except ValueError:
        return {"error": {"code": str(response.status_code), "message": response.text[:500]}}
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return data
    return {"error": {"code": str(response.status_code), "message": str(data)[:500]}}


def map_error(exc: openai.OpenAIError) -> UpstreamError:
    """Translate an SDK exception by its type and status code."""
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamTimeout("upstream call timed out", status_code=408)
    if isinstance(exc, openai.APIStatusError):
        return upstream_error(
            exc.status_code, _error_body(exc.response), read_signals(exc.response.headers)
        )
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamUnreachable(
            "upstream unreachable",
            status_code=CONNECTION_FAILED_STATUS,
            cause=connection_cause(exc),
        )
    return UpstreamError(f"upstream client error: {type(exc).__name__}", status_code=500)


class AzureUpstream:
    """Chat completions against an Azure OpenAI resource (or the simulator)."""

    def __init__(
        self,
        client: openai.AsyncAzureOpenAI,
        *,
        timeout_s: float,
        credential: EntraTokens | None = None,
    ) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._credential = credential
        self.calls = 0
        self.endpoint = str(client.base_url)
        self._v1: openai.AsyncAzureOpenAI | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        priority: str = "low",
        http_client: httpx2.AsyncClient | None = None,
        endpoint: str | None = None,
        api_key: SecretStr | None = None,
    ) -> AzureUpstream:
        """Client for `endpoint` (default: the global one); the key if set, else Entra ID."""
        endpoint = endpoint or settings.azure_openai_endpoint
        if not endpoint:
            raise ConfigError("PTU_AZURE_OPENAI_ENDPOINT: required by the worker")
        key = api_key if api_key is not None else settings.azure_openai_api_key
        common: dict[str, Any] = {
            "azure_endpoint": endpoint,
            "api_version": settings.azure_openai_api_version,
            "max_retries": 0,
            "timeout": settings.request_timeout_s,
            "default_headers": {PRIORITY_LABEL_HEADER: priority},
            # the SDK's own client keeps cookies: one client serves every tenant (calls/no_cookies)
            "http_client": http_client or openai.DefaultAsyncHttpxClient(cookies=NoCookieJar()),
        }
        tokens: EntraTokens | None = None
        if key is not None:
            client = openai.AsyncAzureOpenAI(api_key=key.get_secret_value(), **common)
        else:
            tokens = default_entra_tokens()
            client = openai.AsyncAzureOpenAI(azure_ad_token_provider=tokens.token, **common)
        up = cls(client, timeout_s=settings.request_timeout_s, credential=tokens)
        up.endpoint = endpoint
        return up

    @property
    def client(self) -> openai.AsyncAzureOpenAI:
        """The SDK client, for the resource's other APIs (a Batch deployment's Files + Batches)."""
        return self._client

    async def check_credential(self) -> None:
        """Obtain an Entra ID token once (a no-op with an API key); raises what the SDK raises."""
        if self._credential is not None:
            await self._credential.token()

    async def chat(
        self,
        deployment: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """Call `deployment` once with `body`; see `Upstream.chat`."""
        extra = {k: v for k, v in body.items() if k not in _DROPPED_FIELDS}
        self.calls += 1
        try:
            raw = await self._client.chat.completions.with_raw_response.create(
                model=deployment,
                messages=cast(Any, body.get("messages", [])),
                extra_body=extra or None,
                extra_headers=dict(headers) if headers else None,
                timeout=self._timeout_s,
            )
        except openai.OpenAIError as exc:
            raise map_error(exc) from exc
        return _answer(raw)

    async def responses(
        self,
        deployment: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """Create one response on `deployment` (v1 surface); see `Upstream.responses`."""
        if self._v1 is None:
            base = str(self._client.base_url).rstrip("/").removesuffix("/openai") + V1_PATH
            self._v1 = self._client.with_options(base_url=base)
        extra = {k: v for k, v in body.items() if k not in _RESPONSES_DROPPED}
        self.calls += 1
        try:
            raw = await self._v1.responses.with_raw_response.create(
                model=deployment,
                extra_body=extra or None,
                extra_headers=dict(headers) if headers else None,
                extra_query={"api-version": omit},  # the v1 surface is versionless
                timeout=self._timeout_s,
            )
        except openai.OpenAIError as exc:
            raise map_error(exc) from exc
        return _answer(raw)

    async def close(self) -> None:
        """Close the HTTP client and the Entra credential, if any."""
        await self._client.close()
        if self._credential is not None:
            await self._credential.close()

    def __repr__(self) -> str:
        return f"<AzureUpstream endpoint={self._client.base_url} calls={self.calls}>"


def _answer(raw: Any) -> UpstreamResponse:
    """The parsed body and headers of a successful raw SDK response."""
    try:
        data = json.loads(raw.text)
    except ValueError as exc:
        raise UpstreamError(
            "upstream answered with a body that is not JSON", status_code=502
        ) from exc
    if not isinstance(data, dict):
        raise UpstreamError("upstream answered with a non-object body", status_code=502)
    return UpstreamResponse(
        body=data,
        status_code=raw.status_code,
        request_id=raw.headers.get("apim-request-id") or raw.headers.get("x-request-id"),
        signals=read_signals(raw.headers),
    )

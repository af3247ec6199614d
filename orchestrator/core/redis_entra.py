"""Entra ID tokens as the Redis password (`PTU_REDIS_AUTH=entra`): no access key anywhere.

Azure Managed Redis (and Azure Cache for Redis with Entra authentication) takes
`AUTH <object id> <token>`, the token issued for `https://redis.azure.com/.default`, and
disconnects a connection whose token expired unless the client sent `AUTH` again with a
fresh one before. redis-py has both halves: a connection authenticates with what its
`credential_provider` gives, and a `StreamingCredentialProvider`'s `on_next` callbacks
re-authenticate every pooled connection (idle ones at once, busy ones when released).

`EntraRedisCredentials` is that provider on an `azure.identity.aio` credential
(`DefaultAzureCredential`: workload identity on AKS). It fetches a token when a
connection asks and none is cached or the cached one is due, and a background task
(started by the first request, so inside the process's event loop) fetches the next one
`refresh_margin_s` before expiry, or at half the lifetime of a short token, and hands it
to redis-py for the re-`AUTH`. A failed refresh is logged and retried with backoff while
the current token lasts. The username is the token's `oid` claim (read from the JWT
payload; the token is the server's to verify). The task ends (and closes the credential)
when the event loop cancels it at shutdown, or on `aclose()`.

The SDK is the `[azure]` extra, imported only here and only when the mode is chosen.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from redis.auth.token import SimpleToken
from redis.credentials import StreamingCredentialProvider
from redis.exceptions import RedisError

from orchestrator.core.entra import default_credential
from orchestrator.core.errors import ConfigError

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken
    from azure.core.credentials_async import AsyncTokenCredential

log = structlog.get_logger(__name__)

REDIS_SCOPE = "https://redis.azure.com/.default"
REFRESH_MARGIN_S = 300.0
RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)


class EntraTokenUnavailable(RedisError):
    """No Entra ID token for Redis: a `RedisError`, so every store's boundary reports it as
    Redis being unavailable (and the start-up check in one line), and no `ConnectionError`,
    so redis-py does not retry it as a network blip."""


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT's payload, unverified (ConfigError when it is no JWT)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ConfigError("PTU_REDIS_AUTH=entra: the credential's token is not a JWT")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except ValueError as exc:
        raise ConfigError("PTU_REDIS_AUTH=entra: the token's payload is not JSON") from exc
    if not isinstance(claims, dict):
        raise ConfigError("PTU_REDIS_AUTH=entra: the token's payload is not an object")
    return claims


def refresh_delay(expires_on: float, now: float, margin_s: float = REFRESH_MARGIN_S) -> float:
    """Seconds from `now` until the token expiring at `expires_on` should be replaced.

    `margin_s` before expiry; a token living less than twice the margin is replaced at half
    its remaining life, so a short-lived token is never used up before its successor.
    """
    left = expires_on - now
    return max(0.0, left - margin_s if left >= 2 * margin_s else left / 2)


class EntraRedisCredentials(StreamingCredentialProvider):
    """redis-py credentials from Entra ID tokens, renewed before expiry (see module doc)."""

    def __init__(
        self,
        credential: AsyncTokenCredential,
        *,
        scope: str = REDIS_SCOPE,
        refresh_margin_s: float = REFRESH_MARGIN_S,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._credential = credential
        self._scope = scope
        self._margin = refresh_margin_s
        self._clock = clock
        self._sleep = sleep
        self._token: AccessToken | None = None
        self._user = ""
        self._due_at = 0.0
        self._lock = asyncio.Lock()
        self._next: list[Callable[[Any], Any]] = []
        self._errors: list[Callable[[Exception], Any]] = []
        self._refresher: asyncio.Task[None] | None = None
        self.refreshes = 0

    def is_streaming(self) -> bool:
        """True: renewed tokens are pushed to the registered connections."""
        return True

    def on_next(self, callback: Callable[[Any], Any]) -> None:
        """Call `callback(token)` with each renewed token (redis-py re-authenticates)."""
        self._next.append(callback)

    def on_error(self, callback: Callable[[Exception], Any]) -> None:
        """Call `callback(error)` when the token expired and no renewal succeeded."""
        self._errors.append(callback)

    def get_credentials(self) -> tuple[str, str]:
        """Synchronous clients are not used by the processes: refuse clearly."""
        raise ConfigError("PTU_REDIS_AUTH=entra works with the asyncio client only")

    async def get_credentials_async(self) -> tuple[str, str]:
        """(object id, token) for a connection's AUTH; fetches only when due."""
        async with self._lock:
            token = self._token
            if token is None or self._clock() >= self._due_at:
                token = await self._fetch()
            self._start()
            return self._user, token.token

    async def _fetch(self) -> AccessToken:
        try:
            token = await self._credential.get_token(self._scope)
        except Exception as exc:  # the credential chain's errors are many and all mean this
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise EntraTokenUnavailable(
                f"PTU_REDIS_AUTH=entra: no Entra ID token for {self._scope} ({first})"
            ) from exc
        user = token_claims(token.token).get("oid")
        if not isinstance(user, str) or not user:
            raise ConfigError("PTU_REDIS_AUTH=entra: the token carries no oid claim")
        self._token, self._user = token, user
        now = self._clock()
        self._due_at = now + refresh_delay(token.expires_on, now, self._margin)
        return token

    def _start(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        failures = 0
        try:
            while True:
                token = self._token
                if token is None:
                    return
                wait = max(0.0, self._due_at - self._clock())
                retry = RETRY_S[min(failures, len(RETRY_S)) - 1] if failures else 0.0
                await self._sleep(retry or wait)
                try:
                    async with self._lock:
                        fresh = await self._fetch()
                except (EntraTokenUnavailable, ConfigError) as exc:  # retried, never ends the loop
                    failures += 1
                    expired = token.expires_on <= self._clock()
                    log.error("redis_token_refresh_failed", error=str(exc), expired=expired)
                    if expired:
                        await self._notify(self._errors, exc)
                    continue
                failures = 0
                self.refreshes += 1
                log.info("redis_token_refreshed", expires_on=int(fresh.expires_on))
                pushed = SimpleToken(
                    fresh.token, fresh.expires_on * 1000, self._clock() * 1000, {"oid": self._user}
                )
                await self._notify(self._next, pushed)
        finally:
            await self._credential.close()

    async def _notify(self, callbacks: list[Callable[[Any], Any]], value: Any) -> None:
        for callback in callbacks:
            try:
                outcome = callback(value)
                if asyncio.iscoroutine(outcome):
                    await outcome
            except Exception as exc:  # one pool's failed re-AUTH must not stop the others
                log.warning("redis_reauth_failed", error=str(exc))

    async def aclose(self) -> None:
        """Stop renewing and close the credential."""
        task, self._refresher = self._refresher, None
        if task is None:
            await self._credential.close()
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    def __repr__(self) -> str:
        left = None if self._token is None else round(self._token.expires_on - self._clock())
        return f"<EntraRedisCredentials user={self._user or '?'} expires_in_s={left}>"


def default_redis_credentials() -> EntraRedisCredentials:
    """Credentials from `entra.default_credential()` (workload or managed identity, CLI...)."""
    return EntraRedisCredentials(default_credential())

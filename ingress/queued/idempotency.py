"""`Idempotency-Key` on low-priority POSTs: a retried POST is answered, never queued twice.

A client whose POST timed out cannot know whether the ingress accepted it; sending it
again without a key queues (and pays for) it twice. With the same `Idempotency-Key`
header (the name of Stripe's API and of the IETF httpapi draft) on every attempt, the
first attempt claims the key and the others answer what the first one answers: the same
request id and `Location` (202), the same background Response object, or, for a waiting
call, the wait for the same request. The `openai` SDK sends no such key by itself (its
`_idempotency_header` is unset on `OpenAI` and `AzureOpenAI`); a client passes one with
`extra_headers`, which every retry of that call repeats.

The key is a tenant's (`keys.idempotency`, in the tenant's slot, the client's string as
its SHA-256), claimed with `SET NX` before anything is written: `pending:<id>` for at most
`PENDING_S` while the request is accepted, then `<id> <fingerprint>` for the request's
life (its deadline plus `PTU_REPLY_TTL_S`, as its record). A failed acceptance removes the
claim (only its own: compare-and-delete), so the retry is accepted afresh. An attempt that
finds the claim pending gets 409 with `retry-after: 1` (the SDKs retry 409); one whose body
differs from the first (another deployment, API or body under the same key) gets 422.
An ingress that dies between the claim and its end leaves `pending` until `PENDING_S`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import structlog

from ingress.http.errors import ApiError
from orchestrator.core import keys
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.redis_replies import text
from orchestrator.core.schemas import QueuedRequest

log = structlog.get_logger(__name__)

HEADER = "idempotency-key"
MAX_KEY_CHARS = 255
PENDING_S = 60
"""How long a claim stays `pending`: longer than an acceptance takes (its Redis calls time
out sooner), short enough that a key whose ingress died frees itself."""
_PENDING = "pending:"

# KEYS: the claim. ARGV: the value to remove. Deletes only a claim that is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def key_of(value: str | None) -> str | None:
    """The `Idempotency-Key` header's value, None when absent; 400 when unusable."""
    if value is None:
        return None
    if not 0 < len(value) <= MAX_KEY_CHARS or not value.isprintable():
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable characters",
            param=HEADER,
        )
    return value


def fingerprint(deployment: str, endpoint: str, body: dict[str, Any]) -> str:
    """What a retry must repeat to be the same request: deployment, API and body."""
    canonical = json.dumps([deployment, endpoint, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class Idempotency:
    """Claims tenants' idempotency keys for the requests they accept (see module doc)."""

    __slots__ = ("_redis", "_release", "replays", "reply_ttl_s")

    def __init__(self, redis: aioredis.Redis, reply_ttl_s: int) -> None:
        self._redis = redis
        self._release = redis.register_script(_RELEASE)
        self.reply_ttl_s = reply_ttl_s
        self.replays = 0
        """Retries answered with an earlier request (for tests and the repr)."""

    async def once(
        self, key: str, print_: str, req: QueuedRequest, accept: Callable[[], Awaitable[None]]
    ) -> str | None:
        """Run `accept` (which queues `req`) unless `req.tenant` already used `key`: None
        when `req` was accepted now, else the id of the request the key stands for."""
        name = keys.idempotency(req.tenant, hashlib.sha256(key.encode()).hexdigest())
        pending = _PENDING + req.id
        earlier = await self._claim(name, pending, print_)
        if earlier is not None:
            self.replays += 1
            log.info("idempotent_replay", request_id=earlier, tenant=req.tenant)
            return earlier
        try:
            await accept()
        except BaseException:
            await asyncio.shield(self._drop(name, pending))
            raise
        ttl_s = max(1, math.ceil(req.deadline - req.enqueued_at) + self.reply_ttl_s)
        try:
            await self._settle(name, f"{req.id} {print_}", ttl_s)
        except StoreUnavailable as exc:
            # accepted all the same: the claim stays pending (retries get 409) until it expires
            log.warning("idempotency_settle_failed", request_id=req.id, error=str(exc))
        return None

    @redis_boundary("idempotency keys")
    async def _claim(self, name: str, pending: str, print_: str) -> str | None:
        if await self._redis.set(name, pending, nx=True, ex=PENDING_S):
            return None
        raw = await self._redis.get(name)
        if raw is None:  # released or expired in between: try once more
            if await self._redis.set(name, pending, nx=True, ex=PENDING_S):
                return None
            raw = await self._redis.get(name)
        value = text(raw) if raw is not None else _PENDING
        if value.startswith(_PENDING):
            raise ApiError(
                409,
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is being accepted; retry",
                param=HEADER,
                headers={"retry-after": "1"},
            )
        request_id, _, first = value.partition(" ")
        if first != print_:
            raise ApiError(
                422,
                "idempotency_key_reused",
                f"this Idempotency-Key was used by request {request_id} with another body",
                param=HEADER,
            )
        return request_id

    @redis_boundary("idempotency keys")
    async def _settle(self, name: str, value: str, ttl_s: int) -> None:
        await self._redis.set(name, value, ex=ttl_s)

    async def _drop(self, name: str, pending: str) -> None:
        try:
            with redis_boundary("idempotency keys"):
                await self._release(keys=[name], args=[pending])
        except StoreUnavailable as exc:
            log.warning("idempotency_release_failed", error=str(exc))

    def __repr__(self) -> str:
        return f"<Idempotency replays={self.replays}>"

"""Detecting a wiped Redis: the data set's incarnation marker.

Redis without persistence (or a failover to an empty replica) comes back empty, and
every queued request, record and result is gone. Nothing in the data says so: a
poller would get `404 request_not_found`, the same as for a typo. So the first
process to see a Redis writes `keys.INCARNATION` once (HSETNX: a random 8-hex id
and the time), and every long-lived process re-reads it every second or so. When
the id it knew has changed or vanished, the data it knew is gone: it logs
`redis_data_lost` at error, counts it (`ptu_redis_data_lost_total`), and records the
loss in the new marker (`lost_from`, `lost_at`), which `ptu status` shows.

Request ids start with the incarnation id that issued them (`req_<id><rest>`), so
a request whose record is missing and whose id names an older incarnation was
lost with that data, and answers `410 request_lost` instead of 404.

A partial loss leaves the marker in place: a replica promoted while a few seconds
behind its master lacks only the writes of those seconds. So an id also proves that
this data set issued it, to whom and when: `req_` + incarnation (8 hex) + issue time
(8 hex, epoch seconds) + 8 random hex + an 8-hex HMAC of the rest and the tenant, keyed
by `id_key`, a random secret kept in the marker (so every process shares it and a wipe
replaces it). `issued(id, tenant)` checks it: an id it vouches for whose record is gone
was accepted and lost (`ingress/queued/requests`), never a typo; another tenant's or a
made-up id still answers 404.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from orchestrator.core import keys
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.redis_replies import text
from orchestrator.core.runtime import every

log = structlog.get_logger(__name__)

ID_LEN = 8


@dataclass(frozen=True, slots=True)
class Marker:
    """What the incarnation key says."""

    id: str
    since: float
    lost_from: str | None = None
    lost_at: float | None = None


@redis_boundary("incarnation marker")
async def read(redis: aioredis.Redis) -> Marker | None:
    """The current marker, or None when the key does not exist."""
    raw = await redis.hgetall(keys.INCARNATION)
    fields = {text(k): text(v) for k, v in (raw or {}).items()}
    if "id" not in fields:
        return None
    return Marker(
        id=fields["id"],
        since=float(fields.get("since", "0")),
        lost_from=fields.get("lost_from") or None,
        lost_at=float(fields["lost_at"]) if fields.get("lost_at") else None,
    )


class Incarnation:
    """One process's view of the Redis data set's identity; `check` it periodically."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        on_loss: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._on_loss = on_loss
        self._clock = clock
        self.current: str | None = None
        self.losses = 0
        self.lost: set[str] = set()
        """Incarnations known to have been wiped (seen here or recorded in the marker)."""
        self._id_key: bytes | None = None

    @redis_boundary("incarnation marker")
    async def check(self) -> str:
        """Create the marker if missing; report a loss when the id changed. Returns the id.

        Raises StoreUnavailable when Redis cannot be reached (nothing concluded).
        """
        candidate = uuid.uuid4().hex[:ID_LEN]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(keys.INCARNATION, "id", candidate)
            pipe.hsetnx(keys.INCARNATION, "since", repr(self._clock()))
            pipe.hsetnx(keys.INCARNATION, "id_key", uuid.uuid4().hex)
            pipe.hget(keys.INCARNATION, "id")
            pipe.hget(keys.INCARNATION, "lost_from")
            pipe.hget(keys.INCARNATION, "id_key")
            _, _, _, raw, lost_from, id_key = await pipe.execute()
        self._id_key = text(id_key).encode() if id_key is not None else None
        if lost_from is not None:
            self.lost.add(text(lost_from))
        now_id = text(raw)
        known, self.current = self.current, now_id
        if known is not None and known != now_id:
            self.losses += 1
            self.lost.add(known)
            await self._redis.hset(
                keys.INCARNATION, mapping={"lost_from": known, "lost_at": repr(self._clock())}
            )
            log.error(
                "redis_data_lost",
                previous=known,
                current=now_id,
                hint="Redis came back empty: queued requests and results are gone; "
                "run it with AOF (appendfsync everysec)",
            )
            if self._on_loss is not None:
                self._on_loss()
        return now_id

    def new_request_id(self, tenant: str) -> str:
        """`req_` + 32 hex digits: this incarnation, the time, random, the signature (see
        the module docstring); random after the incarnation until the marker was read."""
        rest = uuid.uuid4().hex
        if self.current is None or self._id_key is None:
            return "req_" + (self.current or "") + rest[len(self.current or "") :]
        body = f"{self.current}{int(self._clock()) & 0xFFFFFFFF:08x}{rest[:ID_LEN]}"
        return "req_" + body + self._sign(body, tenant)

    def issued(self, request_id: str, tenant: str) -> float | None:
        """When this data set issued `request_id` to `tenant`, or None when it did not (a
        random, mistyped or another tenant's id, or one from before the marker was read)."""
        if self._id_key is None or not request_id.startswith("req_") or len(request_id) != 36:
            return None
        body, signature = request_id[4:28], request_id[28:]
        if not hmac.compare_digest(signature, self._sign(body, tenant)):
            return None
        return float(int(body[ID_LEN : 2 * ID_LEN], 16))

    def _sign(self, body: str, tenant: str) -> str:
        assert self._id_key is not None
        mac = hmac.new(self._id_key, f"{body}|{tenant}".encode(), hashlib.sha256)
        return mac.hexdigest()[:ID_LEN]

    def issued_before(self, request_id: str) -> bool:
        """True when `request_id` was issued by an incarnation known to have been wiped
        (so a random or mistyped id still answers 404)."""
        if not request_id.startswith("req_") or len(request_id) != 36:
            return False
        return request_id[4 : 4 + ID_LEN] in self.lost

    def __repr__(self) -> str:
        return f"<Incarnation current={self.current} losses={self.losses}>"


async def watch_incarnation(
    incarnation: Incarnation,
    interval_s: float = 1.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """`check` every `interval_s` until cancelled (an unreachable Redis is logged, retried)."""

    async def check() -> None:
        await incarnation.check()

    await every(
        interval_s, check, event="incarnation_check_failed", errors=(StoreUnavailable, OSError),
        first="now", sleep=sleep,
    )  # fmt: skip

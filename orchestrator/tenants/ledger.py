"""Token usage per tenant in Redis: hourly records for `ptu usage`, counters for the limits.

Every finished call (high priority at the ingress, low priority at the worker)
is recorded once, with its actual usage, in one MULTI on the tenant's own keys (the
records of a tenant that arrive while its last write is in flight summed in one):
the hour's usage hash (`<deployment>|<priority>|<kind>` fields, kept
`RETENTION_S`), the minute counter the tokens-per-minute limit reads, and, when
the tenant has a quota, the period counter. Every ingress replica and worker
shares these keys, so the limits hold across replicas.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog

from orchestrator.core import keys
from orchestrator.core.batching import Batcher
from orchestrator.core.boundary import redis_boundary
from orchestrator.tenants.config import Tenancy
from orchestrator.tenants.limits import MINUTE_S, Refusal, decide, period_bounds

log = structlog.get_logger(__name__)

HOUR_S = 3600
RETENTION_S = 400 * 86_400
"""Hourly usage is kept a little over a year, for chargeback."""
KINDS = ("prompt", "cached", "completion", "requests")


@dataclass(frozen=True, slots=True)
class Usage:
    """The tokens of one finished request."""

    tenant: str
    deployment: str
    priority: str
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total(self) -> int:
        """Prompt plus completion tokens: what limits and quotas count."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Usage of one tenant on one deployment at one priority in one UTC hour."""

    tenant: str
    deployment: str
    priority: str
    hour: int
    """Epoch seconds of the hour's start."""
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    requests: int


@dataclass(frozen=True, slots=True)
class Counters:
    """What a tenant's limits read: the minute counters and the quota period's."""

    minute: int
    """The current minute (epoch seconds // 60)."""
    period: int
    """Start of the current quota period (0: no quota)."""
    previous_minute: int
    current_minute: int
    period_used: int


class UsageLedger:
    """Records usage and answers the limit checks, on Redis."""

    def __init__(
        self, redis: aioredis.Redis, tenancy: Tenancy, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._redis = redis
        self._tenancy = tenancy
        self._clock = clock
        self._registered: set[str] = set()
        self._expiring: dict[str, set[str]] = {}
        """Per tenant, its current keys whose expiry this process has set."""
        self._batcher: Batcher[str, Usage] = Batcher(self._write)

    async def record(self, use: Usage) -> None:
        """Add one request's usage to its hour, minute and quota period; returns once written.

        Records of a tenant that arrive while one of its writes is in flight go together in
        the next (`core/batching`): one MULTI per tenant and batch, the counts summed.
        """
        await self._batcher.submit(use.tenant, use)

    @redis_boundary("usage ledger")
    async def _write(self, tenant: str, uses: Sequence[Usage]) -> None:
        """One MULTI on `tenant`'s keys for `uses`; an expiry is set once per key and process
        (again when the key turns out new: a wiped Redis)."""
        now = self._clock()
        usage_key = keys.tenant_usage(tenant, int(now // HOUR_S))
        minute_key = keys.tenant_minute(tenant, int(now // MINUTE_S))
        counts: dict[str, int] = {}
        for use in uses:
            base = f"{use.deployment}|{use.priority}|"
            amounts = (use.prompt_tokens, use.cached_tokens, use.completion_tokens, 1)
            for kind, n in zip(KINDS, amounts, strict=True):
                if n:
                    counts[base + kind] = counts.get(base + kind, 0) + n
        total = sum(use.total for use in uses)
        expiries: list[tuple[str, int, bool]] = [
            (usage_key, RETENTION_S, False),
            (minute_key, 3 * MINUTE_S, False),
        ]
        config = self._tenancy.config(tenant)
        async with self._redis.pipeline(transaction=True) as pipe:
            for name, n in counts.items():
                pipe.hincrby(usage_key, name, n)
            pipe.incrby(minute_key, total)
            if config.token_quota is not None:
                start, end = period_bounds(config.token_quota_period, now)
                quota_key = keys.tenant_quota(tenant, start)
                pipe.incrby(quota_key, total)
                expiries.append((quota_key, end + 86_400, True))
            for name, seconds, at in expiries:
                if name not in self._expiring.get(tenant, ()):
                    _expire(pipe, name, seconds, at)
            replies = await pipe.execute()
        known = self._expiring.get(tenant, set())
        fresh = _fresh(replies, list(counts.values()), total, [e[0] for e in expiries])
        missing = [e for e in expiries if e[0] in known and e[0] in fresh]
        if missing:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name, seconds, at in missing:
                    _expire(pipe, name, seconds, at)
                await pipe.execute()
        self._expiring[tenant] = {name for name, _, _ in expiries}
        if tenant not in self._registered:
            await self._redis.sadd(keys.USAGE_TENANTS, tenant)
            self._registered.add(tenant)

    @redis_boundary("usage ledger")
    async def record_once(self, use: Usage, request_id: str, ttl_s: int = 86_400) -> bool:
        """`record` a gateway's record at most once per request id (False: seen before).

        The marker is set first: a crash between the two loses that record rather than
        counting a redelivered one twice.
        """
        marker = keys.tenant_gateway_seen(use.tenant, request_id)
        if not await self._redis.set(marker, b"1", nx=True, ex=ttl_s):
            return False
        await self.record(use)
        return True

    @redis_boundary("usage ledger")
    async def refusal(self, tenant: str, need: int) -> Refusal | None:
        """Why `tenant` may not send `need` more tokens now; None (no Redis call) if unlimited."""
        config = self._tenancy.config(tenant)
        if not config.limited:
            return None
        now = self._clock()
        counters = await self.counters(tenant, now)
        return decide(
            config,
            previous_minute=counters.previous_minute,
            current_minute=counters.current_minute,
            period_used=counters.period_used,
            need=need,
            now=now,
        )

    @redis_boundary("usage ledger")
    async def counters(self, tenant: str, now: float) -> Counters:
        """The counters `tenant`'s limits read at `now` (one pipelined round trip)."""
        config = self._tenancy.config(tenant)
        minute = int(now // MINUTE_S)
        names = [keys.tenant_minute(tenant, minute - 1), keys.tenant_minute(tenant, minute)]
        period = 0
        if config.token_quota is not None:
            period, _ = period_bounds(config.token_quota_period, now)
            names.append(keys.tenant_quota(tenant, period))
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.get(name)
            values = [int(v or 0) for v in await pipe.execute()]
        return Counters(minute, period, values[0], values[1], values[2] if len(values) > 2 else 0)

    @redis_boundary("usage ledger")
    async def rows(self, since: float, until: float) -> list[UsageRow]:
        """Every recorded hour that starts in [since, until), for every tenant."""
        tenants = sorted(
            {_text(t) for t in await self._redis.smembers(keys.USAGE_TENANTS)}
            | set(self._tenancy.names())
        )
        # every hour that overlaps [since, until): usage is kept at hourly resolution
        hours = list(range(int(since // HOUR_S), math.ceil(until / HOUR_S)))
        out: list[UsageRow] = []
        for tenant in tenants:
            async with self._redis.pipeline(transaction=False) as pipe:
                for h in hours:
                    pipe.hgetall(keys.tenant_usage(tenant, h))
                replies = await pipe.execute()
            for h, fields in zip(hours, replies, strict=True):
                out.extend(_rows(tenant, h, fields))
        return out

    def __repr__(self) -> str:
        return f"<UsageLedger {self._tenancy!r}>"


def _rows(tenant: str, hour: int, fields: dict[bytes | str, bytes | str]) -> Iterable[UsageRow]:
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for raw_name, raw_value in fields.items():
        deployment, _, rest = _text(raw_name).rpartition("|")
        deployment, _, priority = deployment.rpartition("|")
        if rest not in KINDS or not deployment:
            continue
        counts.setdefault((deployment, priority), dict.fromkeys(KINDS, 0))[rest] = int(raw_value)
    for (deployment, priority), c in sorted(counts.items()):
        yield UsageRow(
            tenant, deployment, priority, hour * HOUR_S,
            c["prompt"], c["cached"], c["completion"], c["requests"],
        )  # fmt: skip


def _fresh(
    replies: Sequence[Any], counts: Sequence[int], total: int, names: Sequence[str]
) -> set[str]:
    """Keys of a MULTI's `names` (usage hash, minute, quota) that a counter shows new: its
    value after the write is what was just added (Redis was wiped since their expiry)."""
    fresh = {names[0]} if any(r == n for r, n in zip(replies, counts, strict=False)) else set()
    for name, reply in zip(names[1:], replies[len(counts) :], strict=False):
        if reply == total:
            fresh.add(name)
    return fresh


def _expire(pipe: Any, name: str, seconds: int, at: bool) -> None:
    """Queue an expiry: in `seconds`, or at the epoch second `seconds` when `at`."""
    if at:
        pipe.expireat(name, seconds)
    else:
        pipe.expire(name, seconds)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

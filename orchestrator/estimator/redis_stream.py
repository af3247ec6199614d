"""The token-event consumer behind `ptu estimator`: `TOKEN_EVENTS` into the estimate.

Reads the stream with a consumer group (several estimators share the work),
applies each event with the idempotent `EstimateStore.record`, and acknowledges
only after applying, so a crash redelivers rather than loses (own pending
entries on restart, a dead consumer's through XAUTOCLAIM). Blocking reads stay
under redis-py's default 5 s socket timeout (AZURE_FACTS.md §8). After every
read the estimator heartbeats with the newest entry id it has folded in, which
is how readers detect a dead or lagging estimator (see `estimate.py`).

Entries hold our `TokenEvent` JSON or the APIM `log-to-eventhub` token record
`{id, timestamp, deploymentName, promptTokens, responseTokens, totalTokens}`
(AZURE_FACTS.md §7), with the `tenant` our policy adds, mapped to a `complete` event
that also goes to the tenant's usage (`estimator/usage`). Entries older than
`horizon_s` by their stream id (server time) are acknowledged unapplied: their
charge has long drained, and replaying a backlog at full weight would only
inflate the estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import structlog
from pydantic import ValidationError

from orchestrator.core import keys, redis_replies
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.errors import StoreUnavailable, UtilisationUnavailable
from orchestrator.core.retry import outage_delay_s
from orchestrator.core.runtime import Pacing, pause
from orchestrator.core.schemas import TokenEvent
from orchestrator.estimator.usage import record_gateway_usage
from orchestrator.tenants.config import DEFAULT_TENANT, is_tenant_name
from orchestrator.tenants.ledger import UsageLedger
from orchestrator.utilisation.estimate.store import EVENT_FIELD, EstimateStore

log = structlog.get_logger(__name__)

GROUP = "estimator"


_DOTNET_FORMATS = ("%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %H:%M:%S")
"""`DateTime.ToString()` under the invariant culture, as APIM policy expressions print it."""


def _parse_date(text: str) -> datetime | None:
    with contextlib.suppress(ValueError):  # not ISO 8601: try the .NET formats
        return datetime.fromisoformat(text)
    for fmt in _DOTNET_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def _timestamp(value: Any, default: float) -> float:
    """Epoch seconds from a number, an ISO 8601 or a .NET invariant date string (UTC)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    parsed = _parse_date(str(value or "").strip())
    if parsed is None:
        return default
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


MALFORMED_EVENT = (ValueError, KeyError, TypeError, ValidationError, RecursionError)
"""What `parse_event` raises for a body that is not a token event (deep JSON: RecursionError)."""


def parse_event(raw: str, *, default_timestamp: float) -> TokenEvent:
    """A TokenEvent from our JSON or APIM's token record; raises ValueError if neither."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("token event is not a JSON object")
    if "deploymentName" not in data:
        return TokenEvent.model_validate(data)
    prompt = int(data.get("promptTokens") or 0)
    completion = data.get("responseTokens")
    if completion is None:
        completion = max(0, int(data.get("totalTokens") or 0) - prompt)
    tenant = str(data.get("tenant") or DEFAULT_TENANT)
    if not is_tenant_name(tenant):
        raise ValueError(f"tenant {tenant[:80]!r} is not a tenant name")
    return TokenEvent(
        request_id=str(data["id"]),
        deployment=str(data["deploymentName"]),
        tenant=tenant,
        phase="complete",
        timestamp=_timestamp(data.get("timestamp"), default_timestamp),
        prompt_tokens=prompt,
        completion_tokens=int(completion),
    )


def _entry_time(entry_id: str) -> float:
    return int(entry_id.split("-", 1)[0]) / 1000.0


@dataclass(frozen=True, slots=True)
class StreamReading:
    """How the estimator reads `TOKEN_EVENTS`: blocking reads, batch, reclaim, horizon."""

    block_ms: int = 1000
    """Under redis-py's default 5 s socket timeout (AZURE_FACTS.md §8)."""
    batch: int = 200
    claim_idle_s: float = 30.0
    """A dead consumer's entries are taken over after this long."""
    horizon_s: float = 300.0
    """Entries older than this (by stream id) are acknowledged unapplied."""


class Estimator:
    """Folds the `TOKEN_EVENTS` stream into an `EstimateStore`."""

    def __init__(
        self,
        redis: aioredis.Redis,
        store: EstimateStore,
        *,
        consumer: str,
        reading: StreamReading | None = None,
        pacing: Pacing | None = None,
        usage: UsageLedger | None = None,
    ) -> None:
        reading = reading or StreamReading()
        pacing = pacing or Pacing()
        if not 0 < reading.block_ms < 5000:
            raise ValueError("block_ms must be between 0 and 5000 (redis-py socket timeout)")
        self._redis = redis
        self._store = store
        self._usage = usage
        self.consumer = consumer
        self._block_ms = reading.block_ms
        self._batch = reading.batch
        self._claim_idle_ms = int(reading.claim_idle_s * 1000)
        self._horizon_s = reading.horizon_s
        self._sleep = pacing.sleep
        self._rand = pacing.rand
        self._group_ready = False
        self._own_pending = True  # first drain our own unacknowledged entries (restart)
        self._claimed_at = 0.0
        self.applied = 0
        self.skipped = 0

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        await redis_replies.ensure_group(self._redis, keys.TOKEN_EVENTS, GROUP)
        self._group_ready = True

    async def _next_entries(self) -> list[redis_replies.Entry]:
        if self._own_pending:
            reply = await self._redis.xreadgroup(
                GROUP, self.consumer, {keys.TOKEN_EVENTS: "0"}, count=self._batch
            )
            entries = redis_replies.read_entries(reply)
            if entries:
                return entries
            self._own_pending = False
        if time.monotonic() - self._claimed_at >= self._claim_idle_ms / 3000:
            self._claimed_at = time.monotonic()
            reply = await self._redis.xautoclaim(
                keys.TOKEN_EVENTS, GROUP, self.consumer, self._claim_idle_ms, count=self._batch
            )
            entries = redis_replies.entries(reply[1])
            if entries:
                return entries
        reply = await self._redis.xreadgroup(
            GROUP,
            self.consumer,
            {keys.TOKEN_EVENTS: ">"},
            count=self._batch,
            block=self._block_ms,
        )
        return redis_replies.read_entries(reply)

    @redis_boundary("token events")
    async def step(self) -> int:
        """Read, apply, acknowledge and heartbeat once; returns entries handled.

        Raises StoreUnavailable (Redis) or UtilisationUnavailable (the estimate)."""
        await self._ensure_group()
        entries = await self._next_entries()
        seconds, micros = await self._redis.time()
        server_now = seconds + micros / 1e6
        for entry_id, fields in entries:
            await self._apply(entry_id, fields, server_now)
        if entries:
            await self._redis.xack(keys.TOKEN_EVENTS, GROUP, *[e for e, _ in entries])
        newest = max(entries, key=lambda e: _entry_key(e[0]))[0] if entries else None
        await self._store.heartbeat(applied=newest)
        return len(entries)

    async def _apply(self, entry_id: str, fields: Mapping[str, str], server_now: float) -> None:
        entry_time = _entry_time(entry_id)
        if server_now - entry_time > self._horizon_s:
            self.skipped += 1
            log.debug("token_event_too_old", entry_id=entry_id, age_s=server_now - entry_time)
            return
        try:
            event = parse_event(fields.get(EVENT_FIELD, ""), default_timestamp=entry_time)
        except MALFORMED_EVENT as exc:
            self.skipped += 1
            log.warning("token_event_malformed", entry_id=entry_id, error=str(exc)[:300])
            return
        await self._store.record(event)
        await record_gateway_usage(self._usage, event)
        self.applied += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; Redis outages are logged and retried."""
        log.info("estimator_started", consumer=self.consumer, deployments=self._store.deployments)
        failures = 0
        while not stop.is_set():
            try:
                await self.step()
                failures = 0
            except (StoreUnavailable, UtilisationUnavailable) as exc:
                failures += 1
                self._group_ready = False  # e.g. the stream was deleted: create it again
                self._own_pending = True  # entries read but not acknowledged come back first
                log.warning("estimator_step_failed", error=repr(exc)[:300], failures=failures)
                # capped low: while the estimator is down, readings go stale
                delay = outage_delay_s(failures, self._rand(), base_s=0.4, max_s=5.0)
                await pause(delay, stop, sleep=self._sleep)
        log.info("estimator_stopped", applied=self.applied, skipped=self.skipped)

    def __repr__(self) -> str:
        return f"<Estimator consumer={self.consumer} applied={self.applied} skipped={self.skipped}>"


def _entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)

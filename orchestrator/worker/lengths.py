"""The output lengths the worker learns, shared by every worker process through Redis.

`OutputLengths` keeps the last `WINDOW` output lengths of each (deployment, tenant) in one
Redis list (`keys.output_lengths`, in the deployment's hash slot): a new length is pushed
and the list trimmed in one MULTI on that one key, so any number of workers add to it
without losing or double-counting, and Redis Cluster runs it on one slot. Each process
reads a list at most every `refresh_s` and adds its own lengths to what it read at once,
so sizing costs one write per call and one read per tenant every few seconds. A list no
call has touched for `LENGTHS_TTL_S` expires: work that comes back after a day starts
from the caller's limits again.

`Sizer` is what the dispatcher calls: `plan` before the first call of a request (the
limit to send, from `sizing.sized_limit`), `rerun` after each answered call (learn its
length; True when it was cut short by the sized limit and must run again with the
caller's). `Sizer.off()` (`PTU_SIZE_MAX_TOKENS=off`) plans every call with the caller's
limit and learns nothing. A Redis error never fails a call: reading falls back to the
caller's limit, learning is skipped; both are logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from orchestrator.core import keys
from orchestrator.core.batching import Batcher
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.errors import StoreUnavailable
from orchestrator.worker.sizing import WINDOW, Plan, SizingParams, sized_limit

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from orchestrator.core.schemas import QueuedRequest
    from orchestrator.worker.metrics import WorkerMetrics

log = structlog.get_logger(__name__)

REFRESH_S = 5.0
"""How stale a process's copy of a tenant's lengths may be (other workers' answers)."""
LENGTHS_TTL_S = 86_400


class OutputLengths:
    """Recent output lengths per (deployment, tenant), in Redis, with a short-lived local copy."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        window: int = WINDOW,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._window = window
        self._refresh_s = refresh_s
        self._clock = clock
        self._copies: dict[tuple[str, str], tuple[float, list[int]]] = {}
        self._learnt: Batcher[tuple[str, str], int] = Batcher(self._write)

    @redis_boundary("output lengths")
    async def recent(self, deployment: str, tenant: str) -> list[int]:
        """The last `window` lengths, newest first (at most `refresh_s` old, plus our own)."""
        now = self._clock()
        copy = self._copies.get((deployment, tenant))
        if copy is not None and now - copy[0] < self._refresh_s:
            return copy[1]
        raw = await self._redis.lrange(keys.output_lengths(deployment, tenant), 0, self._window - 1)
        lengths = [int(v) for v in raw]
        self._copies[(deployment, tenant)] = (now, lengths)
        return lengths

    async def learn(self, deployment: str, tenant: str, length: int) -> None:
        """Add one answer's output length (push, trim, refresh the expiry: one MULTI, shared
        with the lengths of the tenant that arrive while one is being written)."""
        await self._learnt.submit((deployment, tenant), length)
        copy = self._copies.get((deployment, tenant))
        if copy is not None:
            copy[1].insert(0, length)
            del copy[1][self._window :]

    @redis_boundary("output lengths")
    async def _write(self, of: tuple[str, str], lengths: Sequence[int]) -> None:
        key = keys.output_lengths(*of)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(key, *lengths)
            pipe.ltrim(key, 0, self._window - 1)
            pipe.expire(key, LENGTHS_TTL_S)
            await pipe.execute()

    def __repr__(self) -> str:
        return f"<OutputLengths tenants={len(self._copies)} window={self._window}>"


class Sizer:
    """Sizes queued calls' output limits from learnt lengths, and says when to re-run one."""

    def __init__(
        self,
        lengths: OutputLengths | None,
        params: SizingParams | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._lengths = lengths
        self._params = params or SizingParams()
        self._metrics = metrics
        self.counts = {"sized": 0, "reruns": 0}
        """Calls sent with a sized limit, and of them the ones run again with the caller's."""

    @classmethod
    def off(cls) -> Sizer:
        """A sizer that never sizes and never learns (`PTU_SIZE_MAX_TOKENS=off`)."""
        return cls(None)

    async def plan(self, message: QueuedRequest) -> Plan:
        """The limits of `message`'s calls: sized once enough lengths are known."""
        plan = Plan(message)
        if self._lengths is None or plan.caller is None:
            return plan
        try:
            recent = await self._lengths.recent(message.deployment, message.tenant)
        except StoreUnavailable as exc:
            log.warning("output_lengths_unavailable", error=repr(exc))
            return plan
        return Plan(message, sized_limit(recent, plan.caller, self._params))

    async def rerun(self, plan: Plan, answer: Mapping[str, Any]) -> bool:
        """After an answered call of `plan`: learn its length; True when it must run again."""
        sized = not plan.full
        again, length = plan.outcome(answer)
        message = plan.original
        if sized:
            self.counts["sized"] += 1
            if self._metrics is not None:
                outcome = "rerun" if again else "fit"
                self._metrics.sized_calls.labels(message.deployment, outcome).inc()
        if again:
            self.counts["reruns"] += 1
            log.info("call_cut_short_rerun", sized=plan.sized, caller=plan.caller)
        if length is not None and self._lengths is not None:
            try:
                await self._lengths.learn(message.deployment, message.tenant, length)
            except StoreUnavailable as exc:
                log.warning("output_length_not_learnt", error=repr(exc))
        return again

    def __repr__(self) -> str:
        mode = "off" if self._lengths is None else "auto"
        return f"<Sizer {mode} sized={self.counts['sized']} reruns={self.counts['reruns']}>"

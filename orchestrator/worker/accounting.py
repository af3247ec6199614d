"""The worker's token accounting: the estimate, the fair-share charges and the usage ledger.

`WorkerAccounting` is the worker's `TokenRecorder`: every token event the
dispatcher emits passes through it. An `admit` charges the tenant's fair share
with the call's estimate (prompt + `max_tokens`), its `complete` settles the
charge with the actual tokens and, for a call that was answered, records the
usage (ledger, counters). Accounting is best effort after the estimate: a Redis
error is logged, never fails the call.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog
from redis.exceptions import RedisError

from orchestrator.core.schemas import TokenEvent
from orchestrator.queues.fair import FairShareState
from orchestrator.tenants.config import Tenancy
from orchestrator.tenants.ledger import Usage, UsageLedger
from orchestrator.tenants.metrics import TenantMetrics
from orchestrator.utilisation.base import TokenRecorder

log = structlog.get_logger(__name__)


class WorkerAccounting:
    """A `TokenRecorder` that feeds `inner` (the estimate), then charges and records usage."""

    def __init__(
        self,
        inner: TokenRecorder | None,
        ledger: UsageLedger,
        fair: Mapping[str, FairShareState],
        tenancy: Tenancy,
        metrics: TenantMetrics | None = None,
    ) -> None:
        self._inner = inner
        self._ledger = ledger
        self._fair = dict(fair)
        self._tenancy = tenancy
        self._metrics = metrics
        self._charged: dict[str, int] = {}

    async def record(self, event: TokenEvent) -> None:
        """Fold `event` into the estimate, then into the tenant's share and usage."""
        if self._inner is not None:
            await self._inner.record(event)
        try:
            await self._account(event)
        except RedisError as exc:
            log.warning("accounting_failed", request_id=event.request_id, error=repr(exc))

    async def _account(self, event: TokenEvent) -> None:
        weight = self._tenancy.config(event.tenant).weight
        state = self._fair.get(event.deployment)
        if event.phase == "admit":
            estimate = event.prompt_tokens + event.max_tokens
            self._charged[event.request_id] = estimate
            if state is not None:
                await state.charge(event.tenant, estimate, weight, pending=estimate)
            return
        actual = event.prompt_tokens + event.completion_tokens
        estimate = self._charged.pop(event.request_id, 0)
        if state is not None:
            await state.charge(event.tenant, actual - estimate, weight, pending=-estimate)
        if actual <= 0:
            return  # refused, failed or cancelled: nothing was used
        use = Usage(
            event.tenant,
            event.deployment,
            "low",
            event.prompt_tokens,
            event.cached_tokens,
            event.completion_tokens,
        )
        await self._ledger.record(use)
        if self._metrics is not None:
            self._metrics.used(use)

    def __repr__(self) -> str:
        return f"<WorkerAccounting pending={len(self._charged)} inner={self._inner!r}>"

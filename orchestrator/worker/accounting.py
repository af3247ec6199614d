"""The worker's token accounting: the estimate, the fair-share charges and the usage ledger.

`WorkerAccounting` is the worker's `TokenRecorder`: every token event the dispatcher
emits passes through it. An `admit` charges the tenant's fair share with the tokens
the call is expected to use, its `complete` settles the charge with the actual tokens
and, for a call that was answered, records the usage (ledger, counters). The
expectation (`Expectation`) is the call's estimate scaled by the ratio of actual
to estimated tokens this worker has seen for the tenant on the deployment. Accounting
is best effort after the estimate: a Redis error is logged, never fails the call.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.schemas import TokenEvent
from orchestrator.queues.fair import FairShareState
from orchestrator.tenants.config import Tenancy
from orchestrator.tenants.fair import Expectation
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
        self._estimated: dict[str, int] = {}
        self._expect: dict[str, Expectation] = {}

    async def record(self, event: TokenEvent) -> None:
        """Fold `event` into the estimate, then into the tenant's share and usage."""
        if self._inner is not None:
            await self._inner.record(event)
        try:
            await self._account(event)
        except StoreUnavailable as exc:
            log.warning("accounting_failed", request_id=event.request_id, error=repr(exc))

    async def _account(self, event: TokenEvent) -> None:
        weight = self._tenancy.config(event.tenant).weight
        state = self._fair.get(event.deployment)
        expect = self._expect.setdefault(event.deployment, Expectation())
        if event.phase == "admit":
            estimate = event.prompt_tokens + event.max_tokens
            expected = expect.expected(event.tenant, estimate)
            self._charged[event.request_id] = expected
            self._estimated[event.request_id] = estimate
            if state is not None:
                await state.charge(event.tenant, expected, weight, pending=expected)
            return
        actual = event.prompt_tokens + event.completion_tokens
        charged = self._charged.pop(event.request_id, 0)
        estimate = self._estimated.pop(event.request_id, 0)
        if state is not None:
            await state.charge(event.tenant, actual - charged, weight, pending=-charged)
        if actual <= 0:
            return  # refused, failed or cancelled: nothing was used
        expect.learn(event.tenant, estimate, actual)
        use = Usage(
            event.tenant,
            event.deployment,
            "low",
            event.prompt_tokens,
            event.cached_tokens,
            event.completion_tokens,
        )
        await self._used(use)

    async def served(self, use: Usage) -> None:
        """Tokens a standard deployment served for a PTU's call (Azure's native spillover):
        the ledger and counters charge that deployment; the estimate never sees them."""
        try:
            await self._used(use)
        except StoreUnavailable as exc:
            log.warning("accounting_failed", deployment=use.deployment, error=repr(exc))

    async def _used(self, use: Usage) -> None:
        await self._ledger.record(use)
        if self._metrics is not None:
            self._metrics.used(use)

    def __repr__(self) -> str:
        return f"<WorkerAccounting pending={len(self._charged)} inner={self._inner!r}>"

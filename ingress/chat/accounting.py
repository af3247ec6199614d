"""What the ingress records of each high-priority request when it ends.

One place for: the per-tenant counters (requests by status, tokens by kind), the
latency histogram (time to first byte, total), the access line (written by
`calls.outcome.Outcome.log_access`, the same line the worker writes for queued
requests), and the usage ledger write that `ptu usage` and the tenant limits read.
The ledger write runs in a background task, referenced until done, so the response
never waits on Redis.
"""

from __future__ import annotations

import structlog

from ingress.http import access
from ingress.metrics import IngressMetrics
from orchestrator.calls.outcome import Outcome
from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.tasks import TaskSet
from orchestrator.core.tokens import usage_counts
from orchestrator.tenants.ledger import Usage, UsageLedger

log = structlog.get_logger("ptu.access")


class Accounting:
    """Counters, histogram, access log and ledger for requests the ingress answers."""

    def __init__(self, metrics: IngressMetrics, ledger: UsageLedger | None) -> None:
        self._metrics = metrics
        self._ledger = ledger
        self._tasks = TaskSet()

    def finished(self, outcome: Outcome) -> None:
        """Record one request's end (synchronous; the ledger write is scheduled)."""
        prompt, completion, cached = usage_counts(outcome.usage)
        used = outcome.served_by
        tenants = self._metrics.tenants
        tenants.finished(outcome.tenant, used, outcome.priority, outcome.label)
        tenants.tiered(used, outcome.priority, outcome.service_tier)
        if prompt or completion:
            use = Usage(outcome.tenant, used, outcome.priority, prompt, cached, completion)
            tenants.used(use)
            if self._ledger is not None:
                self._tasks.spawn(self._record(use))
        if outcome.ttfb_s is not None:
            self._metrics.high_latency(used, outcome.ttfb_s, outcome.latency_s)
        outcome.log_access()
        access.logged()

    async def drain(self, within_s: float | None = None) -> int:
        """Wait for pending ledger writes (at shutdown), at most `within_s`; how many were cut."""
        if within_s is None:
            await self._tasks.drain()
            return 0
        return await self._tasks.drain_within(within_s)

    async def _record(self, use: Usage) -> None:
        assert self._ledger is not None
        try:
            await self._ledger.record(use)
        except StoreUnavailable as exc:
            log.warning("usage_record_failed", tenant=use.tenant, error=repr(exc))

    def __repr__(self) -> str:
        return f"<Accounting pending={len(self._tasks)} ledger={self._ledger is not None}>"

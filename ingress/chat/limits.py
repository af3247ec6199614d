"""The tenant's token limits at the door: 429 over tokens per minute, 403 over the quota.

Both priorities are checked when a request arrives (a queued request's tokens
count when it runs, see `orchestrator.tenants.quota`). The counters live in
Redis (`UsageLedger`), shared by every ingress replica and worker; a tenant
without limits costs no Redis call. A refusal is counted (`status=limited`) and
logged like any other answer. A high-priority call reads the counters under the
interactive path's deadline (`guard`, `core/fail_open`): when Redis does not answer in
time it is admitted (failing open); a low-priority call meets the error (503), since it
cannot be stored without Redis anyway.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ingress.chat.accounting import Accounting
from ingress.http.errors import ApiError
from orchestrator.calls.outcome import Outcome
from orchestrator.core.fail_open import FailOpen
from orchestrator.core.tokens import estimate_prompt_tokens
from orchestrator.tenants.config import Tenancy
from orchestrator.tenants.ledger import UsageLedger


class TenantLimits:
    """Per-tenant `max_tokens` ceilings and token limits."""

    def __init__(
        self,
        tenancy: Tenancy,
        ledger: UsageLedger | None,
        accounting: Accounting | None,
        guard: FailOpen | None = None,
    ) -> None:
        self._tenancy = tenancy
        self._guard = guard
        self._ledger = ledger
        self._accounting = accounting
        self._limited = any(
            tenancy.config(name).limited for name in tenancy.names()
        )  # nothing to check at all: the common single-tenant case stays free

    def ceiling(self, tenant: str, default: int) -> int:
        """The tenant's `max_tokens` ceiling (its own, else the global one)."""
        own = self._tenancy.config(tenant).max_tokens_ceiling
        return own if own is not None else default

    async def admit(
        self,
        tenant: str,
        deployment: str,
        priority: str,
        request_id: str,
        body: Mapping[str, Any],
    ) -> None:
        """Raise ApiError 429 (with retry-after) or 403 when `tenant` is over a limit.

        The request's own cost is its prompt estimate, as the completion is not known yet.
        """
        if not self._limited or self._ledger is None:
            return
        ledger, need = self._ledger, estimate_prompt_tokens(body)
        if priority == "high" and self._guard is not None:
            refusal = await self._guard.call("limits", lambda: ledger.refusal(tenant, need), None)
        else:
            refusal = await ledger.refusal(tenant, need)
        if refusal is None:
            return
        headers = {}
        if refusal.status == 429:
            headers = {
                "retry-after": str(max(1, math.ceil(refusal.retry_after_s))),
                "retry-after-ms": str(max(1, math.ceil(refusal.retry_after_s * 1000))),
            }
        if self._accounting is not None:
            self._accounting.finished(
                Outcome(request_id, tenant, deployment, priority, refusal.status, 0.0,
                        status="limited")
            )  # fmt: skip
        raise ApiError(refusal.status, refusal.code, refusal.message, headers=headers)

    def __repr__(self) -> str:
        return f"<TenantLimits limited={self._limited}>"

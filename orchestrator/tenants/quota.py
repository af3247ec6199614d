"""The quota check of one queued request or batch line, as it is about to run.

Queued requests and batch lines count against their tenant's quota when they
run, so a line that comes up after the quota is used gets its own failed result
(HTTP 403, `token_quota_exceeded`) instead of a call; the lines before it, and
the tenant's other work, are unaffected. The worker's dispatcher and the
ingress's high-priority batch runner both call `quota_error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from orchestrator.core.errors import PTUError
from orchestrator.core.tokens import estimate_prompt_tokens
from orchestrator.tenants.limits import Refusal

log = structlog.get_logger(__name__)

QUOTA_STATUS = 403


class QuotaGate(Protocol):
    """A tenant's token limits (`orchestrator.tenants.ledger.UsageLedger`)."""

    async def refusal(self, tenant: str, need: int) -> Refusal | None:
        """Why `tenant` may not use `need` more tokens now; None when it may."""


async def quota_error(
    gate: QuotaGate | None, tenant: str, body: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The error object of a request whose tenant's quota is used up; None when it may run.

    Only the quota binds here: tokens per minute are enforced when a request
    arrives, and a queued request simply waits its turn. A failed check lets the
    request run (the quota is a budget, not a safety limit).
    """
    if gate is None:
        return None
    try:
        refusal = await gate.refusal(tenant, estimate_prompt_tokens(dict(body)))
    except PTUError as exc:  # StoreUnavailable among them
        log.warning("quota_check_failed", tenant=tenant, error=repr(exc))
        return None
    if refusal is None or refusal.status != QUOTA_STATUS:
        return None
    return {"code": refusal.code, "message": refusal.message, "type": "insufficient_quota"}

"""A gateway's token records in the tenants' usage: APIM traffic in `ptu usage`.

Calls that APIM sends straight to the deployment never pass the ingress, so no process
of ours records their usage. Their `log-to-eventhub` record carries the tenant (the
policy's `x-ptu-tenant`, APIM's subscription) and reaches `ptu estimator`, which adds a
`complete` record to the tenant's usage at high priority (the policy sends only
interactive calls there; low priority goes through the ingress, which records its own),
at most once per record id (`UsageLedger.record_once`). Usage is for chargeback and
the tenant limits, not for the throttle: an outage of the ledger is logged and the
record skipped, never allowed to hold the estimate back.
"""

from __future__ import annotations

import structlog

from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.schemas import TokenEvent
from orchestrator.tenants.ledger import Usage, UsageLedger

log = structlog.get_logger(__name__)

GATEWAY_PRIORITY = "high"


async def record_gateway_usage(ledger: UsageLedger | None, event: TokenEvent) -> bool:
    """Add a gateway's `complete` record to its tenant's usage once; True when added."""
    if ledger is None or event.phase != "complete":
        return False
    use = Usage(
        tenant=event.tenant,
        deployment=event.deployment,
        priority=GATEWAY_PRIORITY,
        prompt_tokens=event.prompt_tokens,
        cached_tokens=event.cached_tokens,
        completion_tokens=event.completion_tokens,
    )
    try:
        return await ledger.record_once(use, event.request_id)
    except StoreUnavailable as exc:
        log.warning("gateway_usage_failed", request_id=event.request_id, error=str(exc))
        return False

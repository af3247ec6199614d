"""Accepted requests that Redis lost: found, answered once, and said out loud.

A wiped data set is caught by the incarnation marker (`core/incarnation`). A partial
loss is not: a replica promoted while seconds behind its master lacks only the writes
of those seconds, so a request accepted then may have lost its record (a poll would
find nothing) or its queue entry (its record would say `queued` forever). Two paths
find such a request: a poll of an id the data set provably issued whose record is
gone (`ingress/queued/requests`), and the reconciler's walk over the records
(`queues/redis_streams/reconcile`). Either gives it its one result, `lost_document`:
`failed`, status 410, error code `request_lost`, written by the exactly-once completion
script, so it never overrides a result a worker wrote, and a copy of its message that
survived after all is only settled, never called. Each loss is logged (`request_lost`,
at error) and counted (`ptu_requests_lost_total{found}`); a poll answers 410
`request_lost`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import structlog

from orchestrator.core import keys
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import ResultDocument

log = structlog.get_logger(__name__)

LOST = "request_lost"
"""The error code of a lost request's result."""

Found = Literal["poll", "reconciler"]
"""What showed the loss: a poll found no record, or the reconciler found no queue entry."""
FOUND: dict[Found, str] = {
    "poll": "its record was gone when it was polled",
    "reconciler": "its queue entry was gone",
}


def lost_document(
    request_id: str,
    tenant: str,
    *,
    found: Found,
    now: float,
    enqueued_at: float,
    deployment: str = "",
    batch_id: str | None = None,
) -> ResultDocument:
    """The result of a request Redis lost after accepting it (`found`: what showed it)."""
    return ResultDocument(
        id=request_id,
        status="failed",
        status_code=410,
        error={
            "code": LOST,
            "type": "server_error",
            "message": f"the request was accepted, but the state store lost it ({FOUND[found]}); "
            "submit it again",
        },
        deployment=deployment,
        enqueued_at=enqueued_at,
        completed_at=now,
        tenant=tenant,
        batch_id=batch_id,
    )


def is_lost(doc: ResultDocument) -> bool:
    """True for a `lost_document`."""
    return doc.status == "failed" and (doc.error or {}).get("code") == LOST


class Losses:
    """Seals lost requests: their one result, the log line, the count."""

    def __init__(
        self, results: ResultStore, *, on_lost: Callable[[str], None] | None = None
    ) -> None:
        self._results = results
        self._on_lost = on_lost

    async def seal(
        self, doc: ResultDocument, found: Found, reply_key: str | None = None
    ) -> ResultDocument:
        """Write `doc` (a `lost_document`) unless the request has a result; the result it
        has afterwards. Raises StoreUnavailable."""
        if not await self._results.complete(doc, reply_key or keys.reply(doc.id)):
            state = await self._results.get(doc.id)
            return state.result if state is not None and state.result is not None else doc
        log.error(
            "request_lost",
            request_id=doc.id,
            tenant=doc.tenant,
            deployment=doc.deployment,
            batch_id=doc.batch_id,
            found=found,
            hint="Redis lost writes it had acknowledged (a failover to a replica that was "
            "behind, or a restart without persistence); see PTU_REDIS_WAIT_REPLICAS",
        )
        if self._on_lost is not None:
            self._on_lost(found)
        return doc

    def __repr__(self) -> str:
        return f"<Losses results={self._results!r}>"

"""Low priority: validate, register, enqueue, answer 202.

Order matters for "nothing half-enqueued": the request record is written first
(so a worker that is quick never finds a message without one), then the message
is put; if the put fails the record is deleted and the client gets 503 with
`retry-after`, so a request is either fully accepted or not at all.

"Accepted" means on a replica too (`core/replication`, `PTU_REDIS_WAIT_REPLICAS`): the
put waits for the queue entry, then the record is confirmed, before the 202. When a
replica does not confirm in `PTU_REDIS_WAIT_TIMEOUT_MS` the client gets 503 with
`retry-after` as well, and the request is given a `not_accepted` result first, so a copy
of its message that survives on the master is settled, never called: the client that
retries is not billed twice.

`x-reply-key` (optional) names the Redis list the result is pushed to; it must
lie in the caller's namespace, `ptu:reply:<tenant>:<anything>`, so a tenant can
never write into another tenant's keys. Without it the reply key is
`ptu:reply:{<request id>}` (in the request's Redis Cluster slot). `x-ptu-ttl-s`
(optional, seconds) sets the deadline, default `PTU_DEFAULT_TTL_S`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
from starlette.responses import JSONResponse

from ingress.http import errors
from ingress.http.answers import QueuedRequestStatus
from ingress.http.errors import ApiError
from ingress.http.models import parse_reply_key
from ingress.metrics import IngressMetrics
from orchestrator.core import keys
from orchestrator.core.errors import NotReplicated, QueueUnavailable, StoreUnavailable
from orchestrator.core.replication import Replication
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import Endpoint, QueuedRequest, ResultDocument
from orchestrator.queues.base import Queue
from orchestrator.telemetry.base import OFF, Telemetry

log = structlog.get_logger(__name__)


def new_request_id() -> str:
    """`req_<uuid hex>`."""
    return "req_" + uuid.uuid4().hex


def reply_key_for(header: str | None, tenant: str, request_id: str) -> str:
    """The reply key: the caller's `x-reply-key` if it lies in its namespace, else the default."""
    if header is None:
        return keys.reply(request_id)
    return parse_reply_key(header, tenant)


def unavailable(detail: str) -> ApiError:
    """The 503 answered when the queue (or its Redis) cannot take a request."""
    return errors.unavailable("the queue", code="queue_unavailable", detail=detail)


PUTS = 64
"""Enqueues one ingress process runs at once (each holds a Redis connection meanwhile)."""


class Enqueuer:
    """Registers and enqueues QueuedRequests, all-or-nothing per request."""

    def __init__(
        self,
        results: ResultStore,
        queues: Mapping[str, Queue],
        metrics: IngressMetrics,
        *,
        clock: Callable[[], float] = time.time,
        ids: Callable[[str], str] = lambda _tenant: new_request_id(),
        telemetry: Telemetry = OFF,
        replication: Replication | None = None,
    ) -> None:
        self._replication = replication
        self._telemetry = telemetry
        self._results = results
        self._queues = queues
        self._metrics = metrics
        self.clock = clock
        self._ids = ids
        self._puts = asyncio.Semaphore(PUTS)

    @property
    def results(self) -> ResultStore:
        """Where the requests this enqueuer registers are recorded."""
        return self._results

    def new_id(self, tenant: str) -> str:
        """A fresh id for a request of `tenant` this ingress will queue (see `ids`)."""
        return self._ids(tenant)

    def build(
        self,
        deployment: str,
        body: dict[str, Any],
        *,
        tenant: str,
        reply_key_header: str | None = None,
        reply_key: str | None = None,
        ttl_s: float,
        custom_id: str | None = None,
        batch_id: str | None = None,
        request_id: str | None = None,
        endpoint: Endpoint = "chat/completions",
    ) -> QueuedRequest:
        """A QueuedRequest stamped now, with its deadline and reply key.

        `reply_key` (trusted, set by the ingress itself) wins over `reply_key_header`
        (the client's, checked against its namespace).
        """
        rid = request_id or self._ids(tenant)
        now = self.clock()
        return QueuedRequest(
            id=rid,
            deployment=deployment,
            body=body,
            endpoint=endpoint,
            tenant=tenant,
            custom_id=custom_id,
            reply_key=reply_key or reply_key_for(reply_key_header, tenant, rid),
            enqueued_at=now,
            deadline=now + ttl_s,
            batch_id=batch_id,
        )

    async def put(self, req: QueuedRequest) -> None:
        """Register then enqueue; on failure undo the record and raise ApiError 503.

        At most `PUTS` at once in this process: a burst of thousands queues here rather
        than growing the Redis pool to its cap (a connection each, kept afterwards).
        """
        async with self._puts:
            await self._put(req)

    async def _put(self, req: QueuedRequest) -> None:
        queue = self._queues[req.deployment]
        try:
            await self._results.register(req)
        except StoreUnavailable as exc:
            self._metrics.enqueue_failed(req.deployment)
            raise unavailable(f"record: {exc}") from exc
        try:
            with self._telemetry.producing(req):  # carries the trace in the message
                await queue.put(req)
            if self._replication is not None:
                if not await self._replication.confirm(keys.request(req.id)):
                    raise NotReplicated(f"request record {req.id}: not on a replica in time")
        except NotReplicated as exc:
            self._metrics.enqueue_failed(req.deployment)
            await asyncio.shield(self._refuse(req))
            raise unavailable(str(exc)) from exc
        except (QueueUnavailable, StoreUnavailable) as exc:
            self._metrics.enqueue_failed(req.deployment)
            await self._forget(req.id)
            log.warning("enqueue_failed", request_id=req.id, deployment=req.deployment)
            raise unavailable(str(exc)) from exc
        except BaseException:
            # not accepted, so no record may stay behind to answer "queued" for days
            await asyncio.shield(self._forget(req.id))
            raise
        self._metrics.enqueued(req.deployment)
        log.debug("request_enqueued", request_id=req.id, deployment=req.deployment)

    async def put_many(self, reqs: Sequence[QueuedRequest], concurrency: int = 64) -> int:
        """Put every request, `concurrency` at a time; returns how many were enqueued.

        Stops at the first failure (raising its ApiError) after the requests already
        in flight finish; requests put before it stay enqueued.
        """
        done = 0
        for start in range(0, len(reqs), concurrency):
            chunk = reqs[start : start + concurrency]
            outcomes = await asyncio.gather(*(self.put(r) for r in chunk), return_exceptions=True)
            failures = [o for o in outcomes if isinstance(o, BaseException)]
            done += len(outcomes) - len(failures)
            if failures:
                log.warning("enqueue_many_stopped", enqueued=done, total=len(reqs))
                raise failures[0]
        return done

    async def _refuse(self, req: QueuedRequest) -> None:
        """The `not_accepted` result of a request answered 503 after its put (see the
        module docstring); its record stays, so a poll says what happened."""
        error = {
            "code": "not_accepted",
            "type": "server_error",
            "message": "the state store did not replicate the request in time; it was "
            "answered 503 and will not run",
        }
        doc = ResultDocument.for_request(
            req, "failed", completed_at=self.clock(), attempts=0, status_code=503, error=error
        )
        try:
            await self._results.complete_if_queued(doc, req.reply_key)
        except StoreUnavailable as exc:
            log.error("enqueue_refuse_failed", request_id=req.id, error=repr(exc))
        log.warning("enqueue_not_replicated", request_id=req.id, deployment=req.deployment)

    async def _forget(self, request_id: str) -> None:
        try:
            await self._results.forget(request_id)
        except StoreUnavailable as exc:
            log.error("enqueue_forget_failed", request_id=request_id, error=repr(exc))

    def __repr__(self) -> str:
        return f"<Enqueuer deployments={','.join(self._queues)}>"


def accepted(req: QueuedRequest) -> JSONResponse:
    """The 202 answer to an enqueued request."""
    return JSONResponse(
        QueuedRequestStatus(id=req.id, status="queued", reply_key=req.reply_key).model_dump(),
        status_code=202,
        headers={"location": f"/v1/requests/{req.id}"},
    )

"""How a delivery is settled: the result written once, then acknowledged or dead-lettered.

The result is written (idempotently, by request id) before the delivery is acknowledged,
and both happen shielded from cancellation, so a shutdown can interrupt a call but never
half-record one. A delivery this dispatcher does not settle (the result write failed, the
dispatch raised, a shutdown interrupted the call or a retry wait) is released, so another
consumer takes it at once instead of it staying owned by a live worker that gave up on it.

With replicas (`core/replication`, `PTU_REDIS_WAIT_REPLICAS`), a result is acknowledged
only once a replica confirmed it: a result that is only on the master when the delivery is
acknowledged would be lost with the master, the request left `in_progress` with no entry.
When the replica does not confirm in time the delivery is released instead; a later
delivery finds the result and is acknowledged once a replica has it, or, after a failover
took the result, runs the call again (a replica that lags keeps the message coming back
until it catches up; a dead one leaves the slot map and is no longer waited for).

The request's `calls.outcome.Outcome` is computed once from its result document: its
counter label, its access line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from orchestrator.calls.outcome import Outcome
from orchestrator.core import keys
from orchestrator.core.batching import Batcher
from orchestrator.core.errors import PTUError, StoreUnavailable
from orchestrator.core.results import count_result
from orchestrator.core.schemas import ResultDocument, ResultStatus
from orchestrator.core.tasks import TaskSet
from orchestrator.queues.base import Delivery, Queue

if TYPE_CHECKING:
    from collections.abc import Callable

    from orchestrator.core.replication import Replication
    from orchestrator.worker.dispatch.parts import Reporting
    from orchestrator.worker.protocols import ResultSink

log = structlog.get_logger(__name__)


class Settler:
    """Writes results and settles deliveries of one deployment's queue."""

    def __init__(
        self,
        deployment: str,
        queue: Queue,
        results: ResultSink,
        reporting: Reporting,
        clock: Callable[[], float],
        *,
        replication: Replication | None = None,
    ) -> None:
        self.deployment = deployment
        self._replication = replication
        self._queue = queue
        self._results = results
        self._reporting = reporting
        self._clock = clock
        self.bookkeeping = TaskSet()
        """Shielded writes still running; the worker awaits them before exiting."""
        self._counted: Batcher[str, str] = Batcher(self._write_counts)
        """Results counted while one count is written go together in the next."""
        self._settled: set[str] = set()
        """Tokens of deliveries being handled that were acknowledged or dead-lettered."""
        self.counts: dict[str, int] = {"completed": 0, "failed": 0, "expired": 0}
        self.completions: list[float] = []
        """Clock times of recent results (the worker trims it to compute throughput)."""

    async def finish(
        self, delivery: Delivery, doc: ResultDocument, dead_letter: str | None = None
    ) -> ResultStatus | None:
        """Write the result, then ack (or dead-letter); shielded from cancellation."""
        return await self.bookkeeping.shielded(self._write_then_ack(delivery, doc, dead_letter))

    async def resettle(self, delivery: Delivery) -> None:
        """A redelivery of a request whose result exists: finish its fan-out, then ack."""
        message = delivery.message
        # the first completion may have stopped between its steps: finish them
        await self.bookkeeping.shielded(self._results.settle(message.id, message.reply_key))
        # acknowledged once the result is on a replica, else released again (`let_go`): an
        # ack that its client retries onto a promoted replica would delete the entry of a
        # request whose result went down with the old master
        if await self.bookkeeping.shielded(self._replicated(message.id)):
            await self.bookkeeping.shielded(self._ack(delivery))

    async def let_go(self, delivery: Delivery) -> None:
        """Release `delivery` unless it was settled (the end of every handling)."""
        if delivery.token in self._settled:
            self._settled.discard(delivery.token)
        else:
            await self.bookkeeping.shielded(self._give_back(delivery))

    async def already_done(self, request_id: str) -> bool:
        """Whether the request has its result (False when that cannot be read)."""
        try:
            state = await self._results.get(request_id)
        except PTUError as exc:  # StoreUnavailable, QueueUnavailable
            log.warning("result_lookup_failed", error=repr(exc))
            return False  # completion is idempotent anyway
        return state is not None and state.result is not None

    async def mark_in_progress(self, request_id: str) -> bool:
        """Move the request's record to in_progress (logged, never raised); False when it
        has its result already (it was cancelled while queued)."""
        try:
            return await self._results.mark_in_progress(request_id)
        except PTUError as exc:  # StoreUnavailable, QueueUnavailable
            log.warning("mark_in_progress_failed", error=repr(exc))
            return True

    async def _write_then_ack(
        self, delivery: Delivery, doc: ResultDocument, dead_letter: str | None
    ) -> ResultStatus | None:
        try:
            wrote = await self._results.complete(doc, delivery.message.reply_key)
        except PTUError as exc:  # StoreUnavailable, QueueUnavailable
            log.error("result_write_failed", status=doc.status, error=repr(exc))
            return None  # released by `let_go`: another consumer finishes it
        if not await self._replicated(doc.id):  # not acked: released by `let_go`
            if not wrote:
                return None
            await self._report(delivery, doc)
            return doc.status
        try:
            if wrote and dead_letter is not None:
                await self._queue.dead_letter(delivery, dead_letter)
                self._settled.add(delivery.token)
            else:
                await self._ack(delivery)
        except PTUError as exc:
            # the result is written: a redelivery will only settle and ack
            log.warning("ack_failed", error=repr(exc))
        if not wrote:
            log.info("result_already_written", status=doc.status)
            return None
        await self._report(delivery, doc)
        return doc.status

    async def _report(self, delivery: Delivery, doc: ResultDocument) -> None:
        """Count, label and log a result this dispatcher wrote."""
        outcome = Outcome.of_result(doc, priority="low")
        self.counts[doc.status] += 1
        self._reporting.telemetry.outcome(doc.status, doc.status_code)
        await self._count(doc.status)
        self.completions.append(self._clock())
        metrics = self._reporting.metrics
        if metrics is not None:
            metrics.result(self.deployment, doc.status)
            metrics.tenants.finished(
                delivery.message.tenant, outcome.served_by, "low", outcome.label
            )
            metrics.tenants.tiered(outcome.served_by, "low", outcome.service_tier)
        log.info(
            "request_finished",
            status=doc.status,
            status_code=doc.status_code,
            attempts=doc.attempts,
            queued_s=round(doc.completed_at - doc.enqueued_at, 3),
        )
        outcome.log_access()

    async def _replicated(self, request_id: str) -> bool:
        """Whether the request's result is on a replica (True without replication)."""
        if self._replication is None:
            return True
        try:
            return await self._replication.confirm(keys.result(request_id))
        except PTUError as exc:
            log.warning("result_replication_unknown", error=repr(exc))
            return False

    async def _ack(self, delivery: Delivery) -> None:
        await self._queue.ack(delivery)
        self._settled.add(delivery.token)

    async def _give_back(self, delivery: Delivery) -> None:
        """Release a delivery this dispatcher will not finish (logged, never raised)."""
        try:
            await self._queue.release(delivery)
        except PTUError as exc:  # StoreUnavailable, QueueUnavailable
            # unreachable queue: the entry moves once this consumer looks dead
            log.warning("release_failed", error=repr(exc))
        else:
            log.info("delivery_released", delivery_count=delivery.delivery_count)

    async def _count(self, status: str) -> None:
        """The deployment's result counters in Redis, which outlive any worker."""
        redis = self._reporting.counts
        if redis is None:
            return
        try:
            await self._counted.submit(self.deployment, status)
        except StoreUnavailable as exc:
            log.warning("result_count_failed", status=status, error=repr(exc))

    async def _write_counts(self, deployment: str, statuses: Sequence[str]) -> None:
        redis = self._reporting.counts
        assert redis is not None
        for status, n in Counter(statuses).items():
            await count_result(redis, deployment, status, n)

    def __repr__(self) -> str:
        c = self.counts
        return (
            f"<Settler deployment={self.deployment} completed={c['completed']} "
            f"failed={c['failed']} expired={c['expired']} pending={len(self.bookkeeping)}>"
        )

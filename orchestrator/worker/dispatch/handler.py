"""One queued request from delivery to result: pre-flight, attempts, one settlement.

The dispatcher receives a delivery together with the throttle slot the worker leased
for it (a `SlotHolder` from then on). Pre-flight, in order: an unreadable message gets
its `failed` result; a request whose result exists (a redelivery) only finishes its
fan-out and is acknowledged; a message delivered more than `max_deliveries` times is
failed; the tenant's quota may refuse it. The `Sizer` (`worker.lengths`) then picks the
output limit the calls are sent with, and `calls.attempts.run_attempts` calls the
deployment through the worker's gate (`dispatch.gate`) and the one caller
(`dispatch.call`); an answer the sized limit cut short runs again with the caller's limit
(the attempts keep counting). The ending is settled once, shielded (`dispatch.settle`); a
stop leaves the request for redelivery.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

from orchestrator.calls.attempts import Attempted, run_attempts
from orchestrator.calls.outcome import UpstreamResponse, settlement
from orchestrator.core.runtime import Pacing
from orchestrator.core.schemas import ResultDocument, ResultStatus
from orchestrator.queues.base import Delivery
from orchestrator.tenants.quota import QUOTA_STATUS, quota_error
from orchestrator.throttle.slots import Slot
from orchestrator.worker.dispatch.call import Caller
from orchestrator.worker.dispatch.gate import Waiting, WorkerGate
from orchestrator.worker.dispatch.parts import Delivering, DispatchConfig, Gates, Reporting
from orchestrator.worker.dispatch.settle import Settler
from orchestrator.worker.dispatch.slots import SlotHolder
from orchestrator.worker.lengths import Sizer

if TYPE_CHECKING:
    from orchestrator.breaker.shared import SharedBreaker
    from orchestrator.core.tasks import TaskSet
    from orchestrator.worker.upstream import Upstream

log = structlog.get_logger(__name__)


class Dispatcher:
    """Handles deliveries of one deployment's queue."""

    def __init__(
        self,
        deployment: str,
        *,
        delivering: Delivering,
        upstream: Upstream,
        config: DispatchConfig,
        gates: Gates,
        reporting: Reporting | None = None,
        pacing: Pacing | None = None,
        sizer: Sizer | None = None,
    ) -> None:
        reporting = reporting or Reporting()
        self.deployment = deployment
        self._config = config
        self._gates = gates
        self._reporting = reporting
        self._pacing = pacing or Pacing()
        self._results = delivering.results
        self._settler = Settler(
            deployment, delivering.queue, delivering.results, reporting, self._pacing.clock,
            replication=delivering.replication,
        )  # fmt: skip
        self._caller = Caller(
            deployment, upstream, config, gates, reporting, self._pacing, self.bookkeeping
        )
        self._waiting = Waiting()
        self._sizer = sizer or Sizer.off()

    @property
    def breaker(self) -> SharedBreaker | None:
        """The deployment's shared circuit breaker, if any."""
        return self._gates.breaker

    @property
    def bookkeeping(self) -> TaskSet:
        """Shielded writes still running; the worker awaits them before exiting."""
        return self._settler.bookkeeping

    @property
    def caller(self) -> Caller:
        """The one caller of the deployment (its `prepare` is the pre-call step)."""
        return self._caller

    @property
    def gated(self) -> int:
        """Requests of this dispatcher waiting for the breaker to let a call through."""
        return self._waiting.gated

    @property
    def ready_retries(self) -> int:
        """Retries whose backoff is over, waiting for a slot: they go before fresh messages."""
        return self._waiting.ready_retries

    @property
    def counts(self) -> dict[str, int]:
        """Results written by this process, by status, and retries started."""
        return {**self._settler.counts, "retries": self._waiting.retries}

    @property
    def completions(self) -> list[float]:
        """Clock times of recent results (the worker trims it to compute throughput)."""
        return self._settler.completions

    async def handle(
        self, delivery: Delivery, slot: Slot, stop: asyncio.Event
    ) -> ResultStatus | None:
        """Process one delivery holding `slot`; the status written, or None if not finished."""
        if delivery.message.deployment != self.deployment and delivery.unreadable is None:
            # a pool's request (or a pool member's): its result names the member that serves
            served = delivery.message.model_copy(update={"deployment": self.deployment})
            delivery = dataclasses.replace(delivery, message=served)
        message = delivery.message
        holder = SlotHolder(self._gates.throttle, slot, self.bookkeeping)
        with (
            structlog.contextvars.bound_contextvars(
                request_id=message.id, deployment=self.deployment
            ),
            self._reporting.telemetry.consuming(message, delivery.delivery_count),
        ):
            try:
                return await self._process(delivery, holder, stop)
            except Exception:
                log.exception("dispatch_failed", delivery_count=delivery.delivery_count)
                return None
            finally:
                await holder.release()
                await self._settler.let_go(delivery)

    async def _process(
        self, delivery: Delivery, holder: SlotHolder, stop: asyncio.Event
    ) -> ResultStatus | None:
        message = delivery.message
        settler = self._settler
        if delivery.unreadable is not None:
            await holder.release()
            return await self._answer_unreadable(delivery, delivery.unreadable)
        # a first delivery has no result of its own yet: one written meanwhile (a cancel while
        # queued) is found by `mark_in_progress` below, which settles it the same way
        if delivery.delivery_count > 1 and await settler.already_done(message.id):
            await holder.release()
            await settler.resettle(delivery)
            log.info("redelivery_already_completed", delivery_count=delivery.delivery_count)
            return None
        if delivery.delivery_count > self._config.max_deliveries:
            await holder.release()
            error = {
                "code": "too_many_deliveries",
                "message": "the request kept interrupting workers",
            }
            doc = self._doc(delivery, "failed", status_code=None, error=error)
            return await settler.finish(delivery, doc, dead_letter="too many deliveries")
        refused = await quota_error(self._gates.quota, message.tenant, message.body)
        if refused is not None:
            await holder.release()
            doc = self._doc(delivery, "failed", status_code=QUOTA_STATUS, error=refused)
            return await settler.finish(delivery, doc)
        if not await settler.mark_in_progress(message.id):
            # cancelled between the check above and now: its result is written, no call
            await holder.release()
            await settler.resettle(delivery)
            log.info("request_cancelled_before_call")
            return None
        return await self._attempts(delivery, holder, stop)

    async def _attempts(
        self, delivery: Delivery, holder: SlotHolder, stop: asyncio.Event
    ) -> ResultStatus | None:
        """Call until an ending (`calls.attempts`), then settle it once."""
        message = delivery.message
        gate = WorkerGate(
            holder,
            self._gates.throttle,
            self._gates.breaker_for(message.endpoint),
            self._waiting,
            stop,
            self._pacing,
            hand_over=self._config.hand_over,
        )

        plan = await self._sizer.plan(message)  # the output limit the calls are sent with

        async def attempts(start: int) -> Attempted[UpstreamResponse]:
            return await run_attempts(
                lambda attempt: self._caller.call(
                    plan.message, delivery.delivery_count, attempt, holder
                ),
                gate,
                policy=self._config.retry,
                deadline=message.deadline,
                pacing=self._pacing,
                start=start,
            )

        attempted = await attempts(0)
        while (
            attempted.answer is not None
            and attempted.ending == "answered"
            and await self._sizer.rerun(plan, attempted.answer.body)
        ):  # cut short by the sized limit: again with the caller's (the attempts keep counting)
            attempted = await attempts(attempted.attempts)
        await holder.release()
        settled = settlement(message, attempted, self._pacing.clock())
        if settled is None:
            log.info("request_left_for_redelivery", attempt=attempted.attempts)
            return None
        doc, dead_letter = settled
        return await self._settler.finish(delivery, doc, dead_letter=dead_letter)

    async def _answer_unreadable(self, delivery: Delivery, reason: str) -> ResultStatus | None:
        """A message the worker cannot read still gets its `failed` result, then is parked.

        Its record (written by the ingress) supplies what the message cannot: reply
        key, batch, custom id.
        """
        request_id = delivery.message.id
        log.error("message_unreadable", reason=reason)
        state = await self._results.get(request_id)
        reply_key = state.reply_key if state and state.reply_key else delivery.message.reply_key
        now = self._pacing.clock()
        doc = ResultDocument(
            id=request_id,
            custom_id=state.custom_id if state else None,
            status="failed",
            error={"code": "unreadable_message", "message": reason},
            deployment=(state.deployment if state else None) or self.deployment,
            enqueued_at=now,
            completed_at=now,
            batch_id=state.batch_id if state else None,
            tenant=state.tenant if state else delivery.message.tenant,
        )
        message = delivery.message.model_copy(update={"reply_key": reply_key})
        return await self._settler.finish(
            Delivery(message, delivery.token, delivery.delivery_count, reason, delivery.payload),
            doc,
            dead_letter=reason,
        )

    def _doc(
        self,
        delivery: Delivery,
        status: ResultStatus,
        *,
        status_code: int | None,
        error: Mapping[str, Any],
    ) -> ResultDocument:
        return ResultDocument.for_request(
            delivery.message,
            status,
            completed_at=self._pacing.clock(),
            attempts=0,
            status_code=status_code,
            error=dict(error),
        )

    def __repr__(self) -> str:
        c = self.counts
        return (
            f"<Dispatcher deployment={self.deployment} completed={c['completed']} "
            f"failed={c['failed']} expired={c['expired']} retries={c['retries']}>"
        )

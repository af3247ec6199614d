"""One queued request from delivery to result: deadline, call, retries, exactly-once completion.

The dispatcher receives a delivery together with the throttle slot the worker
leased for it. It calls the deployment while holding the slot, and hands the
slot back as soon as the call ends, also between retries: waiting for a retry
never occupies low-priority capacity. The result is written (idempotently, by
request id) before the delivery is acknowledged, and both happen shielded from
cancellation, so a shutdown can interrupt a call but never half-record one.

Every path that does not acknowledge (the result write failed, the dispatch
raised, a shutdown interrupted the call or a retry wait) releases the delivery,
so another consumer takes it at once instead of it staying owned by a live
worker that gave up on it. A redelivery of a request whose result exists only
finishes the result's fan-out (`ResultSink.settle`) and acknowledges.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from redis.exceptions import RedisError

from orchestrator.breaker.machine import Outcome, Verdict
from orchestrator.calls import bracket
from orchestrator.calls.signals import error_signals
from orchestrator.core import keys
from orchestrator.core.errors import (
    PTUError,
    UpstreamError,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from orchestrator.core.retry import RetryPolicy, decide
from orchestrator.core.runtime import pause
from orchestrator.core.schemas import (
    QueuedRequest,
    ResultDocument,
    ResultStatus,
    TokenEvent,
    error_object,
)
from orchestrator.core.tokens import estimate_prompt_tokens, requested_max_tokens, usage_counts
from orchestrator.queues.base import Delivery, Queue
from orchestrator.telemetry.base import OFF, Telemetry
from orchestrator.tenants.quota import QUOTA_STATUS, QuotaGate, quota_error
from orchestrator.throttle.slots import Slot
from orchestrator.utilisation.base import TokenRecorder
from orchestrator.worker.protocols import ResultSink, SlotLimiter
from orchestrator.worker.upstream import Upstream, UpstreamResponse

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from orchestrator.breaker.shared import SharedBreaker
    from orchestrator.throttle.admission import Admission
    from orchestrator.worker.metrics import WorkerMetrics

log = structlog.get_logger(__name__)
access_log = structlog.get_logger("ptu.access")
_T = TypeVar("_T")

CLIENT_REQUEST_ID_HEADER = "x-ms-client-request-id"


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    """Knobs of request handling, from settings."""

    retry: RetryPolicy
    request_timeout_s: float
    default_max_tokens: int
    max_deliveries: int = 10
    """A message delivered more often than this (it kept killing workers) is dead-lettered."""


class Dispatcher:
    """Handles deliveries of one deployment's queue."""

    def __init__(
        self,
        deployment: str,
        *,
        queue: Queue,
        throttle: SlotLimiter,
        results: ResultSink,
        upstream: Upstream,
        config: DispatchConfig,
        tokens: TokenRecorder | None = None,
        quota: QuotaGate | None = None,
        metrics: WorkerMetrics | None = None,
        breaker: SharedBreaker | None = None,
        admission: Admission | None = None,
        counts_redis: aioredis.Redis | None = None,
        telemetry: Telemetry = OFF,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] | None = None,
    ) -> None:
        import random

        self.deployment = deployment
        self._queue = queue
        self._throttle = throttle
        self._results = results
        self._upstream = upstream
        self._config = config
        self._tokens = tokens
        self._quota = quota
        self._metrics = metrics
        self._telemetry = telemetry
        self._clock = clock
        self._sleep = sleep
        self._rand = rand if rand is not None else random.Random().random
        self._settled: set[str] = set()
        """Tokens of deliveries being handled that were acknowledged or dead-lettered."""
        self.bookkeeping: set[asyncio.Task[Any]] = set()
        """Shielded writes still running; the worker awaits them before exiting."""
        self.breaker = breaker
        self._admission = admission
        self._counts_redis = counts_redis
        self.gated = 0
        """Requests of this dispatcher waiting for the breaker to let a call through."""
        self.ready_retries = 0
        """Retries whose backoff is over, waiting for a slot: they go before fresh messages."""
        self._warned_unreachable = False
        self.counts: dict[str, int] = {"completed": 0, "failed": 0, "expired": 0, "retries": 0}
        self.completions: list[float] = []
        """Clock times of recent results (the worker trims it to compute throughput)."""

    async def handle(
        self, delivery: Delivery, slot: Slot, stop: asyncio.Event
    ) -> ResultStatus | None:
        """Process one delivery holding `slot`; the status written, or None if not finished."""
        message = delivery.message
        held: list[Slot | None] = [slot]
        with (
            structlog.contextvars.bound_contextvars(
                request_id=message.id, deployment=self.deployment
            ),
            self._telemetry.consuming(message, delivery.delivery_count),
        ):
            try:
                return await self._process(delivery, held, stop)
            except Exception:
                log.exception("dispatch_failed", delivery_count=delivery.delivery_count)
                return None
            finally:
                await self._release(held)
                if delivery.token in self._settled:
                    self._settled.discard(delivery.token)
                else:
                    await self._shielded(self._give_back(delivery))

    async def _process(
        self, delivery: Delivery, held: list[Slot | None], stop: asyncio.Event
    ) -> ResultStatus | None:
        message = delivery.message
        if delivery.unreadable is not None:
            await self._release(held)
            return await self._answer_unreadable(delivery, delivery.unreadable)
        if await self._already_done(message.id):
            await self._release(held)
            # the first completion may have stopped between its steps: finish them
            await self._shielded(self._results.settle(message.id, message.reply_key))
            await self._shielded(self._ack(delivery))
            log.info("redelivery_already_completed", delivery_count=delivery.delivery_count)
            return None
        if delivery.delivery_count > self._config.max_deliveries:
            await self._release(held)
            error = {
                "code": "too_many_deliveries",
                "message": "the request kept interrupting workers",
            }
            doc = self._doc(message, "failed", attempts=0, status_code=None, error=error)
            return await self._finish(delivery, doc, dead_letter="too many deliveries")
        refused = await quota_error(self._quota, message.tenant, message.body)
        if refused is not None:
            await self._release(held)
            doc = self._doc(message, "failed", attempts=0, status_code=QUOTA_STATUS, error=refused)
            return await self._finish(delivery, doc)
        await self._mark_in_progress(message.id)
        return await self._attempts(delivery, held, stop)

    async def _attempts(
        self, delivery: Delivery, held: list[Slot | None], stop: asyncio.Event
    ) -> ResultStatus | None:
        """Call until a result: retries back off, an outage waits without spending attempts."""
        message = delivery.message
        attempt = 0
        while True:
            if self._clock() >= message.deadline:
                return await self._expire(delivery, held, attempt)
            verdict = await self._gate(held, stop, message.deadline)
            if verdict is None:
                if stop.is_set():
                    log.info("request_left_for_redelivery", attempt=attempt)
                    return None
                continue  # the deadline passed while the breaker was open
            attempt += 1
            try:
                called_at = self._clock()
                response = await self._call(message, delivery.delivery_count, attempt)
            except UpstreamError as err:
                await self._release(held)
                if await self._outage(err, verdict == "probe"):
                    attempt -= 1  # the deployment's failure, not the request's: not spent
                    continue
                decision = decide(err, attempt, self._config.retry, self._rand)
                if isinstance(err, UpstreamThrottled):
                    await self._throttle.pause_for(err.retry_after_s or decision.delay_s or 1.0)
                if decision.action == "fail":
                    log.warning(
                        "request_failed", status_code=err.status_code, reason=decision.reason
                    )
                    doc = self._failed(message, err, attempt)
                    return await self._finish(delivery, doc, dead_letter=decision.reason)
                if not await self._retry_wait(
                    err, decision.delay_s, decision.reason, attempt, message.deadline, held, stop
                ):
                    log.info("request_left_for_redelivery", attempt=attempt)
                    return None
                continue
            await self._release(held)
            if self.breaker is not None:
                await self.breaker.record("ok", probe=verdict == "probe")
            doc = self._doc(
                message,
                "completed",
                attempts=attempt,
                status_code=response.status_code,
                response=response.body,
                usage=response.usage,
            )
            doc.started_at = called_at
            return await self._finish(delivery, doc)

    async def _retry_wait(
        self,
        err: UpstreamError,
        delay_s: float,
        reason: str,
        attempt: int,
        deadline: float,
        held: list[Slot | None],
        stop: asyncio.Event,
    ) -> bool:
        """Back off, then take a slot ahead of fresh messages; False on stop."""
        self.counts["retries"] += 1
        log.info(
            "request_retry",
            status_code=err.status_code,
            attempt=attempt,
            delay_s=round(delay_s, 3),
            reason=reason,
        )
        if not await pause(
            min(delay_s, max(0.0, deadline - self._clock())), stop, sleep=self._sleep
        ):
            return False
        self.ready_retries += 1
        try:
            held[0] = await self._throttle.acquire(stop)
        finally:
            self.ready_retries -= 1
        return held[0] is not None

    async def _expire(
        self, delivery: Delivery, held: list[Slot | None], attempts: int
    ) -> ResultStatus | None:
        await self._release(held)
        error = {"code": "expired", "message": "the deadline passed before the call"}
        doc = self._doc(
            delivery.message, "expired", attempts=attempts, status_code=None, error=error
        )
        return await self._finish(delivery, doc, dead_letter="expired")

    async def _gate(
        self, held: list[Slot | None], stop: asyncio.Event, deadline: float
    ) -> Verdict | None:
        """Hold a slot and the breaker's permission; None on stop or when the deadline passed.

        While the breaker is open the request waits here without a slot and without
        spending an attempt; in half-open state only the process that won the probe
        calls, everyone else keeps waiting. The delivery is kept rather than released:
        every consumer shares the breaker, so another one could not call either, and each
        release counts a delivery (`max_deliveries` would fail requests of a long outage).
        A stop releases it (`handle`), a crash frees it within the liveness time.
        """
        while True:
            if held[0] is None:
                held[0] = await self._throttle.acquire(stop)
                if held[0] is None:
                    return None
            if self.breaker is None:
                return "call"
            verdict = await self.breaker.allow()
            if verdict != "reject":
                return verdict
            await self._release(held)
            wait = min(max(self.breaker.open_left(), 0.25), 1.0)
            self.gated += 1
            try:
                if not await pause(wait, stop, sleep=self._sleep):
                    return None
            finally:
                self.gated -= 1
            if self._clock() >= deadline:
                return None

    async def _outage(self, err: UpstreamError, probe: bool) -> bool:
        """Record a failure in the breaker; True when it is the deployment's (not spent).

        An unreachable or misconfigured upstream, and any retryable failure that leaves
        the breaker open, pause the deployment: the request waits for the breaker instead
        of burning its attempts against a deployment that cannot answer.
        """
        if self.breaker is None:
            return False
        await self.breaker.record(_outcome(err), retry_after_s=err.retry_after_s, probe=probe)
        if isinstance(err, UpstreamUnreachable):
            if self.breaker.state == "open" and not self._warned_unreachable:
                self._warned_unreachable = True
                log.warning(
                    "upstream_unreachable_paused",
                    endpoint=self.breaker.endpoint,
                    cause=err.cause,
                    paused_s=round(self.breaker.open_left(), 1),
                )
            return True
        if self.breaker.state == "closed":
            self._warned_unreachable = False
            return False
        return err.retryable and not isinstance(err, UpstreamThrottled)

    async def _answer_unreadable(self, delivery: Delivery, reason: str) -> ResultStatus | None:
        """A message the worker cannot read still gets its `failed` result, then is parked.

        Its record (written by the ingress) supplies what the message cannot: reply
        key, batch, custom id.
        """
        request_id = delivery.message.id
        log.error("message_unreadable", reason=reason)
        state = await self._results.get(request_id)
        reply_key = state.reply_key if state and state.reply_key else delivery.message.reply_key
        now = self._clock()
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
        return await self._finish(
            Delivery(message, delivery.token, delivery.delivery_count, reason, delivery.payload),
            doc,
            dead_letter=reason,
        )

    async def _call(
        self, message: QueuedRequest, delivery_count: int, attempt: int
    ) -> UpstreamResponse:
        event_id = f"{message.id}:{delivery_count}:{attempt}"
        prompt = estimate_prompt_tokens(message.body)
        budget = requested_max_tokens(message.body, self._config.default_max_tokens)
        if self._admission is not None:
            await self._admission.wait(prompt, budget)
        tenant = message.tenant
        if self._tokens is not None:
            await self._record(
                bracket.admit(
                    event_id, self.deployment, prompt_tokens=prompt, max_tokens=budget,
                    tenant=tenant, now=self._clock(),
                )
            )  # fmt: skip
        started = self._clock()
        status, answered = 0, False
        failure: UpstreamError | None = None
        span = self._telemetry.llm_call(
            self.deployment,
            request_id=message.id,
            priority="low",
            tenant=message.tenant,
            max_tokens=budget,
        )
        try:
            async with asyncio.timeout(self._config.request_timeout_s):
                send = (
                    self._upstream.responses
                    if message.endpoint == "responses"
                    else self._upstream.chat
                )
                response = await send(
                    self.deployment, message.body, headers={CLIENT_REQUEST_ID_HEADER: message.id}
                )
            answered = True
        except TimeoutError:
            status = 408
            raise UpstreamTimeout("no answer within the request timeout", status_code=408) from None
        except UpstreamError as err:
            status, failure = err.status_code, err
            raise
        finally:
            if not answered:
                span.end(status or None, error=None if status else "interrupted")
                # failed or cancelled: refund the admitted completion budget
                if self._tokens is not None:
                    refund = bracket.complete(
                        event_id, self.deployment, tenant=tenant, now=self._clock(),
                        status_code=status or None,
                        signals=error_signals(failure) if failure is not None else None,
                    )  # fmt: skip
                    await self._shielded(self._record(refund))
                if self._metrics is not None and status:
                    self._metrics.call(self.deployment, status, self._clock() - started)
        answered_at = self._clock()
        span.end(
            response.status_code,
            usage=response.usage,
            finish_reason=response.finish_reason,
            response_model=_text(response.body.get("model")),
            response_id=_text(response.body.get("id")),
        )
        prompt_actual, completion, _ = usage_counts(response.usage)
        if self._tokens is not None:
            done = bracket.complete(
                event_id, self.deployment, tenant=tenant, now=self._clock(),
                usage=response.usage, status_code=response.status_code,
                signals=response.signals, observed_at=answered_at,
            )  # fmt: skip
            await self._shielded(self._record(done))
        latency = self._clock() - started
        if self._metrics is not None:
            self._metrics.call(self.deployment, response.status_code, latency)
            self._metrics.usage(self.deployment, prompt_actual, completion)
        log.info(
            "upstream_call_completed",
            attempt=attempt,
            latency_s=round(latency, 3),
            prompt_tokens=prompt_actual,
            completion_tokens=completion,
            finish_reason=response.finish_reason,
        )
        return response

    async def _finish(
        self, delivery: Delivery, doc: ResultDocument, dead_letter: str | None = None
    ) -> ResultStatus | None:
        """Write the result, then ack (or dead-letter); shielded from cancellation."""
        return await self._shielded(self._write_then_ack(delivery, doc, dead_letter))

    async def _write_then_ack(
        self, delivery: Delivery, doc: ResultDocument, dead_letter: str | None
    ) -> ResultStatus | None:
        try:
            wrote = await self._results.complete(doc, delivery.message.reply_key)
        except (RedisError, PTUError) as exc:
            log.error("result_write_failed", status=doc.status, error=repr(exc))
            return None  # released by `handle`: another consumer finishes it
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
        self.counts[doc.status] += 1
        self._telemetry.outcome(doc.status, doc.status_code)
        await self._count(doc.status)
        self.completions.append(self._clock())
        if self._metrics is not None:
            self._metrics.result(self.deployment, doc.status)
            status: str = doc.status
            if doc.status_code == 429:
                status = "throttled"
            elif doc.error and doc.error.get("code") == "token_quota_exceeded":
                status = "limited"
            elif doc.status == "failed" and doc.status_code and doc.status_code < 500:
                status = "rejected"
            self._metrics.tenants.finished(delivery.message.tenant, self.deployment, "low", status)
        log.info(
            "request_finished",
            status=doc.status,
            status_code=doc.status_code,
            attempts=doc.attempts,
            queued_s=round(doc.completed_at - doc.enqueued_at, 3),
        )
        _access(doc)
        return doc.status

    def _doc(
        self,
        message: QueuedRequest,
        status: ResultStatus,
        *,
        attempts: int,
        status_code: int | None,
        response: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> ResultDocument:
        return ResultDocument.for_request(
            message,
            status,
            completed_at=self._clock(),
            attempts=attempts,
            status_code=status_code,
            response=response,
            usage=usage,
            error=error,
        )

    def _failed(self, message: QueuedRequest, err: UpstreamError, attempts: int) -> ResultDocument:
        error = error_object(err.status_code, err.body, str(err))
        return self._doc(
            message, "failed", attempts=attempts, status_code=err.status_code, error=error
        )

    async def _already_done(self, request_id: str) -> bool:
        try:
            state = await self._results.get(request_id)
        except (RedisError, PTUError) as exc:
            log.warning("result_lookup_failed", error=repr(exc))
            return False  # completion is idempotent anyway
        return state is not None and state.result is not None

    async def _ack(self, delivery: Delivery) -> None:
        await self._queue.ack(delivery)
        self._settled.add(delivery.token)

    async def _give_back(self, delivery: Delivery) -> None:
        """Release a delivery this dispatcher will not finish (logged, never raised)."""
        try:
            await self._queue.release(delivery)
        except (RedisError, PTUError) as exc:
            # unreachable queue: the entry moves once this consumer looks dead
            log.warning("release_failed", error=repr(exc))
        else:
            log.info("delivery_released", delivery_count=delivery.delivery_count)

    async def _mark_in_progress(self, request_id: str) -> None:
        try:
            await self._results.mark_in_progress(request_id)
        except (RedisError, PTUError) as exc:
            log.warning("mark_in_progress_failed", error=repr(exc))

    async def _record(self, event: TokenEvent) -> None:
        """Apply one token event to the estimate (logged, never raised: it is a hint)."""
        if self._tokens is None:
            return
        try:
            await self._tokens.record(event)
        except PTUError as exc:
            log.warning("token_event_failed", phase=event.phase, error=repr(exc))

    async def _count(self, status: str) -> None:
        """The deployment's result counters in Redis, which outlive any worker."""
        if self._counts_redis is None:
            return
        try:
            await self._counts_redis.hincrby(keys.result_counts(self.deployment), status, 1)
        except RedisError as exc:
            log.warning("result_count_failed", status=status, error=repr(exc))

    async def _release(self, held: list[Slot | None]) -> None:
        slot, held[0] = held[0], None
        if slot is not None:
            await self._shielded(self._throttle.release(slot))

    async def _shielded(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Run `work` to completion even if the caller is cancelled (tracked for shutdown)."""
        task = asyncio.ensure_future(work)
        self.bookkeeping.add(task)
        task.add_done_callback(self.bookkeeping.discard)
        return await asyncio.shield(task)

    def __repr__(self) -> str:
        c = self.counts
        return (
            f"<Dispatcher deployment={self.deployment} completed={c['completed']} "
            f"failed={c['failed']} expired={c['expired']} retries={c['retries']}>"
        )


def _access(doc: ResultDocument) -> None:
    """The low-priority request's access log line, in the ingress's format (`ptu.access`)."""
    prompt, completion, cached = usage_counts(doc.usage)
    choices = (doc.response or {}).get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    access_log.info(
        "access",
        request_id=doc.id,
        tenant=doc.tenant,
        deployment=doc.deployment,
        priority="low",
        status=doc.status_code,
        result=doc.status,
        latency_ms=round((doc.completed_at - doc.enqueued_at) * 1000, 1),
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=completion,
        finish_reason=first.get("finish_reason") if isinstance(first, dict) else None,
        spillover=None,
        batch_id=doc.batch_id,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _outcome(err: UpstreamError) -> Outcome:
    if isinstance(err, UpstreamUnreachable):
        return "unreachable"
    if isinstance(err, UpstreamThrottled):
        return "throttled"
    return "error" if err.retryable else "ok"

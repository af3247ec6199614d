"""One call of a queued request to its deployment: prepared, bracketed, timed, traced.

`prepare` is the pre-call step: what is sent (the request body) and what the estimate is
charged for it (prompt estimate, completion budget) are settled there, before the
admission wait and the `admit` token event. The call itself runs under the request
timeout; whatever ends it (answer, error, timeout, cancellation) records the `complete`
token event (`calls.bracket`: zero tokens for a failed call, which refunds the admitted
budget; the response's signals either way), the client span and the call metrics.

An answer Azure spilled to a standard deployment (native spillover, `calls.signals`) is the
PTU saying it is full, and paid at pay-as-you-go price: the PTU's `complete` carries the
saturation and no tokens (they are the standard deployment's, recorded there through
`Reporting.usage`), the spill is counted (`ptu_worker_spilled_total`, the deployment's
`spilled` count), the deployment's low-priority dispatch pauses as for a 429, and with
`low_priority_spill: fail` the answer is discarded: the request fails with
`spillover_discarded` (no retry: each would be paid again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from orchestrator.calls import bracket
from orchestrator.calls.outcome import UpstreamResponse
from orchestrator.calls.signals import error_signals
from orchestrator.core.errors import PTUError, StoreUnavailable, UpstreamError, UpstreamTimeout
from orchestrator.core.results import count_result
from orchestrator.core.runtime import Pacing
from orchestrator.core.schemas import QueuedRequest, TokenEvent
from orchestrator.core.tasks import TaskSet
from orchestrator.core.tokens import estimate_prompt_tokens, requested_max_tokens, usage_counts
from orchestrator.tenants.ledger import Usage

if TYPE_CHECKING:
    from orchestrator.worker.dispatch.parts import DispatchConfig, Gates, Reporting
    from orchestrator.worker.dispatch.slots import SlotHolder
    from orchestrator.worker.upstream import Upstream

log = structlog.get_logger(__name__)

CLIENT_REQUEST_ID_HEADER = "x-ms-client-request-id"
SPILLED_PAUSE_S = 1.0
"""How long a spilled answer pauses the deployment's low priority when it names no wait
(a 429 without retry-after pauses as long)."""
DISCARDED_STATUS = 409
"""The status of a request whose spilled answer was discarded (`low_priority_spill: fail`):
a 4xx, so it is not retried, and not the deployment's failure, so the breaker stays closed."""
DISCARDED_CODE = "spillover_discarded"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request made ready for one call: what is sent, and what the estimate is charged."""

    body: Mapping[str, Any]
    prompt_tokens: int
    max_tokens: int


class Caller:
    """Calls one deployment for queued requests, one attempt at a time."""

    def __init__(
        self,
        deployment: str,
        upstream: Upstream,
        config: DispatchConfig,
        gates: Gates,
        reporting: Reporting,
        pacing: Pacing,
        bookkeeping: TaskSet,
    ) -> None:
        self.deployment = deployment
        self._upstream = upstream
        self._config = config
        self._admission = gates.admission
        self._throttle = gates.throttle
        self._reporting = reporting
        self._clock = pacing.clock
        self._bookkeeping = bookkeeping

    def prepare(self, message: QueuedRequest) -> Prepared:
        """The pre-call step: the body to send and the tokens it is admitted with.

        `message` is the one the `Sizer`'s plan chose (its output limit sized or not);
        anything else a call's body needs is settled here.
        """
        body = message.body
        return Prepared(
            body=body,
            prompt_tokens=estimate_prompt_tokens(body),
            max_tokens=requested_max_tokens(body, self._config.default_max_tokens),
        )

    async def call(
        self,
        message: QueuedRequest,
        delivery_count: int,
        attempt: int,
        slot: SlotHolder | None = None,
    ) -> UpstreamResponse:
        """One attempt; raises `UpstreamError` (a timeout as `UpstreamTimeout`, 408).

        `slot`: the throttle slot the attempt holds; its lease is made to cover the call's
        timeout as the call starts (a stalled worker's calls keep counting).
        """
        event_id = f"{message.id}:{delivery_count}:{attempt}"
        prepared = self.prepare(message)
        if self._admission is not None:
            await self._admission.wait(prepared.prompt_tokens, prepared.max_tokens)
        if slot is not None:
            await slot.start(self._config.request_timeout_s)
        tokens = self._reporting.tokens is not None
        if tokens:
            admit = bracket.admit(
                event_id, self.deployment, prompt_tokens=prepared.prompt_tokens,
                max_tokens=prepared.max_tokens, tenant=message.tenant, now=self._clock(),
            )  # fmt: skip
            await self._record(admit)
        started = self._clock()
        status, answered = 0, False
        failure: UpstreamError | None = None
        span = self._reporting.telemetry.llm_call(
            self.deployment,
            request_id=message.id,
            priority="low",
            tenant=message.tenant,
            max_tokens=prepared.max_tokens,
        )
        try:
            async with asyncio.timeout(self._config.request_timeout_s):
                send = (
                    self._upstream.responses
                    if message.endpoint == "responses"
                    else self._upstream.chat
                )
                response = await send(
                    self.deployment, prepared.body, headers={CLIENT_REQUEST_ID_HEADER: message.id}
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
                if tokens:
                    refund = bracket.complete(
                        event_id, self.deployment, tenant=message.tenant, now=self._clock(),
                        status_code=status or None,
                        signals=error_signals(failure) if failure is not None else None,
                    )  # fmt: skip
                    await self._bookkeeping.shielded(self._record(refund))
                if self._reporting.metrics is not None and status:
                    self._reporting.metrics.call(self.deployment, status, self._clock() - started)
        answered_at = self._clock()
        spilled = response.signals.spilled
        span.end(
            response.status_code,
            usage=response.usage,
            finish_reason=response.finish_reason,
            response_model=_text(response.body.get("model")),
            response_id=_text(response.body.get("id")),
        )
        if tokens:
            done = bracket.complete(
                event_id, self.deployment, tenant=message.tenant, now=self._clock(),
                usage=None if spilled else response.usage, status_code=response.status_code,
                signals=response.signals, observed_at=answered_at,
            )  # fmt: skip
            await self._bookkeeping.shielded(self._record(done))
        served = response.signals.served(self.deployment)
        self._answered(response, started, attempt, served)
        if spilled:
            await self._bookkeeping.shielded(self._spilled(message, response, served))
            if self._config.low_priority_spill == "fail":
                raise _discarded(self.deployment, served)
        return response

    def _answered(
        self, response: UpstreamResponse, started: float, attempt: int, served: str
    ) -> None:
        """Count the answered call (its tokens on the deployment that served it) and log it."""
        prompt, completion, _ = usage_counts(response.usage)
        latency = self._clock() - started
        metrics = self._reporting.metrics
        if metrics is not None:
            metrics.call(self.deployment, response.status_code, latency)
            metrics.usage(served, prompt, completion)
        log.info(
            "upstream_call_completed",
            attempt=attempt,
            latency_s=round(latency, 3),
            prompt_tokens=prompt,
            completion_tokens=completion,
            finish_reason=response.finish_reason,
            served_by=served if served != self.deployment else None,
        )

    async def _spilled(
        self, message: QueuedRequest, response: UpstreamResponse, served: str
    ) -> None:
        """A low-priority call Azure served from `served`: charge it there, count it, pause."""
        prompt, completion, cached = usage_counts(response.usage)
        reporting = self._reporting
        if reporting.usage is not None:
            use = Usage(message.tenant, served, "low", prompt, cached, completion)
            await reporting.usage.served(use)
        if reporting.metrics is not None:
            reporting.metrics.spilled_call(self.deployment, served, message.tenant)
        log.warning(
            "low_priority_spilled",
            served_by=served,
            tenant=message.tenant,
            kept=self._config.low_priority_spill == "keep",
            prompt_tokens=prompt,
            completion_tokens=completion,
        )
        if reporting.counts is not None:
            try:
                await count_result(reporting.counts, self.deployment, "spilled")
            except StoreUnavailable as exc:
                log.warning("spill_count_failed", error=repr(exc))
        await self._throttle.pause_for(response.signals.retry_after_s or SPILLED_PAUSE_S)

    async def _record(self, event: TokenEvent) -> None:
        """Apply one token event to the estimate (logged, never raised: it is a hint)."""
        if self._reporting.tokens is None:
            return
        try:
            await self._reporting.tokens.record(event)
        except PTUError as exc:
            log.warning("token_event_failed", phase=event.phase, error=repr(exc))

    def __repr__(self) -> str:
        return f"<Caller deployment={self.deployment}>"


def _discarded(deployment: str, served: str) -> UpstreamError:
    """The error of a spilled answer discarded by `low_priority_spill: fail`."""
    message = (
        f"served by the pay-as-you-go deployment {served!r} (Azure spilled it over from "
        f"{deployment!r}) and discarded: the deployment's low_priority_spill is 'fail'"
    )
    body: dict[str, object] = {
        "error": {"code": DISCARDED_CODE, "message": message, "type": "spillover_error"}
    }
    return UpstreamError(message, status_code=DISCARDED_STATUS, body=body)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None

"""What surrounds each attempt of a queued request: a throttle slot and the circuit breaker.

`WorkerGate` is the worker's `calls.attempts.Gate`. Before an attempt it holds a slot
and the breaker's permission. While the breaker is open the request waits here without
a slot and without spending an attempt; in half-open state only the process that won
the probe calls, everyone else keeps waiting. The delivery is kept rather than released:
every consumer shares the breaker, so another one could not call either, and each
release counts a delivery (`max_deliveries` would fail requests of a long outage). A
stop releases it (`Dispatcher.handle`), a crash frees it within the liveness time. A pool
member (`hand_over`) is the exception: the other members share its queue and not its
breaker, so a request meeting its open breaker is handed back at once (released, one
delivery counted, no attempt spent) and a healthy member takes it.

After an attempt the slot goes back at once. A failure is recorded in the breaker; an
unreachable or misconfigured upstream, and any retryable failure that leaves the breaker
open, is an outage: the request waits for the breaker instead of burning its attempts.
A 429 pauses the deployment for every worker. A retry waits its backoff without a slot,
then takes one ahead of fresh messages (`Waiting.ready_retries`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from orchestrator.calls.attempts import Permit
from orchestrator.calls.outcome import error_verdict
from orchestrator.core.errors import UpstreamError, UpstreamThrottled, UpstreamUnreachable
from orchestrator.core.retry import Decision
from orchestrator.core.runtime import Pacing, pause
from orchestrator.worker.dispatch.slots import SlotHolder

if TYPE_CHECKING:
    from orchestrator.breaker.shared import SharedBreaker
    from orchestrator.worker.protocols import SlotLimiter

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Waiting:
    """A dispatcher's requests waiting at the gate (the worker's lane reads them)."""

    gated: int = 0
    """Requests waiting for the breaker to let a call through."""
    ready_retries: int = 0
    """Retries whose backoff is over, waiting for a slot: they go before fresh messages."""
    retries: int = 0
    """Retries started (a counter)."""
    warned_unreachable: bool = False


class WorkerGate:
    """The gate of one request: its slot, the deployment's breaker and throttle."""

    def __init__(
        self,
        slot: SlotHolder,
        throttle: SlotLimiter,
        breaker: SharedBreaker | None,
        waiting: Waiting,
        stop: asyncio.Event,
        pacing: Pacing,
        *,
        hand_over: bool = False,
    ) -> None:
        self._hand_over = hand_over
        self._slot = slot
        self._throttle = throttle
        self._breaker = breaker
        self._waiting = waiting
        self._stop = stop
        self._pacing = pacing

    async def enter(self, deadline: float | None) -> Permit:
        """Hold a slot and the breaker's permission (see the module docstring)."""
        while True:
            if not await self._slot.acquire(self._stop):
                return "stop"
            if self._breaker is None:
                return "call"
            verdict = await self._breaker.allow()
            if verdict != "reject":
                return verdict
            await self._slot.release()
            if self._hand_over:
                log.info("request_handed_over", endpoint=self._breaker.endpoint)
                return "stop"  # left for redelivery: another member of the pool takes it
            wait = min(max(self._breaker.open_left(), 0.25), 1.0)
            self._waiting.gated += 1
            try:
                if not await pause(wait, self._stop, sleep=self._pacing.sleep):
                    return "stop"
            finally:
                self._waiting.gated -= 1
            if deadline is not None and self._pacing.clock() >= deadline:
                return "late"

    async def answered(self, probe: bool) -> None:
        """Hand the slot back; the breaker counts a success."""
        await self._slot.release()
        if self._breaker is not None:
            await self._breaker.record("ok", probe=probe)

    async def failed(self, err: UpstreamError, probe: bool) -> bool:
        """Hand the slot back; record the failure; True when it is the deployment's outage."""
        await self._slot.release()
        breaker = self._breaker
        if breaker is None:
            return False
        await breaker.record(error_verdict(err), retry_after_s=err.retry_after_s, probe=probe)
        if isinstance(err, UpstreamUnreachable):
            if breaker.state == "open" and not self._waiting.warned_unreachable:
                self._waiting.warned_unreachable = True
                log.warning(
                    "upstream_unreachable_paused",
                    endpoint=breaker.endpoint,
                    cause=err.cause,
                    paused_s=round(breaker.open_left(), 1),
                )
            return True
        if breaker.state == "closed":
            self._waiting.warned_unreachable = False
            return False
        return err.retryable and not isinstance(err, UpstreamThrottled)

    async def decided(self, err: UpstreamError, decision: Decision) -> None:
        """A 429 pauses the deployment on every worker for its retry-after."""
        if isinstance(err, UpstreamThrottled):
            await self._throttle.pause_for(err.retry_after_s or decision.delay_s or 1.0)
        if decision.action == "fail":
            log.warning("request_failed", status_code=err.status_code, reason=decision.reason)

    async def backoff(
        self, err: UpstreamError, decision: Decision, attempt: int, deadline: float | None
    ) -> bool:
        """Back off without a slot, then take one ahead of fresh messages; False on stop."""
        self._waiting.retries += 1
        delay_s = decision.delay_s
        log.info(
            "request_retry",
            status_code=err.status_code,
            attempt=attempt,
            delay_s=round(delay_s, 3),
            reason=decision.reason,
        )
        if deadline is not None:
            delay_s = min(delay_s, max(0.0, deadline - self._pacing.clock()))
        if not await pause(delay_s, self._stop, sleep=self._pacing.sleep):
            return False
        self._waiting.ready_retries += 1
        try:
            return await self._slot.acquire(self._stop)
        finally:
            self._waiting.ready_retries -= 1

    def __repr__(self) -> str:
        return f"<WorkerGate slot={self._slot!r} gated={self._waiting.gated}>"

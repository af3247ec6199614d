"""What the ingress records of one high-priority call: token events, span, accounting.

The one recorder of a call, used by the spillover walk (each target's `admit` and
`complete`), the plain answer and the stream relay (the `observe` of a stream's first
byte, its `complete` and its end): none of them calls back into the proxy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ingress.chat.accounting import Accounting
from ingress.chat.call import Answer, Call
from ingress.chat.targets import Target
from ingress.chat.token_events import TokenEvents
from orchestrator.calls.outcome import Outcome
from orchestrator.telemetry.base import OFF, Telemetry


class CallRecorder:
    """Token events, the client span and the accounting of high-priority calls."""

    def __init__(
        self,
        events: TokenEvents,
        *,
        accounting: Accounting | None = None,
        telemetry: Telemetry = OFF,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.events = events
        self._accounting = accounting
        self._telemetry = telemetry
        self.timer = timer

    def started(self, call: Call) -> float:
        """Open the call's span (when tracing); the timer's start of the call."""
        if self._telemetry.enabled:
            call.span = self._telemetry.llm_call(
                call.target.name, request_id=call.request_id, priority=call.priority,
                tenant=call.tenant, max_tokens=call.max_tokens or None,
            )  # fmt: skip
        return self.timer()

    def admit(self, call: Call, target: Target) -> asyncio.Task[None] | None:
        """Record the `admit` event of a call to a provisioned `target`."""
        if not target.provisioned:
            return None
        return self.events.admit(
            call.request_id, target.name, call.prompt_tokens, call.max_tokens, call.tenant
        )

    def finished(
        self,
        admitted: asyncio.Task[None] | None,
        call: Call,
        used: Target,
        usage: dict[str, Any] | None,
        answer: Answer | None = None,
    ) -> None:
        """Record the `complete` token event of a call to a provisioned deployment.

        With the deployment's `answer`, the event carries what its headers said (the
        estimate calibrates itself on the utilisation header, a 429's retry-after, ...).
        An answer Azure spilled to a standard deployment tells the PTU's estimate it was
        saturated but charges it nothing: the tokens are the standard deployment's.
        """
        if not used.provisioned:
            return
        if answer is not None and answer.spilled:
            usage = None
        self.events.complete(
            admitted, call.request_id, used.name, call.max_tokens, usage, call.tenant,
            status_code=None if answer is None else answer.resp.status_code,
            signals=None if answer is None else answer.signals,
        )  # fmt: skip

    def observed(self, call: Call, answer: Answer) -> None:
        """Record what a stream's headers reported at its first byte."""
        if answer.used.provisioned and answer.signals is not None:
            self.events.observe(
                answer.admitted, call.request_id, answer.used.name, answer.signals, call.tenant
            )

    def ended(
        self,
        call: Call,
        served: str,
        status_code: int,
        started: float,
        ttfb_s: float | None,
        usage: dict[str, Any] | None,
        finish_reason: str | None,
        service_tier: str | None = None,
    ) -> None:
        """Account for a finished call: its span, counters, latency, access log, usage ledger.

        `served`: the deployment that served it (a spillover's, Azure's standard deployment
        for a natively spilled call), the one charged in the ledger and named in the log.
        """
        call.span.end(status_code, usage=usage, finish_reason=finish_reason)
        if self._accounting is None:
            return
        # a pool's call names the member that served it, as x-ptu-deployment does
        asked = served if call.target.speaks_for(served) else call.target.name
        self._accounting.finished(
            Outcome(
                request_id=call.request_id,
                tenant=call.tenant,
                deployment=asked,
                priority=call.priority,
                status_code=status_code,
                latency_s=self.timer() - started,
                ttfb_s=ttfb_s,
                usage=usage,
                finish_reason=finish_reason,
                spillover=served if served != asked else None,
                service_tier=service_tier,
            )
        )

    def __repr__(self) -> str:
        return f"<CallRecorder events={self.events!r} accounting={self._accounting is not None}>"

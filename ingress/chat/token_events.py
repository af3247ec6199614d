"""Admit/complete token events for high-priority calls to provisioned deployments.

Events are recorded in background tasks so the hot path never waits on Redis:
`admit` is scheduled just before the upstream call, `complete` (which awaits its
`admit` first, so the estimate always sees them in order) after the response.
A call the deployment refused or failed (any non-2xx) completes with zero
tokens, which takes its admission charge back out of the estimate. With a `guard`
(`core/fail_open`), each write has a deadline of `EVENT_BUDGET_S` and none is tried
during the cool-down after a Redis failure: an outage drops events (counted as
`what="token_event"`) instead of piling up writes that would hold the shutdown's drain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from orchestrator.calls import bracket
from orchestrator.calls.signals import Signals
from orchestrator.core.fail_open import FailOpen
from orchestrator.core.schemas import TokenEvent
from orchestrator.core.tasks import TaskSet
from orchestrator.utilisation.base import TokenRecorder

log = structlog.get_logger(__name__)

EVENT_BUDGET_S = 1.0
"""The deadline of one event's write under a guard (off the request path: longer)."""


class TokenEvents:
    """Fire-and-forget admit/complete events with their tasks kept referenced."""

    def __init__(
        self,
        sink: TokenRecorder | None,
        *,
        clock: Callable[[], float] = time.time,
        guard: FailOpen | None = None,
    ) -> None:
        self._sink = sink
        self.guard = guard
        self._clock = clock
        self._tasks = TaskSet()

    @property
    def sink(self) -> TokenRecorder | None:
        """Where the events go (None: nowhere)."""
        return self._sink

    @property
    def enabled(self) -> bool:
        """True when a sink is configured."""
        return self._sink is not None

    def admit(
        self,
        request_id: str,
        deployment: str,
        prompt_tokens: int,
        max_tokens: int,
        tenant: str = "default",
    ) -> asyncio.Task[None] | None:
        """Schedule the `admit` event; returns its task for `complete` to follow."""
        if self._sink is None:
            return None
        event = bracket.admit(
            request_id, deployment, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
            tenant=tenant, now=self._clock(),
        )  # fmt: skip
        return self._tasks.spawn(self._record(event, None))

    def complete(
        self,
        admitted: asyncio.Task[None] | None,
        request_id: str,
        deployment: str,
        max_tokens: int,
        usage: dict[str, Any] | None,
        tenant: str = "default",
        *,
        status_code: int | None = None,
        signals: Signals | None = None,
    ) -> None:
        """Schedule the `complete` event with the actual usage (None: nothing was used).

        `signals` (the response's headers, observed now) and its `status_code` are the
        deployment's own word on its load; the estimate calibrates itself on them.
        """
        if self._sink is None:
            return
        event = bracket.complete(
            request_id, deployment, tenant=tenant, now=self._clock(), usage=usage,
            max_tokens=max_tokens, status_code=status_code, signals=signals,
        )  # fmt: skip
        self._tasks.spawn(self._record(event, admitted))

    def observe(
        self,
        admitted: asyncio.Task[None] | None,
        request_id: str,
        deployment: str,
        signals: Signals,
        tenant: str = "default",
    ) -> None:
        """Schedule an `observe` event: what a stream's headers reported now (if anything)."""
        if self._sink is None:
            return
        event = bracket.observe(
            request_id, deployment, tenant=tenant, now=self._clock(), signals=signals
        )
        if event is not None:
            self._tasks.spawn(self._record(event, admitted))

    async def drain(self, within_s: float | None = None) -> int:
        """Wait for the pending events (at shutdown), at most `within_s`; how many were cut."""
        if within_s is None:
            await self._tasks.drain()
            return 0
        return await self._tasks.drain_within(within_s)

    async def _record(self, event: TokenEvent, after: asyncio.Task[None] | None) -> None:
        if after is not None and not after.done():
            await asyncio.wait([after])
        sink = self._sink
        assert sink is not None
        try:
            if self.guard is not None:
                await self.guard.call(
                    "token_event", lambda: sink.record(event), None, budget_s=EVENT_BUDGET_S
                )
            else:
                await sink.record(event)
        except Exception as exc:  # the estimate is a hint; a lost event must not fail a call
            log.warning(
                "token_event_failed",
                request_id=event.request_id,
                phase=event.phase,
                error=repr(exc),
            )

    def __repr__(self) -> str:
        return f"<TokenEvents enabled={self.enabled} pending={len(self._tasks)}>"

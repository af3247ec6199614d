"""The token events of one process, applied in batches per deployment (`core/batching`).

The ingress and the worker record a token event around every call. Through a
`BatchedRecorder` the events of one deployment go to the estimate one batch at a time:
what arrives while a batch is being applied goes with the next (`EstimateStore.record_many`:
one transaction for the lot), so a process's own events never conflict with each other
and their round trips do not grow with the rate. `record` still returns once its event
is applied, so the worker's `admit` precedes its call as before.

With a `guard` (the ingress: `core/fail_open`), each batch's write has the deadline
`budget_s` and fails open: its events are dropped (counted as `what="token_event"`), never
the call. The deadline is the batch's own, not its events' (an event also waits for the
batch before it), so a busy process never drops events that Redis was merely slow to take.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from orchestrator.core.batching import Batcher
from orchestrator.core.fail_open import FailOpen
from orchestrator.core.schemas import TokenEvent


class ManyRecorder(Protocol):
    """A recorder that folds several events in at once (`EstimateStore`)."""

    async def record_many(self, events: Sequence[TokenEvent]) -> None:
        """Fold `events` in, in order, each at most once per (request id, phase)."""


class BatchedRecorder:
    """A `TokenRecorder` that applies each deployment's events in batches."""

    def __init__(
        self, inner: ManyRecorder, *, guard: FailOpen | None = None, budget_s: float = 1.0
    ) -> None:
        self.inner = inner
        self.guard = guard
        self.budget_s = budget_s
        self._batcher: Batcher[str, TokenEvent] = Batcher(self._flush)

    async def record(self, event: TokenEvent) -> None:
        """Fold `event` in with its deployment's next batch; returns once it is applied."""
        await self._batcher.submit(event.deployment, event)

    async def _flush(self, deployment: str, events: Sequence[TokenEvent]) -> None:
        if self.guard is None:
            await self.inner.record_many(events)
            return
        inner = self.inner
        await self.guard.call(
            "token_event", lambda: inner.record_many(events), None, budget_s=self.budget_s
        )

    def __repr__(self) -> str:
        return f"<BatchedRecorder {self._batcher!r} inner={self.inner!r}>"

"""The token events of one process, applied in batches per deployment (`core/batching`).

The ingress and the worker record a token event around every call. Through a
`BatchedRecorder` the events of one deployment go to the estimate one batch at a time:
what arrives while a batch is being applied goes with the next (`EstimateStore.record_many`:
one transaction for the lot), so a process's own events never conflict with each other
and their round trips do not grow with the rate. `record` still returns once its event
is applied, so the worker's `admit` precedes its call as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from orchestrator.core.batching import Batcher
from orchestrator.core.schemas import TokenEvent


class ManyRecorder(Protocol):
    """A recorder that folds several events in at once (`EstimateStore`)."""

    async def record_many(self, events: Sequence[TokenEvent]) -> None:
        """Fold `events` in, in order, each at most once per (request id, phase)."""


class BatchedRecorder:
    """A `TokenRecorder` that applies each deployment's events in batches."""

    def __init__(self, inner: ManyRecorder) -> None:
        self.inner = inner
        self._batcher: Batcher[str, TokenEvent] = Batcher(self._flush)

    async def record(self, event: TokenEvent) -> None:
        """Fold `event` in with its deployment's next batch; returns once it is applied."""
        await self._batcher.submit(event.deployment, event)

    async def _flush(self, deployment: str, events: Sequence[TokenEvent]) -> None:
        await self.inner.record_many(events)

    def __repr__(self) -> str:
        return f"<BatchedRecorder {self._batcher!r} inner={self.inner!r}>"

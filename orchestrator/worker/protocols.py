"""What the worker needs from its collaborators, as protocols (implementations are chosen by
the entry point)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from orchestrator.core.schemas import ResultDocument
from orchestrator.throttle.slots import Slot

if TYPE_CHECKING:
    from orchestrator.core.results import RequestState
    from orchestrator.tenants.ledger import Usage
    from orchestrator.utilisation.base import Reading


class SlotLimiter(Protocol):
    """The throttle as the worker uses it (`orchestrator.throttle.limiter.Throttle`)."""

    @property
    def limit(self) -> int:
        """Global concurrency the policy allows now."""

    @property
    def in_flight(self) -> int:
        """Slots this worker holds."""

    @property
    def reading(self) -> Reading | None:
        """The last utilisation reading."""

    async def acquire(self, stop: asyncio.Event) -> Slot | None:
        """Wait for a global slot; None once `stop` is set first."""

    async def acquire_more(self, n: int) -> list[Slot]:
        """Up to `n` more slots at once without waiting (as many as the limit leaves room for)."""

    async def release(self, slot: Slot) -> None:
        """Hand a slot back (idempotent)."""

    async def renew(self) -> None:
        """Extend this worker's leases."""

    async def start(self, slot: Slot, call_s: float) -> bool:
        """The call holding `slot` starts: its lease covers `call_s`; False when it expired."""

    async def open(self) -> None:
        """At start: mark this worker alive to the slot table, drop an earlier run's leases."""

    async def close(self) -> None:
        """At the end: this worker is gone to the slot table."""

    async def pause_for(self, seconds: float) -> None:
        """Stop new slots on every worker for `seconds`."""

    async def global_in_flight(self) -> int:
        """Slots leased by all workers."""


class ResultSink(Protocol):
    """Exactly-once results (`orchestrator.core.results.ResultStore`)."""

    async def get(self, request_id: str) -> RequestState | None:
        """The request's record and result, if any."""

    async def mark_in_progress(self, request_id: str) -> bool:
        """Move a queued request to in_progress; False when it has its result already."""

    async def complete(self, doc: ResultDocument, reply_key: str) -> bool:
        """Write the result once per id; True when this call wrote it."""

    async def settle(self, request_id: str, reply_key: str) -> bool:
        """Finish the reply push and batch count of a written result (idempotent)."""


class UsageSink(Protocol):
    """Usage the estimate must not see (`orchestrator.worker.accounting.WorkerAccounting`)."""

    async def served(self, use: Usage) -> None:
        """Record tokens another deployment served (ledger, counters); logged, never raised."""

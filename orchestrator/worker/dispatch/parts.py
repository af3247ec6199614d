"""What a dispatcher is built from, grouped by role (the entry point fills them from settings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from orchestrator.core.retry import RetryPolicy
from orchestrator.telemetry.base import OFF, Telemetry

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from orchestrator.breaker.shared import SharedBreaker
    from orchestrator.core.replication import Replication
    from orchestrator.queues.base import Queue
    from orchestrator.tenants.quota import QuotaGate
    from orchestrator.throttle.admission import Admission
    from orchestrator.utilisation.base import TokenRecorder
    from orchestrator.worker.metrics import WorkerMetrics
    from orchestrator.worker.protocols import ResultSink, SlotLimiter, UsageSink


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    """Knobs of request handling, from settings."""

    retry: RetryPolicy
    request_timeout_s: float
    default_max_tokens: int
    max_deliveries: int = 10
    """A message delivered more often than this (it kept killing workers) is dead-lettered."""
    low_priority_spill: Literal["keep", "fail"] = "keep"
    """What becomes of an answer Azure spilled to a standard deployment (`dispatch.call`)."""
    hand_over: bool = False
    """A pool member with others beside it: while its breaker is open, a request it holds
    goes back to the pool's queue for another member instead of waiting (`dispatch.gate`)."""


@dataclass(frozen=True, slots=True)
class Delivering:
    """Where a request's deliveries come from and where its result goes."""

    queue: Queue
    """The deployment's queue: acked, released or dead-lettered once the result is written."""
    results: ResultSink
    """The exactly-once result store."""
    replication: Replication | None = None
    """Waits for a written result to reach a replica before the delivery is acknowledged."""


@dataclass(frozen=True, slots=True)
class Gates:
    """What a queued request must pass before and around its calls."""

    throttle: SlotLimiter
    """The global slot table: one slot per call in flight."""
    breaker: SharedBreaker | None = None
    """The deployment's circuit breaker (chat completions), shared with every process."""
    responses_breaker: SharedBreaker | None = None
    """The breaker of its Responses API surface (None: the one `breaker` serves both)."""
    admission: Admission | None = None
    """Waits until the call's tokens fit below the upper threshold."""
    quota: QuotaGate | None = None
    """The tenant's token quota."""

    def breaker_for(self, endpoint: str) -> SharedBreaker | None:
        """The breaker of the API surface `endpoint` calls: one surface never pauses the other."""
        if endpoint == "responses" and self.responses_breaker is not None:
            return self.responses_breaker
        return self.breaker


@dataclass(frozen=True, slots=True)
class Reporting:
    """Where a dispatcher reports what happened."""

    tokens: TokenRecorder | None = None
    """The utilisation estimate's token events."""
    metrics: WorkerMetrics | None = None
    telemetry: Telemetry = OFF
    counts: aioredis.Redis | None = None
    """Redis holding the deployment's result counters (`keys.result_counts`)."""
    usage: UsageSink | None = None
    """Where the tokens of a call another deployment served (native spillover) go."""

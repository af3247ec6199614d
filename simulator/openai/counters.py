"""What a simulated deployment counts and decides: counters, fault settings, admissions."""

from __future__ import annotations

from dataclasses import dataclass, field

UNLABELLED = "unlabelled"
"""The priority label of a call that carries no `x-ptu-priority`."""


@dataclass(slots=True)
class Faults:
    """Fault-injection settings: fractions of calls that fail, time out or get a spike."""

    error_rate: float = 0.0
    timeout_rate: float = 0.0
    spike_rate: float = 0.0
    spike_ms: float = 0.0


@dataclass(slots=True)
class Counters:
    """Totals since start or the last reset."""

    requests: int = 0
    throttled: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    spilled: int = 0
    """Calls this provisioned deployment refused that its spillover target served."""
    spillover_errors: int = 0
    """Calls it refused whose spillover target failed too (the refusal was answered)."""
    spillover_served: int = 0
    """Calls this standard deployment served for a provisioned one (native spillover)."""
    by_priority: dict[str, dict[str, int]] = field(default_factory=dict)

    def bump(self, priority: str, key: str, amount: int = 1) -> None:
        """Add to the per-priority counter `key` (`spilled` appears once a call spills)."""
        slot = self.by_priority.setdefault(
            priority, {"requests": 0, "throttled": 0, "completion_tokens": 0}
        )
        slot[key] = slot.get(key, 0) + amount


@dataclass(slots=True)
class BackgroundCounters:
    """Totals of the synthetic bypassing traffic, kept apart from real callers'."""

    requests: int = 0
    throttled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class Ticket:
    """An admitted call, handed back at completion to reconcile its cost."""

    priority: str
    prompt_tokens: int
    admitted_output_tokens: int
    admitted_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """What the deployment decided for one call; `status` 200 means go ahead."""

    status: int
    utilization: float
    ticket: Ticket | None = None
    retry_after_s: float = 0.0
    remaining_tokens: int | None = None
    remaining_requests: int | None = None
    ttft_s: float = 0.0
    tbt_ms: float = 0.0

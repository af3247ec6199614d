"""Per-deployment state: rate limiter, latency, fault injection, in-flight and counters."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from simulator.config import DeploymentSpec
from simulator.openai.bucket import LeakyBucket, charge
from simulator.openai.latency import ttft_s
from simulator.openai.standard import StandardLimiter

UNLABELLED = "unlabelled"
PATCHABLE = (
    "ptus",
    "tpm",
    "tbt_ms",
    "ttft_ms",
    "error_rate",
    "timeout_rate",
    "spike_rate",
    "spike_ms",
)
RATES = ("error_rate", "timeout_rate", "spike_rate")


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
    by_priority: dict[str, dict[str, int]] = field(default_factory=dict)

    def bump(self, priority: str, key: str, amount: int = 1) -> None:
        """Add to the per-priority counter `key`."""
        slot = self.by_priority.setdefault(
            priority, {"requests": 0, "throttled": 0, "completion_tokens": 0}
        )
        slot[key] += amount


@dataclass(slots=True)
class Ticket:
    """An admitted call, handed back at completion to reconcile its cost."""

    priority: str
    prompt_tokens: int
    admitted_output_tokens: int


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


class Deployment:
    """One simulated deployment; every method takes the current time."""

    def __init__(
        self,
        spec: DeploymentSpec,
        *,
        window_s: float,
        tbt_ms: float,
        ttft_ms: float,
        rng: random.Random,
        now: float = 0.0,
    ) -> None:
        self.spec = spec
        self.window_s = window_s
        self.tbt_ms = tbt_ms
        self.ttft_ms = ttft_ms
        self.faults = Faults()
        self.counters = Counters()
        self._rng = rng
        self.bucket: LeakyBucket | None = None
        self.limiter: StandardLimiter | None = None
        if spec.kind == "provisioned":
            self.bucket = LeakyBucket(spec.capacity_tpm, window_s, now)
        else:
            self.limiter = StandardLimiter(spec.tpm)
        self.in_flight: dict[str, int] = {}
        self.peak_in_flight: dict[str, int] = {}

    @property
    def name(self) -> str:
        """Deployment name."""
        return self.spec.name

    @property
    def capacity_tpm(self) -> float:
        """Current capacity in input-token equivalents (or TPM quota) per minute."""
        if self.bucket is not None:
            return self.bucket.capacity_tpm
        assert self.limiter is not None
        return self.limiter.tpm

    def utilization(self, now: float) -> float:
        """Bucket level (provisioned) or share of this minute's quota (standard)."""
        if self.bucket is not None:
            return self.bucket.utilization(now)
        assert self.limiter is not None
        return self.limiter.utilization(now)

    def admit(
        self,
        now: float,
        *,
        prompt_tokens: int,
        output_tokens: int,
        priority: str = UNLABELLED,
        cached_tokens: int = 0,
    ) -> Decision:
        """Throttle check, then fault draw; an admitted call must be completed later."""
        self.counters.requests += 1
        self.counters.bump(priority, "requests")
        remaining: tuple[int | None, int | None] = (None, None)
        if self.bucket is not None:
            cost = charge(prompt_tokens, cached_tokens, output_tokens, self.spec.output_weight)
            admission = self.bucket.try_admit(now, cost)
            admitted, wait = admission.admitted, admission.retry_after_s
        else:
            assert self.limiter is not None
            std = self.limiter.try_admit(now, prompt_tokens + output_tokens)
            admitted, wait = std.admitted, std.retry_after_s
            remaining = (std.remaining_tokens, std.remaining_requests)
        if not admitted:
            self.counters.throttled += 1
            self.counters.bump(priority, "throttled")
            return Decision(429, self.utilization(now), None, wait, *remaining)
        ticket = Ticket(priority, prompt_tokens - cached_tokens, output_tokens)
        status = self._draw_fault()
        if status != 200:
            self.counters.errors += 1
            self._refund(now, ticket)
            first = ttft_s(self.ttft_ms, prompt_tokens)
            return Decision(status, self.utilization(now), None, 0.0, *remaining, ttft_s=first)
        spike = self.faults.spike_ms if self._rng.random() < self.faults.spike_rate else 0.0
        self.in_flight[priority] = self.in_flight.get(priority, 0) + 1
        self.peak_in_flight[priority] = max(
            self.peak_in_flight.get(priority, 0), self.in_flight[priority]
        )
        first = ttft_s(self.ttft_ms, prompt_tokens, spike)
        return Decision(
            200, self.utilization(now), ticket, 0.0, *remaining, ttft_s=first, tbt_ms=self.tbt_ms
        )

    def _draw_fault(self) -> int:
        if self.faults.error_rate and self._rng.random() < self.faults.error_rate:
            return 500
        if self.faults.timeout_rate and self._rng.random() < self.faults.timeout_rate:
            return 408
        return 200

    def _refund(self, now: float, ticket: Ticket) -> None:
        if self.bucket is not None:
            cost = ticket.prompt_tokens + ticket.admitted_output_tokens * self.spec.output_weight
            self.bucket.reconcile(now, -cost)

    def complete(
        self, now: float, ticket: Ticket, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Reconcile an admitted call with its actual output and count its tokens."""
        if self.bucket is not None:
            delta = (completion_tokens - ticket.admitted_output_tokens) * self.spec.output_weight
            self.bucket.reconcile(now, delta)
        left = self.in_flight.get(ticket.priority, 0) - 1
        self.in_flight[ticket.priority] = max(0, left)
        self.counters.prompt_tokens += prompt_tokens
        self.counters.completion_tokens += completion_tokens
        self.counters.bump(ticket.priority, "completion_tokens", completion_tokens)

    def patch(self, now: float, changes: dict[str, Any]) -> None:
        """Apply a validated `PATCH /sim/deployments/{name}` body."""
        unknown = sorted(set(changes) - set(PATCHABLE))
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(unknown)}")
        values: dict[str, float] = {}
        for key, value in changes.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{key} must be a non-negative number")
            if key in RATES and value > 1:
                raise ValueError(f"{key} must be between 0 and 1")
            values[key] = float(value)
        if "ptus" in values and self.bucket is None:
            raise ValueError("ptus applies to provisioned deployments only; use tpm")
        if "tpm" in values and self.limiter is None:
            raise ValueError("tpm applies to standard deployments only; use ptus")
        if values.get("ptus", 1.0) <= 0 or values.get("tpm", 1.0) <= 0:
            raise ValueError("capacity must be positive")
        self._apply(now, values)

    def _apply(self, now: float, values: dict[str, float]) -> None:
        if "ptus" in values and self.bucket is not None:
            self.bucket.set_capacity(now, values["ptus"] * self.spec.input_tpm_per_ptu)
        if "tpm" in values and self.limiter is not None:
            self.limiter.tpm = values["tpm"]
        self.tbt_ms = values.get("tbt_ms", self.tbt_ms)
        self.ttft_ms = values.get("ttft_ms", self.ttft_ms)
        for key in ("error_rate", "timeout_rate", "spike_rate", "spike_ms"):
            if key in values:
                setattr(self.faults, key, values[key])

    def reset(self, now: float) -> None:
        """Empty the bucket or windows, in-flight bookkeeping, peaks and counters."""
        if self.bucket is not None:
            self.bucket.reset(now)
        if self.limiter is not None:
            self.limiter.reset()
        self.in_flight.clear()
        self.peak_in_flight.clear()
        self.counters = Counters()

    def reset_peaks(self) -> None:
        """Start peak tracking again from the current in-flight counts."""
        self.peak_in_flight = dict(self.in_flight)

    def state(self, now: float) -> dict[str, Any]:
        """The `/sim/state` entry of this deployment."""
        c = self.counters
        return {
            "kind": self.spec.kind,
            "model": self.spec.model,
            "capacity_tpm": self.capacity_tpm,
            "window_s": self.window_s,
            "utilization": self.utilization(now),
            "in_flight": sum(self.in_flight.values()),
            "in_flight_by_priority": dict(self.in_flight),
            "peak_in_flight_by_priority": dict(self.peak_in_flight),
            "requests": c.requests,
            "throttled": c.throttled,
            "errors": c.errors,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "by_priority": {k: dict(v) for k, v in c.by_priority.items()},
            "tbt_ms": self.tbt_ms,
            "ttft_ms": self.ttft_ms,
            "faults": {
                k: getattr(self.faults, k)
                for k in ("error_rate", "timeout_rate", "spike_rate", "spike_ms")
            },
        }

    def __repr__(self) -> str:
        return (
            f"<Deployment name={self.name} kind={self.spec.kind}"
            f" in_flight={sum(self.in_flight.values())} requests={self.counters.requests}>"
        )

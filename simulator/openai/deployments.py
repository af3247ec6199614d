"""Per-deployment state: rate limiter, latency, fault injection, in-flight and counters."""

from __future__ import annotations

import random
from typing import Any

from simulator.config import DeploymentSpec
from simulator.openai.background import (
    BackgroundCall,
    BackgroundSchedule,
    Profile,
    call_shape,
    parse_profile,
)
from simulator.openai.bucket import charge
from simulator.openai.counters import (
    UNLABELLED,
    BackgroundCounters,
    Counters,
    Decision,
    Faults,
    Ticket,
)
from simulator.openai.header import DEFAULT_LAG_S, DEFAULT_SMOOTHING_S, HeaderReporter
from simulator.openai.header import validate as validate_header
from simulator.openai.latency import ttft_s
from simulator.openai.meter import Meter, make_meter, switch
from simulator.openai.patch import CHOICES, PATCHABLE, PROVISIONED_ONLY, Changes, parse_changes
from simulator.openai.standard import StandardLimiter
from simulator.openai.state import state_of

__all__ = [
    "CHOICES",
    "PATCHABLE",
    "PROVISIONED_ONLY",
    "UNLABELLED",
    "Decision",
    "Deployment",
    "Ticket",
]


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
        utilisation_model: str = "bucket",
        utilisation_header: str = "exact",
        background_share: float | Profile | str = 0.0,
        noise_rng: random.Random | None = None,
        header_lag_s: float = DEFAULT_LAG_S,
        header_smoothing_s: float = DEFAULT_SMOOTHING_S,
    ) -> None:
        self.spec = spec
        self.window_s = window_s
        self.tbt_ms = tbt_ms
        self.ttft_ms = ttft_ms
        self.faults = Faults()
        self.counters = Counters()
        self.background_counters = BackgroundCounters()
        self._rng = rng
        self.meter: Meter | None = None
        self.limiter: StandardLimiter | None = None
        self.utilisation_model = utilisation_model
        self.header = HeaderReporter(
            utilisation_header,
            lag_s=header_lag_s,
            smoothing_s=header_smoothing_s,
            rng=noise_rng or random.Random(0),
        )
        self.background = BackgroundSchedule(0.0, now)
        self.background_capacity_tpm = spec.capacity_tpm
        """The capacity the background share is of: the live one when the share was set."""
        if spec.kind == "provisioned":
            self.meter = make_meter(utilisation_model, spec.capacity_tpm, window_s, now)
            if isinstance(background_share, str):
                background_share = parse_profile(background_share)
            if isinstance(background_share, Profile):
                self.background.set_profile(now, background_share)
            else:
                self.background.set_share(now, background_share)
        else:
            self.limiter = StandardLimiter(spec.tpm)
        self.spillover: str | None = spec.spillover
        """The standard deployment this one spills to (deployment-level native spillover)."""
        self.in_flight: dict[str, int] = {}
        self.peak_in_flight: dict[str, int] = {}

    @property
    def name(self) -> str:
        """Deployment name."""
        return self.spec.name

    @property
    def capacity_tpm(self) -> float:
        """Current capacity in input-token equivalents (or TPM quota) per minute."""
        if self.meter is not None:
            return self.meter.capacity_tpm
        assert self.limiter is not None
        return self.limiter.tpm

    def utilization(self, now: float) -> float:
        """The true level (provisioned, under its model) or share of this minute's quota."""
        if self.meter is not None:
            return self.meter.utilization(now)
        assert self.limiter is not None
        return self.limiter.utilization(now)

    @property
    def utilisation_header(self) -> str:
        """How the utilisation header is reported (`simulator.openai.header`)."""
        return self.header.mode

    def reported_utilization(self, now: float, exact: float) -> float | None:
        """What the utilisation header says now (None: no header), `exact` being the truth."""
        self.header.observe(now, self.utilization(now))
        return self.header.report(now, exact)

    def tick(self, now: float) -> list[tuple[int, BackgroundCall]]:
        """Sample the truth for the header history and send the background calls now due.

        Returns each background call with its status (200 or 429), for Azure Monitor.
        """
        if self.meter is None:
            return []
        self.header.observe(now, self.meter.utilization(now))
        due = self.background.due(now)
        if not due:
            return []
        # a capacity cut after the share was set does not make the other app send less
        share = self.background.share_at(now)
        call = call_shape(share, self.background_capacity_tpm, self.spec.output_weight)
        sent: list[tuple[int, BackgroundCall]] = []
        bg = self.background_counters
        for _ in range(due):
            bg.requests += 1
            if self.meter.try_admit(now, call.charge).admitted:
                bg.prompt_tokens += call.prompt_tokens
                bg.completion_tokens += call.completion_tokens
                sent.append((200, call))
            else:
                bg.throttled += 1
                sent.append((429, call))
        return sent

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
        if self.meter is not None:
            cost = charge(prompt_tokens, cached_tokens, output_tokens, self.spec.output_weight)
            admission = self.meter.try_admit(now, cost)
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
        ticket = Ticket(priority, prompt_tokens - cached_tokens, output_tokens, now)
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
        if self.meter is not None:
            cost = ticket.prompt_tokens + ticket.admitted_output_tokens * self.spec.output_weight
            self.meter.reconcile(now, -cost, ticket.admitted_at)

    def spilled(self, priority: str, status: int) -> None:
        """A call refused with `status` was served by the spillover target instead.

        It is counted as spilled rather than as a 429 or an error: `throttled` and
        `errors` count the refusals callers saw.
        """
        c = self.counters
        if status == 429:
            c.throttled -= 1
            c.bump(priority, "throttled", -1)
        else:
            c.errors -= 1
        c.spilled += 1
        c.bump(priority, "spilled")

    def spillover_failed(self) -> None:
        """A refused call's spillover target failed too; the refusal itself was answered."""
        self.counters.spillover_errors += 1

    def served_spillover(self) -> None:
        """This (standard) deployment served a call spilled from a provisioned one."""
        self.counters.spillover_served += 1

    def complete(
        self, now: float, ticket: Ticket, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Reconcile an admitted call with its actual output and count its tokens."""
        if self.meter is not None:
            delta = (completion_tokens - ticket.admitted_output_tokens) * self.spec.output_weight
            self.meter.reconcile(now, delta, ticket.admitted_at)
        left = self.in_flight.get(ticket.priority, 0) - 1
        self.in_flight[ticket.priority] = max(0, left)
        self.counters.prompt_tokens += prompt_tokens
        self.counters.completion_tokens += completion_tokens
        self.counters.bump(ticket.priority, "completion_tokens", completion_tokens)

    def patch(self, now: float, changes: dict[str, Any]) -> None:
        """Apply a `PATCH /sim/deployments/{name}` body, all of it or (ValueError) none."""
        parsed = parse_changes(changes, provisioned=self.meter is not None)
        numbers, names = parsed.numbers, parsed.names
        validate_header(
            names.get("utilisation_header", self.header.mode),
            numbers.get("header_lag_s", self.header.lag_s),
            numbers.get("header_smoothing_s", self.header.smoothing_s),
        )
        self._apply(now, parsed)

    def _apply(self, now: float, parsed: Changes) -> None:
        numbers, names = parsed.numbers, parsed.names
        if self.meter is not None:
            if "ptus" in numbers:
                self.meter.set_capacity(now, numbers["ptus"] * self.spec.input_tpm_per_ptu)
            if "window_s" in numbers:  # the level is kept; the 100 % mark moves
                self.window_s = self.meter.window_s = numbers["window_s"]
            if "background_share" in numbers:
                self.background.set_share(now, numbers["background_share"])
            if parsed.profile is not None:
                self.background.set_profile(now, parsed.profile)
            if "background_share" in numbers or parsed.profile is not None:
                self.background_capacity_tpm = self.meter.capacity_tpm  # after any new ptus
            if "utilisation_model" in names:
                self.utilisation_model = names["utilisation_model"]
                self.meter = switch(self.meter, self.utilisation_model, now)
            self.header.configure(
                names.get("utilisation_header"),
                numbers.get("header_lag_s"),
                numbers.get("header_smoothing_s"),
            )
        if "tpm" in numbers and self.limiter is not None:
            self.limiter.tpm = numbers["tpm"]
        self.tbt_ms = numbers.get("tbt_ms", self.tbt_ms)
        self.ttft_ms = numbers.get("ttft_ms", self.ttft_ms)
        for key in ("error_rate", "timeout_rate", "spike_rate", "spike_ms"):
            if key in numbers:
                setattr(self.faults, key, numbers[key])
        if parsed.sets_spillover:
            self.spillover = parsed.spillover

    def reset(self, now: float) -> None:
        """Empty the bucket or windows, in-flight bookkeeping, peaks and counters."""
        if self.meter is not None:
            capacity = self.meter.capacity_tpm
            self.meter = make_meter(self.utilisation_model, capacity, self.window_s, now)
        if self.limiter is not None:
            self.limiter.reset()
        self.in_flight.clear()
        self.peak_in_flight.clear()
        self.counters = Counters()
        self.background_counters = BackgroundCounters()
        self.header.forget()

    def reset_peaks(self) -> None:
        """Start peak tracking again from the current in-flight counts."""
        self.peak_in_flight = dict(self.in_flight)

    def state(self, now: float) -> dict[str, Any]:
        """The `/sim/state` entry of this deployment."""
        return state_of(self, now)

    def __repr__(self) -> str:
        return (
            f"<Deployment name={self.name} kind={self.spec.kind}"
            f" in_flight={sum(self.in_flight.values())} requests={self.counters.requests}>"
        )

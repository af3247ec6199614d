"""Seeded workloads: interactive high-priority traffic with a burst, a low-priority batch.

Sizes are expressed as shares of the deployment's capacity, so the same workload
description fits any simulated deployment. Capacity arithmetic follows the
simulator's leaky bucket (AZURE_FACTS.md §1): a call costs
prompt + completion x output_weight input-token equivalents, and the bucket
drains `capacity_tpm / 60` of them per second. Completion lengths are drawn by
the simulator between 20 % and 100 % of `max_tokens` (mean 60 %).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from simulator.openai.latency import total_s

MEAN_COMPLETION_SHARE = 0.6
"""Mean completion length as a share of max_tokens (the simulator draws 20..100 %)."""
_WORDS = (
    "provisioned throughput capacity deployment tokens latency window utilisation "
    "batch interactive priority queue worker summary report customer invoice "
    "contract policy region model request response throttle bucket drain"
).split()


@dataclass(frozen=True, slots=True)
class CallShape:
    """Size of one kind of chat call."""

    prompt_tokens: int
    max_tokens: int

    def mean_cost(self, weight: float, charged_share: float = MEAN_COMPLETION_SHARE) -> float:
        """Mean input-token equivalents one call consumes once reconciled.

        `charged_share` is the share of `max_tokens` a call ends up charged for: the mean
        completion after the PTU bucket's refund, or 1 for a limiter that keeps the
        admission charge (a standard deployment's minute window).
        """
        return self.prompt_tokens + charged_share * self.max_tokens * weight

    def admission_cost(self, weight: float) -> float:
        """What admission charges before the call completes (max_tokens x weight)."""
        return self.prompt_tokens + self.max_tokens * weight


@dataclass(frozen=True, slots=True)
class Capacity:
    """The deployment as the workload sees it."""

    capacity_tpm: float
    output_weight: float
    window_s: float
    charged_share: float = MEAN_COMPLETION_SHARE
    """Share of `max_tokens` a call is finally charged for (see `CallShape.mean_cost`)."""

    @property
    def per_s(self) -> float:
        """Input-token equivalents drained per second."""
        return self.capacity_tpm / 60.0

    def rate_for_share(self, share: float, shape: CallShape) -> float:
        """Calls per second of `shape` that use `share` of the capacity."""
        return share * self.per_s / shape.mean_cost(self.output_weight, self.charged_share)


@dataclass(frozen=True, slots=True)
class MixedWorkload:
    """High-priority traffic at a base share with a burst, plus one low-priority batch."""

    duration_s: float = 90.0
    hp_share: float = 0.35
    burst_share: float = 0.70
    burst_start: float = 0.45
    """Burst start as a fraction of duration."""
    burst_len: float = 0.2
    """Burst length as a fraction of duration."""
    hp: CallShape = CallShape(prompt_tokens=300, max_tokens=200)
    lp: CallShape = CallShape(prompt_tokens=2500, max_tokens=150)
    lp_requests: int = 150
    batch_at_s: float = 3.0

    @property
    def burst_window(self) -> tuple[float, float]:
        """(start, end) of the burst in seconds from the start."""
        start = self.duration_s * self.burst_start
        return start, start + self.duration_s * self.burst_len

    def hp_share_at(self, t: float) -> float:
        """Share of capacity the interactive traffic uses at offset `t`."""
        start, end = self.burst_window
        return self.burst_share if start <= t < end else self.hp_share


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """One call of a workload: when (offset from start) and what to send."""

    at_s: float
    custom_id: str
    body: dict[str, Any]


def filler_text(rng: random.Random, tokens: int, tag: str) -> str:
    """About `tokens` tokens of text (4 characters each), unique through `tag`."""
    head = f"[{tag}] "
    words: list[str] = [head]
    length = len(head)
    target = max(4, tokens * 4)
    while length < target:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:target]


def chat_body(
    rng: random.Random, shape: CallShape, tag: str, model: str, jitter: float = 0.2
) -> dict[str, Any]:
    """A chat completions body of about `shape.prompt_tokens` prompt tokens."""
    tokens = max(8, round(shape.prompt_tokens * rng.uniform(1 - jitter, 1 + jitter)))
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": filler_text(rng, tokens, tag)},
        ],
        "max_tokens": shape.max_tokens,
    }


def arrivals(rng: random.Random, phases: Sequence[tuple[float, float, float]]) -> list[float]:
    """Arrival offsets: for each (start, end, rate) phase, round(rate x length) calls at
    uniformly random times (a Poisson process conditioned on its count, so every phase
    offers exactly its nominal load while calls still cluster like real traffic)."""
    times: list[float] = []
    for start, end, rate in phases:
        count = round(rate * max(0.0, end - start))
        times += [rng.uniform(start, end) for _ in range(count)]
    return sorted(times)


def interactive_calls(
    workload: MixedWorkload, capacity: Capacity, model: str, seed: int
) -> list[PlannedCall]:
    """The high-priority calls: hp_share of the capacity, burst_share during the burst."""
    rng = random.Random(f"hp:{seed}")
    start, end = workload.burst_window
    base = capacity.rate_for_share(workload.hp_share, workload.hp)
    burst = capacity.rate_for_share(workload.burst_share, workload.hp)
    phases = [(0.0, start, base), (start, end, burst), (end, workload.duration_s, base)]
    return [
        PlannedCall(t, f"hp-{i}", chat_body(rng, workload.hp, f"hp-{seed}-{i}", model))
        for i, t in enumerate(arrivals(rng, phases))
    ]


def batch_calls(workload: MixedWorkload, model: str, seed: int) -> list[PlannedCall]:
    """The low-priority batch, all due at `batch_at_s`."""
    rng = random.Random(f"lp:{seed}")
    return [
        PlannedCall(
            workload.batch_at_s, f"lp-{i}", chat_body(rng, workload.lp, f"lp-{seed}-{i}", model)
        )
        for i in range(workload.lp_requests)
    ]


def static_concurrency(
    workload: MixedWorkload,
    capacity: Capacity,
    upper: float,
    ttft_ms: float = 50.0,
    tbt_ms: float = 10.0,
) -> int:
    """The fixed concurrency a careful team would pick: safe at the interactive peak.

    Each low-priority slot uses about (mean cost / mean latency) of the capacity; the
    slots that fit below `upper` next to the burst are what a static setting can use.
    """
    peak = max(workload.hp_share, workload.burst_share)
    spare = max(0.0, upper - peak) * capacity.per_s
    return max(1, math.floor(spare / slot_usage(workload.lp, capacity, ttft_ms, tbt_ms)))


def slot_usage(
    shape: CallShape, capacity: Capacity, ttft_ms: float = 50.0, tbt_ms: float = 10.0
) -> float:
    """Input-token equivalents per second one back-to-back low-priority slot consumes."""
    completion = round(MEAN_COMPLETION_SHARE * shape.max_tokens)
    latency = total_s(ttft_ms, tbt_ms, shape.prompt_tokens, completion)
    return shape.mean_cost(capacity.output_weight) / max(latency, 1e-3)

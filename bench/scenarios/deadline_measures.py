"""`ptu bench deadline`'s pure parts: the day pattern, the batch's size, the rows, the verdicts.

The interactive "day" is the deadline's span in three parts (a quiet morning, a busy
midday, a medium afternoon), each a share of the PTU's capacity taken by high-priority
calls. The batch is sized to need `factor` times the idle capacity the PTU has before the
deadline: the capacity up to the throttle's upper threshold less the interactive share,
in the tokens a line is charged (prompt plus expected output times the output weight).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.harness.workload import PlannedCall

POLICIES = ("ptu-only", "payg-only", "batch-only", "planned")
PROMPT = [{"role": "user", "content": "Classify this support ticket and draft a short reply."}]
PROMPT_TOKENS = 20
"""About what the simulator counts for PROMPT."""
MEAN_OUTPUT_SHARE = 0.6
"""The simulator answers between 20 % and 100 % of max_tokens, evenly: 60 % on average."""


@dataclass(frozen=True, slots=True)
class DeadlineConfig:
    """Sizes and prices of a run."""

    deadline_s: float = 240.0
    ptus: float = 2.0
    input_tpm_per_ptu: float = 37_000.0
    output_weight: float = 3.0
    upper: float = 0.9
    day: tuple[float, float, float] = (0.2, 0.6, 0.4)
    """Interactive share of capacity in each third of the span."""
    factor: float = 2.0
    line_max_tokens: int = 200
    hp_max_tokens: int = 200
    flex_contention: float = 0.1
    batch_turnaround_s: float = 120.0
    payg_in: float = 0.15
    payg_out: float = 0.60
    discount: float = 0.5
    """Flex and Batch deployments cost this share of pay-as-you-go."""
    grace_s: float = 60.0
    fits_factor: float = 0.3
    """The second scenario: a batch of this share of the idle capacity."""
    max_concurrency: int = 10

    @property
    def capacity_tps(self) -> float:
        """Input-token equivalents per second the PTU drains."""
        return self.ptus * self.input_tpm_per_ptu / 60.0

    def charge(self, max_tokens: int) -> float:
        """The expected charge of one call (prompt plus expected output times the weight)."""
        return PROMPT_TOKENS + MEAN_OUTPUT_SHARE * max_tokens * self.output_weight

    def share_at(self, t: float) -> float:
        """The interactive share of capacity `t` seconds into the span."""
        part = min(2, max(0, int(3 * t / self.deadline_s)))
        return self.day[part]

    def idle_tokens(self) -> float:
        """Tokens the PTU has free for batches before the deadline (below the upper threshold)."""
        third = self.deadline_s / 3.0
        return sum(max(0.0, self.upper - s) * self.capacity_tps * third for s in self.day)

    def lines(self, factor: float) -> int:
        """Lines of a batch that needs `factor` times the idle capacity, a line counted at
        its expected charge once reconciled (prompt plus the expected output times the
        weight)."""
        return max(1, round(factor * self.idle_tokens() / self.charge(self.line_max_tokens)))


QUICK = DeadlineConfig(deadline_s=75.0, batch_turnaround_s=40.0, grace_s=40.0)


def interactive_calls(cfg: DeadlineConfig, seed: int) -> list[PlannedCall]:
    """High-priority calls over the span, Poisson arrivals at each third's share."""
    rng = random.Random(seed)
    per_call = cfg.charge(cfg.hp_max_tokens)
    calls: list[PlannedCall] = []
    t = 0.0
    while True:
        rate = cfg.share_at(t) * cfg.capacity_tps / per_call
        t += rng.expovariate(rate) if rate > 0 else cfg.deadline_s
        if t >= cfg.deadline_s:
            return calls
        body = {"messages": PROMPT, "max_tokens": cfg.hp_max_tokens}
        calls.append(PlannedCall(t, f"hp-{len(calls)}", body))


def batch_line(i: int, model: str, max_tokens: int) -> dict[str, Any]:
    """One line of the batch file."""
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens}
    return {"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def forecast_error(predicted: float | None, actual: float) -> float | None:
    """(predicted - actual) / actual; None without a forecast or without actual tokens."""
    if predicted is None or actual <= 0:
        return None
    return round((predicted - actual) / actual, 3)


def verdicts(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The issue's targets, measured: one line each."""
    by = {r["policy"]: r for r in rows}
    met = [r for r in rows if r["met_deadline"]]
    planned = by.get("planned")
    out: list[str] = []
    if planned is not None:
        out.append(
            f"planned meets the deadline where any policy does: "
            f"{'yes' if planned['met_deadline'] or not met else 'NO'}"
        )
        if met and planned["met_deadline"]:
            cheapest = min(r["cost"] for r in met)
            ratio = (
                planned["cost"] / cheapest
                if cheapest > 0
                else (1.0 if not planned["cost"] else float("inf"))
            )
            out.append(
                f"planned cost {planned['cost']:.6f} = {ratio:.2f} x the cheapest on time "
                f"({cheapest:.6f}; target <= 1.1): {'met' if ratio <= 1.1 else 'NOT met'}"
            )
        out.append(f"planned interactive 429s: {planned['hp_429']} (target 0)")
    if "ptu-only" in by:
        out.append(
            "ptu-only misses the deadline: "
            f"{'yes' if not by['ptu-only']['met_deadline'] else 'NO (it met it)'}"
        )
    return out

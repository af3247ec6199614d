"""Pure summaries of one policy run: latency percentiles, utilisation, batch throughput."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.harness.sampler import Sample
from bench.harness.traffic import HpRecord, LpRecord

RESULT_KEYS = (
    "policy",
    "hp_429_rate",
    "hp_p50_ms",
    "hp_p95_ms",
    "hp_p99_ms",
    "hp_p99_ratio",
    "util_mean",
    "util_p95",
    "time_above_upper_s",
    "lp_makespan_s",
    "lp_tokens_per_s",
    "lp_429",
)
"""The keys every results.json row has, in table order."""


@dataclass
class PolicyRun:
    """Everything recorded while one policy ran."""

    policy: str
    description: str
    hp: list[HpRecord] = field(default_factory=list)
    lp: list[LpRecord] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    batch_start: float | None = None
    hp_end: float = 0.0
    run_end: float = 0.0
    lp_429: int = 0
    hp_429_sim: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    view_source: str | None = None
    """What the worker steered by when not its configured source (`oracle`)."""


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def batch_end(run: PolicyRun) -> float | None:
    """When the last low-priority request completed; None when some never did."""
    if not run.lp or any(r.completed_at is None for r in run.lp):
        return None
    return max(r.completed_at for r in run.lp if r.completed_at is not None)


def pending_window(run: PolicyRun) -> tuple[float, float]:
    """(start, end) of the time the batch was pending while interactive traffic ran.

    Without a batch (the baseline) it is the whole interactive period.
    """
    if run.batch_start is None or not run.lp:
        return 0.0, run.hp_end
    end = batch_end(run)
    stop = run.run_end if end is None else end
    return run.batch_start, min(stop, run.hp_end)


def interactive_in_window(run: PolicyRun) -> tuple[int, int]:
    """(calls, 429s) of the interactive calls started while the batch was pending.

    The window is `pending_window`'s: the calls that met the batch, where a throttle that
    lets the batch crowd the deployment shows; calls before and after only dilute the rate.
    """
    start, end = pending_window(run)
    inside = [r for r in run.hp if start <= r.at <= end]
    return len(inside), sum(1 for r in inside if r.status == 429)


def utilisation_stats(
    samples: Sequence[Sample], start: float, end: float, upper: float
) -> tuple[float | None, float | None, float, float | None]:
    """(mean, p95, seconds at or above `upper`, max) of samples within [start, end]."""
    inside = [s for s in samples if start <= s.t <= end]
    if not inside:
        return None, None, 0.0, None
    values = [s.utilization for s in inside]
    above = 0.0
    for prev, cur in itertools.pairwise(inside):
        if prev.utilization >= upper:
            above += cur.t - prev.t
    return sum(values) / len(values), percentile(values, 95), above, max(values)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 1)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def summarise(run: PolicyRun, upper: float, baseline_p99_ms: float | None) -> dict[str, Any]:
    """One results.json row (RESULT_KEYS first, then extra detail)."""
    ok = [r.latency_s for r in run.hp if r.status == 200]
    throttled = sum(1 for r in run.hp if r.status == 429)
    p99 = _ms(percentile(ok, 99))
    start, end = pending_window(run)
    mean, p95, above, peak = utilisation_stats(run.samples, start, end, upper)
    finished = batch_end(run)
    makespan = None
    tokens_per_s = None
    if run.batch_start is not None and run.lp:
        done = [r for r in run.lp if r.completed_at is not None]
        last = finished if finished is not None else run.run_end
        elapsed = max(1e-9, last - run.batch_start)
        makespan = None if finished is None else round(elapsed, 1)
        tokens_per_s = round(sum(r.total_tokens for r in done) / elapsed, 1)
    row: dict[str, Any] = {
        "policy": run.policy,
        "hp_429_rate": round(throttled / len(run.hp), 4) if run.hp else None,
        "hp_p50_ms": _ms(percentile(ok, 50)),
        "hp_p95_ms": _ms(percentile(ok, 95)),
        "hp_p99_ms": p99,
        "hp_p99_ratio": (
            round(p99 / baseline_p99_ms, 3) if p99 is not None and baseline_p99_ms else None
        ),
        "util_mean": _round(mean),
        "util_p95": _round(p95),
        "time_above_upper_s": round(above, 1),
        "lp_makespan_s": makespan,
        "lp_tokens_per_s": tokens_per_s,
        "lp_429": run.lp_429 if run.lp else 0,
    }
    row.update(
        description=run.description,
        hp_calls=len(run.hp),
        hp_429=throttled,
        hp_errors=sum(1 for r in run.hp if r.status not in (200, 429)),
        lp_requests=len(run.lp),
        lp_completed=sum(1 for r in run.lp if r.status == "completed"),
        lp_failed=sum(1 for r in run.lp if r.completed_at is not None and r.status != "completed"),
        lp_unfinished=sum(1 for r in run.lp if r.completed_at is None),
        pending_window_s=[round(start, 1), round(end, 1)],
        util_max=_round(peak),
        low_peak_concurrency=max((s.low_peak for s in run.samples), default=0),
        settings=run.settings,
    )
    return row


def estimate_error(samples: Sequence[Sample], after_s: float) -> tuple[float | None, float]:
    """(mean absolute error in points, share of samples with no reading) after `after_s`.

    The error compares what the worker's source read with the simulator's true level at
    the same moment, both as fractions of 100 %; samples without a reading (stale: the
    worker pauses) count in the second figure, not in the error.
    """
    inside = [s for s in samples if s.t >= after_s]
    read = [s for s in inside if s.view is not None]
    if not inside:
        return None, 0.0
    missing = (len(inside) - len(read)) / len(inside)
    if not read:
        return None, missing
    mae = sum(abs((s.view or 0.0) - s.utilization) for s in read) / len(read) * 100.0
    return mae, missing


def background_counts(samples: Sequence[Sample]) -> tuple[int, int]:
    """(requests, 429s) of the simulator's bypassing traffic between first and last sample.

    The background stream runs from the simulator's reset on, while the orchestrator's
    processes start; only what it met during the run counts.
    """
    if not samples:
        return 0, 0
    first, last = samples[0], samples[-1]
    return last.bg_requests - first.bg_requests, last.bg_throttled - first.bg_throttled

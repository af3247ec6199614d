"""`ptu bench robustness`'s rows: what one run of a reality under one arm measured.

The mixed benchmark's summary plus what robustness adds: the bypassing application's 429s,
utilisation over the upper threshold and over the oracle arm's, the estimate's error, and
(on request) the 429s of calls made late in each run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.report.metrics import PolicyRun, background_counts, estimate_error, summarise
from bench.scenarios.realities import Reality

ERROR_AFTER_S = 10.0
TABLE_KEYS = (
    "reality",
    "calibration",
    "hp_429",
    "hp_429_rate",
    "bypass_429",
    "bypass_429_rate",
    "util_mean",
    "util_x_upper",
    "util_x_oracle",
    "time_above_upper_s",
    "lp_makespan_s",
    "makespan_x_oracle",
    "lp_completed",
    "lp_failed",
    "est_mae_pts",
)


def reality_row(
    reality: Reality, mode: str, run: PolicyRun, upper: float, late_after_s: float | None = None
) -> dict[str, Any]:
    """One results.json row: the mixed summary plus what robustness adds (with
    `late_after_s`, the 429s of calls from that many seconds into the run on)."""
    row = summarise(run, upper, None)
    bg_requests, bg_429 = background_counts(run.samples)
    mae, missing = estimate_error(run.samples, ERROR_AFTER_S)
    util = row["util_mean"]
    done = [r for r in run.lp if r.status == "completed"]
    row.update(
        reality=reality.name,
        reality_description=reality.describe(),
        calibration=mode,
        hp_429=f"{row['hp_429']} / {row['hp_calls']}",
        hp_429_count=row["hp_429"],
        bypass_429=f"{bg_429} / {bg_requests}" if bg_requests else "-",
        bypass_429_count=bg_429,
        bypass_requests=bg_requests,
        bypass_429_rate=round(bg_429 / bg_requests, 4) if bg_requests else None,
        util_x_upper=None if util is None else round(util / upper, 3),
        util_x_oracle=None,
        makespan_x_oracle=None,
        est_mae_pts=None if mae is None else round(mae, 2),
        lp_completion_tokens_mean=_mean([r.completion_tokens for r in done]),
        est_unavailable_share=round(missing, 3),
    )
    if late_after_s is not None:
        late = [r for r in run.hp if r.at >= late_after_s]
        late_429 = sum(1 for r in late if r.status == 429)
        bg_late, bg_late_429 = background_counts([s for s in run.samples if s.t >= late_after_s])
        row.update(
            hp_429_late=f"{late_429} / {len(late)}",
            hp_429_late_count=late_429,
            bypass_429_late=f"{bg_late_429} / {bg_late}" if bg_late else "-",
        )
    return row


def against_oracle(rows: list[dict[str, Any]]) -> None:
    """Fill `util_x_oracle` and `makespan_x_oracle` of each row from its reality's oracle row."""
    oracles = {r["reality"]: r for r in rows if r["calibration"] == "oracle"}
    for row in rows:
        oracle = oracles.get(row["reality"])
        if oracle is None:
            continue
        row["util_x_oracle"] = _ratio(row["util_mean"], oracle["util_mean"])
        row["makespan_x_oracle"] = _ratio(row["lp_makespan_s"], oracle["lp_makespan_s"])


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else round(value / base, 3)

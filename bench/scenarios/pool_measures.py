"""`ptu bench pool`'s pure measures: one policy run of two members to one results row.

A member's utilisation "while the batch is pending" is the mean of the simulator's true
level sampled between the batch's submission and its last result (or the end of the
interactive traffic, whichever comes first), divided by the member's upper threshold.
The makespan is the time from submission to the last result; None while any request of
the batch has none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.harness.sampler import Sample
from bench.harness.traffic import HpRecord, LpRecord


@dataclass
class MemberRun:
    """What one member saw during a policy's run."""

    name: str
    hp: list[HpRecord] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


@dataclass
class PoolRun:
    """Everything one policy's run recorded."""

    policy: str
    description: str
    members: dict[str, MemberRun]
    lp: list[LpRecord] = field(default_factory=list)
    batch_start: float | None = None
    hp_end: float = 0.0
    run_end: float = 0.0


def makespan(lp: Sequence[LpRecord], start: float | None) -> float | None:
    """Seconds from the batch's submission to its last result; None when one is missing."""
    if start is None or not lp or any(r.completed_at is None for r in lp):
        return None
    return max(r.completed_at for r in lp if r.completed_at is not None) - start


def pending(run: PoolRun) -> tuple[float, float]:
    """(start, end) of the time the batch was pending while interactive traffic ran."""
    start = run.batch_start or 0.0
    span = makespan(run.lp, run.batch_start)
    end = run.run_end if span is None else start + span
    return start, min(end, run.hp_end)


def mean_utilisation(samples: Sequence[Sample], window: tuple[float, float]) -> float | None:
    """The mean sampled level inside `window`; None without a sample there."""
    inside = [s.utilization for s in samples if window[0] <= s.t <= window[1]]
    return sum(inside) / len(inside) if inside else None


def hp_429s(records: Sequence[HpRecord]) -> int:
    """Interactive calls the client saw refused with 429."""
    return sum(1 for r in records if r.status == 429)


def row_of(run: PoolRun, uppers: Mapping[str, float], served: Mapping[str, int]) -> dict[str, Any]:
    """One results row: per member 429s, utilisation x upper while pending, batch lines
    served (`served`: low-priority calls the simulator counted); makespan; completion."""
    window = pending(run)
    row: dict[str, Any] = {"policy": run.policy, "description": run.description}
    for name, member in run.members.items():
        util = mean_utilisation(member.samples, window)
        row[f"hp_calls_{name}"] = len(member.hp)
        row[f"hp_429_{name}"] = hp_429s(member.hp)
        row[f"util_{name}"] = None if util is None else round(util, 3)
        row[f"util_x_upper_{name}"] = None if util is None else round(util / uppers[name], 3)
        row[f"lp_served_{name}"] = served.get(name, 0)
    span = makespan(run.lp, run.batch_start)
    row["makespan_s"] = None if span is None else round(span, 1)
    row["lp_completed"] = sum(1 for r in run.lp if r.status == "completed")
    row["lp_total"] = len(run.lp)
    return row


def compare(rows: list[dict[str, Any]], reference: str = "static") -> None:
    """Add `makespan_x_static` to every row (None without both makespans)."""
    ref = next((r["makespan_s"] for r in rows if r["policy"] == reference), None)
    for row in rows:
        span = row["makespan_s"]
        row["makespan_x_static"] = None if not ref or span is None else round(span / ref, 3)


def verdicts(row: Mapping[str, Any], members: Sequence[str]) -> dict[str, bool]:
    """The issue's targets for the pool's row, each met or not."""
    ratio = row.get("makespan_x_static")
    return {
        "0 interactive 429s on every member": all(row[f"hp_429_{m}"] == 0 for m in members),
        "makespan <= 0.6 x static": ratio is not None and ratio <= 0.6,
        "each member's utilisation while pending >= 0.8 x its upper threshold": all(
            (row[f"util_x_upper_{m}"] or 0.0) >= 0.8 for m in members
        ),
    }

"""`ptu bench pool`'s output: results.md and results.json, the plot, the timeseries."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report import tables as report
from bench.scenarios.pool_measures import PoolRun, verdicts

TITLE = "bench pool: a PTU pool beside per-deployment queues"
NOTES = (
    "hp 429 = interactive calls the client got refused with 429, per member",
    "util x upper = a member's mean true utilisation (the simulator's, 10 Hz) while the "
    "batch was pending, divided by its upper threshold",
    "LP served = low-priority calls each member's simulator counted (retries included)",
    "makespan = batch submission to its last result; x static = divided by static's",
)


def keys(members: Sequence[str]) -> tuple[str, ...]:
    """The table's columns."""
    return (
        "policy",
        *(f"hp_429_{m}" for m in members),
        *(f"util_x_upper_{m}" for m in members),
        *(f"lp_served_{m}" for m in members),
        "makespan_s",
        "makespan_x_static",
        "lp_completed",
        "lp_total",
    )


def write_report(
    out: Path,
    rows: list[dict[str, Any]],
    runs: list[PoolRun],
    notes: list[str],
    members: list[str],
    upper: float,
) -> None:
    """results.json, results.md (the pool's targets met or not last), pool.png, the CSVs."""
    pool_row = next((r for r in rows if r["policy"] == "pool"), None)
    if pool_row is not None:
        for target, met in verdicts(pool_row, members).items():
            notes.append(f"target {'met' if met else 'NOT met'}: {target}")
    report.write_results(out, rows, TITLE, notes, keys(members))
    _plot(runs, out / "pool.png", upper)
    for run in runs:
        _timeseries(run, out / f"timeseries_{run.policy}.csv")


def _timeseries(run: PoolRun, path: Path) -> None:
    """Each member's sampled true level and calls in flight, by time."""
    lines = ["member,t,utilisation,low_in_flight,high_in_flight"]
    for name, member in run.members.items():
        lines += [
            f"{name},{s.t:.2f},{s.utilization:.4f},{s.low_in_flight},{s.high_in_flight}"
            for s in member.samples
        ]
    path.write_text("\n".join(lines) + "\n")


def _plot(runs: list[PoolRun], path: Path, upper: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 2.4 * len(runs) + 0.6), squeeze=False)
    for (ax,), run in zip(axes, runs, strict=True):
        for name, member in run.members.items():
            ax.plot([s.t for s in member.samples], [s.utilization for s in member.samples],
                    lw=0.8, label=f"{name} utilisation")  # fmt: skip
        ax.axhline(upper, ls="--", lw=0.8, color="grey", label="upper threshold")
        done = [r.completed_at for r in run.lp if r.completed_at is not None]
        if run.batch_start is not None and done:
            ax.axvspan(run.batch_start, max(done), color="tab:green", alpha=0.08)
        ax.set_ylim(0, 1.2)
        ax.set_title(f"{run.policy}: {run.description}", fontsize=8, loc="left")
    axes[0][0].legend(loc="upper right", fontsize=7)
    axes[-1][0].set_xlabel("seconds (green: batch pending)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

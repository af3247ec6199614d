"""`ptu bench deadline`'s results.md and plot: the four policies side by side, the targets
measured, the forecast's error, and the `fits` scenario."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import tables
from bench.scenarios.deadline_measures import DeadlineConfig, verdicts

COLUMNS = (
    "policy", "met_deadline", "completion_s", "deadline_s", "lines_done", "lines", "cost",
    "hp_429", "hp_calls", "token_share", "forecast_error",
)  # fmt: skip


def write_report(
    out: Path, cfg: DeadlineConfig, rows: list[dict[str, Any]], fits: dict[str, Any]
) -> None:
    """results.md and deadline.png."""
    overflow = {k: v for k, v in fits["tokens"].items() if k != "ptu"}
    lines = [
        "# ptu bench deadline",
        "",
        f"PTU of {cfg.ptus:g} PTU ({cfg.capacity_tps:.0f} tokens/s), deadline {cfg.deadline_s:g} s "
        f"after the batch's creation, interactive share {'/'.join(f'{s:g}' for s in cfg.day)} of "
        f"capacity in each third; batch of {rows[0]['lines'] if rows else 0} lines "
        f"({cfg.factor:g} x the idle capacity below the {cfg.upper:g} threshold, "
        f"{cfg.line_max_tokens} max_tokens each). Prices per 1M tokens: pay-as-you-go "
        f"{cfg.payg_in:g}/{cfg.payg_out:g}, Flex and Batch {cfg.discount:g} x that; the PTU's "
        f"tokens cost nothing more. Flex refuses {cfg.flex_contention:g} of its calls; the Batch "
        f"deployment answers {cfg.batch_turnaround_s:g} s after a batch's creation.",
        "",
        tables.markdown_table(rows, list(COLUMNS)),
        "",
        "## Targets",
        "",
        *(f"- {v}" for v in verdicts(rows)),
        f"- fits scenario ({fits['lines']} lines, planned): overflow tokens "
        f"{sum(overflow.values())} (target 0), met deadline {fits['met_deadline']}",
        "",
        "`forecast_error`: the planner's first measured rate times the time left to the "
        "deadline against the PTU tokens then done (in the planner's unit, prompt plus "
        "max_tokens times the output weight). It is meaningful for `ptu-only`, where the PTU "
        "has lines waiting until the deadline; under `planned` the PTU runs out of lines "
        "earlier (the tail left), so the actual is lower by design.",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plot(out, rows)


def _plot(out: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["policy"] for r in rows]
    targets = sorted({t for r in rows for t in r["token_share"]})
    bottom = [0.0] * len(rows)
    for target in targets:
        shares = [r["token_share"].get(target, 0.0) for r in rows]
        left.bar(names, shares, bottom=bottom, label=target)
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    left.set_ylabel("share of the batch's tokens")
    left.legend()
    left.set_title("where the batch ran")
    costs = [r["cost"] for r in rows]
    colours = ["tab:green" if r["met_deadline"] else "tab:red" for r in rows]
    right.bar(names, costs, color=colours)
    for i, r in enumerate(rows):
        label = f"{r['completion_s']} s" if r["completion_s"] is not None else "-"
        right.annotate(label, (i, costs[i]), ha="center", va="bottom", fontsize=8)
    right.set_ylabel("cost (green: met the deadline)")
    right.set_title("cost and completion time")
    fig.tight_layout()
    fig.savefig(out / "deadline.png", dpi=100)
    plt.close(fig)

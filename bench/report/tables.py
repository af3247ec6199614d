"""Benchmark output: results.json, a Markdown table, and PNG timelines (matplotlib Agg)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Collection, Mapping, Sequence
from math import nan
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench.harness.sampler import Sample
from bench.report.metrics import RESULT_KEYS, PolicyRun, pending_window

HEADERS = {
    "policy": "policy",
    "hp_429_rate": "HP 429 rate",
    "hp_p50_ms": "HP p50 ms",
    "hp_p95_ms": "HP p95 ms",
    "hp_p99_ms": "HP p99 ms",
    "hp_p99_ratio": "p99 / baseline",
    "util_mean": "util mean",
    "util_p95": "util p95",
    "time_above_upper_s": "s above upper",
    "lp_makespan_s": "LP makespan s",
    "lp_tokens_per_s": "LP tokens/s",
    "lp_429": "LP 429s",
    "lp_completed": "LP done",
    "lp_failed": "LP failed",
    "direct_p50_ms": "direct p50 ms",
    "direct_p99_ms": "direct p99 ms",
    "ingress_p50_ms": "via ingress p50 ms",
    "ingress_p99_ms": "via ingress p99 ms",
    "added_p50_ms": "added p50 ms",
    "added_p99_ms": "added p99 ms",
    "ratio_p50": "ratio p50",
    "ratio_p99": "ratio p99",
    "enqueue_per_s": "enqueues/s (1 ingress)",
    "worker_results_per_s": "results/s (1 worker)",
    "tenant_p50_ms": "tenant with limit p50 ms",
    "tenant_p99_ms": "tenant with limit p99 ms",
    "tenant_added_p50_ms": "tenant added p50 ms",
    "tenant_added_p99_ms": "tenant added p99 ms",
    "tenant_vs_plain_added_p50": "tenant / plain added p50",
    "reality": "reality",
    "calibration": "calibration",
    "hp_429": "interactive 429s",
    "bypass_429": "bypass 429s",
    "bypass_429_rate": "bypass 429 rate",
    "hp_429_late": "interactive 429s, late",
    "bypass_429_late": "bypass 429s, late",
    "util_x_upper": "x upper",
    "util_x_oracle": "x oracle util",
    "makespan_x_oracle": "x oracle makespan",
    "est_mae_pts": "estimate MAE pts",
    "window_429": "interactive 429s in batch window",
    "window_429_rate": "429 rate in window",
    "remaining_tokens_at_start": "upstream tokens left at start",
}


TEXT_COLUMNS = ("policy", "reality", "calibration")
"""Columns aligned left; the rest are figures."""


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], keys: Sequence[str] = RESULT_KEYS) -> str:
    """A Markdown table of `rows` with one column per key."""
    head = "| " + " | ".join(HEADERS.get(k, k) for k in keys) + " |"
    rule = "|" + "|".join("---" if k in TEXT_COLUMNS else "---:" for k in keys) + "|"
    body = ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def write_results(
    out: Path,
    rows: Sequence[dict[str, Any]],
    title: str,
    notes: Sequence[str] = (),
    keys: Sequence[str] = RESULT_KEYS,
) -> None:
    """Write results.json (the rows) and results.md (title, table of `keys`, notes)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(list(rows), indent=2) + "\n")
    lines = [f"# {title}", "", markdown_table(rows, keys), ""]
    lines += [f"- {note}" for note in notes]
    (out / "results.md").write_text("\n".join(lines).rstrip() + "\n")


def write_timeseries(run: PolicyRun, path: Path) -> None:
    """The run's samples as CSV: time, true utilisation, worker's view, low in flight, and for
    the calibrated estimate its model, observation, correction, uncertainty, unseen share and
    the header meaning learnt, and the look-ahead the throttle steered by when higher."""
    lines = [
        "t_s,utilization,worker_view,low_in_flight,low_peak,low_throttled,high_throttled,"
        "model,observed,correction,uncertainty,unseen,meaning,ahead"
    ]
    lines += [
        f"{s.t:.2f},{s.utilization:.4f},{_opt(s.view)},"
        f"{s.low_in_flight},{s.low_peak},{s.low_throttled},{s.high_throttled},"
        + ",".join(_opt(v) for v in _calibration(s))
        + f",{_filter(s)},{'' if s.calibration is None else s.calibration.model_kind}"
        + f",{'' if s.calibration is None else _opt(s.calibration.ahead)}"
        for s in run.samples
    ]
    path.write_text("\n".join(lines) + "\n")


def _opt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _calibration(s: Sample) -> tuple[float | None, float | None, float | None]:
    """(model, observed, correction) of a sample; Nones without a calibrated estimate."""
    c = s.calibration
    return (None, None, None) if c is None else (c.model, c.observed, c.correction)


def _filter(s: Sample) -> str:
    """The filter's uncertainty and learnt unseen share (calibrated estimate only)."""
    c = s.calibration
    return "," if c is None else f"{_opt(c.uncertainty)},{_opt(c.unseen)}"


def _series(samples: Sequence[Sample], index: int) -> list[float]:
    return [nan if (v := _calibration(s)[index]) is None else v for s in samples]


def _shade(ax: Axes, burst: tuple[float, float] | None, batch: tuple[float, float] | None) -> None:
    if burst is not None:
        ax.axvspan(*burst, color="tab:orange", alpha=0.12, lw=0)
    if batch is not None:
        ax.axvspan(*batch, color="tab:green", alpha=0.06, lw=0)


def _utilisation(
    ax: Axes, run: PolicyRun, lower: float, upper: float, burst: tuple[float, float] | None
) -> None:
    t = [s.t for s in run.samples]
    ax.plot(t, [s.utilization for s in run.samples], color="tab:blue", lw=1, label="utilisation")
    if any(s.view is not None for s in run.samples):
        view = [s.view if s.view is not None else float("nan") for s in run.samples]
        source = run.view_source or run.settings.get("PTU_UTILIZATION_SOURCE", "estimate")
        ax.plot(t, view, color="tab:orange", lw=0.9, ls="--", label=f"worker's view ({source})")
    if any(s.calibration is not None for s in run.samples):
        ax.plot(t, _series(run.samples, 0), color="tab:gray", lw=0.7, label="model (uncalibrated)")
        ax.plot(t, _series(run.samples, 1), color="tab:cyan", lw=0.6, label="observed (header)")
        ax.plot(
            t, _series(run.samples, 2), color="tab:purple", lw=0.8, ls=":",
            label="correction (> 0: unseen traffic)",
        )  # fmt: skip
    ax.axhline(upper, color="tab:red", ls="--", lw=1, label=f"upper {upper:g}")
    ax.axhline(lower, color="tab:gray", ls=":", lw=1, label=f"lower {lower:g}")
    ax.axhline(1.0, color="black", lw=0.6)
    _shade(ax, burst, None)
    ax.set_ylabel("utilisation")
    ax.set_ylim(bottom=0)


def _concurrency(ax: Axes, run: PolicyRun, burst: tuple[float, float] | None) -> None:
    t = [s.t for s in run.samples]
    ax.step(t, [s.low_peak for s in run.samples], where="post", color="tab:green", lw=1)
    ax.set_ylabel("low in flight")
    ax.set_ylim(bottom=0)
    _shade(ax, burst, None)


def _latency(ax: Axes, run: PolicyRun, burst: tuple[float, float] | None) -> None:
    ok = [r for r in run.hp if r.status == 200]
    bad = [r for r in run.hp if r.status != 200]
    ax.scatter([r.at for r in ok], [r.latency_s * 1000 for r in ok], s=4, color="tab:purple")
    if bad:
        ax.scatter(
            [r.at for r in bad],
            [r.latency_s * 1000 for r in bad],
            s=12,
            marker="x",
            color="tab:red",
            label=f"{len(bad)} failed (429)",
        )
        ax.legend(loc="upper right", fontsize=7)
    ax.set_ylabel("high-priority ms")
    ax.set_ylim(bottom=0)
    _shade(ax, burst, None)


def plot_timeline(
    run: PolicyRun,
    path: Path,
    lower: float,
    upper: float,
    burst: tuple[float, float] | None = None,
    title: str | None = None,
) -> None:
    """Three stacked panels: utilisation with thresholds, low concurrency, high latency."""
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    _utilisation(axes[0], run, lower, upper, burst)
    axes[0].legend(loc="upper right", fontsize=7)
    _concurrency(axes[1], run, burst)
    _latency(axes[2], run, burst)
    axes[2].set_xlabel("seconds (orange: interactive burst)")
    fig.suptitle(title or run.policy)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_policies(
    runs: Sequence[PolicyRun],
    path: Path,
    lower: float,
    upper: float,
    burst: tuple[float, float] | None = None,
) -> None:
    """One row per policy: utilisation (left) and low-priority concurrency (right)."""
    fig, axes = plt.subplots(
        len(runs), 2, figsize=(12, 2.2 * len(runs) + 0.6), sharex=True, squeeze=False
    )
    for row, run in zip(axes, runs, strict=True):
        _utilisation(row[0], run, lower, upper, burst)
        _concurrency(row[1], run, burst)
        row[0].set_title(run.policy, fontsize=9, loc="left")
        row[1].set_title(run.policy, fontsize=9, loc="left")
    axes[0][0].legend(loc="upper right", fontsize=7)
    axes[-1][0].set_xlabel("seconds (orange: interactive burst)")
    axes[-1][1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cdfs(series: Mapping[str, Sequence[float]], path: Path, xlabel: str) -> None:
    """Cumulative distributions of several samples, one line each."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, raw in series.items():
        values = sorted(raw)
        if values:
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of calls")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency_cdf(runs: Sequence[PolicyRun], path: Path) -> None:
    """Cumulative distribution of successful high-priority latency, one line per policy."""
    series = {run.policy: [r.latency_s * 1000 for r in run.hp if r.status == 200] for run in runs}
    plot_cdfs(series, path, "high-priority latency ms (successful calls)")


def plot_estimates(
    runs: Sequence[PolicyRun],
    path: Path,
    lower: float,
    upper: float,
    burst: tuple[float, float] | None = None,
    title: str | None = None,
    *,
    truth_only: Collection[str] = (),
    span: tuple[float, float, str] | None = None,
) -> None:
    """Runs side by side: the true level, the worker's reading, thresholds, interactive 429s.

    Each panel is `_utilisation`'s, so whatever it shows of the worker's source (the
    calibrated estimate's model, observation and correction) shows here too. With several
    runs a panel above overlays them: each run's true level (solid) and reading (dashed;
    not for the policies in `truth_only`, whose reading is the truth), and `span`
    (start, end, label) shaded, such as a capacity cut.
    """
    if not runs:
        return
    overlay = len(runs) > 1
    fig = plt.figure(figsize=(6.5 * len(runs), 3.8 * (2 if overlay else 1)))
    grid = fig.add_gridspec(2 if overlay else 1, len(runs))
    if overlay:
        _overlay(fig.add_subplot(grid[0, :]), runs, upper, burst, truth_only, span)
    first: Axes | None = None
    for i, run in enumerate(runs):
        ax = fig.add_subplot(grid[-1, i], sharey=first)
        first = first or ax
        _utilisation(ax, run, lower, upper, burst)
        _shade(ax, None, pending_window(run) if run.batch_start is not None else None)
        throttled = [r.at for r in run.hp if r.status == 429]
        if throttled:
            ax.scatter(
                throttled,
                [1.03] * len(throttled),
                marker="x",
                s=14,
                color="tab:red",
                label=f"{len(throttled)} interactive 429s",
            )
        ax.set_ylim(0, max(1.15, *(s.utilization + 0.05 for s in run.samples)))
        ax.set_title(run.description, fontsize=9, loc="left")
        ax.set_xlabel("seconds (orange: burst, green: batch pending)")
        if i == 0:
            ax.legend(loc="upper right", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_ARM_COLOURS = ("tab:gray", "tab:blue", "black", "tab:green", "tab:purple")


def _overlay(
    ax: Axes,
    runs: Sequence[PolicyRun],
    upper: float,
    burst: tuple[float, float] | None,
    truth_only: Collection[str],
    span: tuple[float, float, str] | None,
) -> None:
    for run, colour in zip(runs, itertools.cycle(_ARM_COLOURS), strict=False):
        t = [s.t for s in run.samples]
        ax.plot(t, [s.utilization for s in run.samples], color=colour, lw=1.1,
                label=f"{run.policy}: true level")  # fmt: skip
        if run.policy not in truth_only and any(s.view is not None for s in run.samples):
            view = [nan if s.view is None else s.view for s in run.samples]
            ax.plot(t, view, color=colour, lw=0.9, ls="--", label=f"{run.policy}: reading")
    ax.axhline(upper, color="tab:red", ls="--", lw=1, label=f"upper {upper:g}")
    ax.axhline(1.0, color="black", lw=0.6)
    _shade(ax, burst, None)
    if span is not None:
        ax.axvspan(span[0], span[1], color="tab:red", alpha=0.08, lw=0, label=span[2])
    ax.set_ylabel("utilisation")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds (orange: interactive burst)")
    ax.legend(loc="upper right", fontsize=7, ncol=2)

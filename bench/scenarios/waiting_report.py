"""What `ptu bench waiting` writes: results.md and its plots, from the measured rows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt

from bench.report import tables as report
from bench.scenarios.waiting_measures import WaitRecord

if TYPE_CHECKING:
    from bench.scenarios.waiting import WaitingConfig

PHASES = ("before", "enqueue", "settle", "held", "draining", "after")
"""The phases of part 2 whose interactive latency is reported."""
PLOTTED = ("before", "held", "draining", "after")
TARGET_KEYS = ["target", "measured", "target_value", "result"]


def plot_latencies(latencies: dict[str, list[WaitRecord]], path: Path) -> None:
    """Each waiting call's latency per arm (hollow: no answer within the bound)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for x, calls in enumerate(latencies.values()):
        for r in calls:
            ax.scatter(x, r.latency_s, facecolors="C0" if r.answered else "none", edgecolors="C0")
    ax.set_xticks(range(len(latencies)), ["a: empty queue", "b: behind the batch"])
    ax.set_xlim(-0.5, len(latencies) - 0.5)
    ax.set_ylabel("waiting call latency s")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_many(many: dict[str, Any], out: Path) -> None:
    """The ingress's RSS, Redis connections and calls held over time; interactive latency
    per phase."""
    samples = many["samples"]
    t = [s[0] for s in samples]
    fig, (rss, conns) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    rss.plot(t, [s[1] / 1024 for s in samples], label="ingress RSS MB")
    rss.set_ylabel("RSS MB")
    held = rss.twinx()
    held.plot(t, [s[3] for s in samples], color="C1", label="calls held")
    held.set_ylabel("calls held")
    conns.plot(t, [s[2] for s in samples], color="C2")
    conns.set_ylabel("Redis connections of the ingress")
    conns.set_xlabel("seconds")
    for ax in (rss, conns):
        ax.grid(alpha=0.3)
        for name, at in many["marks"].items():
            ax.axvline(at, color="grey", linewidth=0.8, linestyle=":")
            ax.annotate(name, (at, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                        rotation=90, va="top", ha="right")  # fmt: skip
    fig.tight_layout()
    fig.savefig(out / "many_waiters.png", dpi=110)
    plt.close(fig)
    series = {
        f"{via}, {name}": [ms for t, n, ms, s in many["hp"] if (t, n, s) == (via, name, 200)]
        for via in ("ingress", "twin")
        for name in PLOTTED
    }
    report.plot_cdfs(series, out / "interactive_cdf.png", "interactive latency ms, by phase")


def many_tables(row: dict[str, Any]) -> str:
    """Part 2's tables: answers, the ingress process, interactive latency by phase."""
    groups = [
        ["waiters", "answered_200", "fell_back_202", "no_answer_or_error", "error_statuses",
         "distinct_request_ids",
         "repeated_request_ids", "reply_missing", "reply_duplicated", "upstream_low_calls",
         "exactly_once", "enqueue_s", "settle_s", "drain_s"],
        ["rss_before_mb", "rss_peak_mb", "rss_growth_mb", "redis_conns_before",
         "redis_conns_peak", "redis_clients_from_ingress_held", "redis_clients_active_held",
         "redis_active_commands_held", "redis_subscriptions_held", "redis_pool_size"],
        [f"ingress_cpu_{name}" for name in PHASES],
        ["ingress_p99_without_ms", "ingress_p99_ratio_held", "ingress_p99_ratio_draining",
         "twin_p99_without_ms", "twin_p99_ratio_held", "twin_p99_ratio_draining",
         "held_p99_ingress_vs_twin"],
    ]  # fmt: skip
    columns = ["calls", "errors", "p50_ms", "p99_ms"]
    phases = [
        {"phase": name, "via": via, **{k: row[f"{via}_{name}_{k}"] for k in columns}}
        for name in PHASES
        for via in ("ingress", "twin")
    ]
    tables = [report.markdown_table([row], keys) for keys in groups]
    tables.insert(2, report.markdown_table(phases, ["phase", "via", *columns]))
    return "\n\n".join(tables)


def write_markdown(cfg: WaitingConfig, result: dict[str, Any], out: Path) -> None:
    """results.md: the targets first, then each part's figures."""
    b, m = cfg.behind, cfg.many
    arms = result["behind_a_batch"]
    lines = [
        "# ptu bench waiting",
        "",
        "## Targets",
        "",
        report.markdown_table(result["targets"], TARGET_KEYS),
        "",
        "## 1. Waiting calls behind a batch",
        "",
        f"{b.waiting_calls} calls `Prefer: wait={b.wait_s}` per arm, {b.stagger_s:g} s apart; "
        f"interactive traffic {result['interactive_per_s']} calls/s ({b.hp_share:g} of the "
        f"capacity) all along; {b.workers} workers; a call without an answer after "
        f"{b.bound_s:g} s counts as {b.bound_s:g} s (`lower_bound`).",
        "",
        report.markdown_table(arms, list(arms[0])),
        "",
        "## 2. Many waiters on one ingress",
        "",
        f"{m.waiters} concurrent calls `Prefer: wait={m.wait_s}` held by one ingress, then "
        f"drained by one worker; interactive calls at {m.hp_per_s:g}/s through the same "
        "ingress before, while held, while draining and after, and as many interleaved "
        "through a twin ingress that holds no waiters (`twin`: what the machine's load "
        "alone did meanwhile).",
        "",
        many_tables(result["many_waiters"]),
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")

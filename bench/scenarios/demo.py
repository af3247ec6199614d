"""`ptu demo`: the embedded all-in-one run, nothing to configure.

Starts an embedded Valkey/Redis, the PTU simulator (10 s window, visible
per-token latency), the estimator, the ingress and one worker; drives
interactive traffic with a burst in the middle plus a low-priority batch through
the ingress; shows a live dashboard; ends with a summary and a PNG timeline.
Every process it started is stopped on the way out, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.harness.runner import Policy, drive, prepare
from bench.harness.stack import SimulatorOptions, Stack, sigterm_as_interrupt
from bench.harness.workload import MixedWorkload, batch_calls, interactive_calls
from bench.report import tables as report
from bench.report.dashboard import Dashboard, summary_table
from bench.report.metrics import PolicyRun, summarise
from bench.scenarios.mixed import capacity_of
from orchestrator.core import logs
from orchestrator.core.settings import Settings

LOWER, UPPER, MAX_CONCURRENCY = 0.2, 0.9, 20
BATCH_PER_S = 1.6
"""Batch requests per second of run the demo's deployment finishes with the interactive load."""
SUMMARY_KEYS = (
    ("hp_calls", "high-priority calls"),
    ("hp_429_rate", "high-priority 429 rate"),
    ("hp_p50_ms", "high-priority p50 ms"),
    ("hp_p99_ms", "high-priority p99 ms"),
    ("util_mean", "true utilisation, mean while the batch ran"),
    ("util_p95", "true utilisation, p95 while the batch ran"),
    ("time_above_upper_s", "seconds at or above the upper threshold"),
    ("lp_completed", "batch requests completed"),
    ("lp_makespan_s", "batch makespan s"),
    ("lp_tokens_per_s", "batch tokens/s"),
    ("lp_429", "low-priority 429s from the deployment"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--duration-s`, `--out`, `--seed`."""
    parser.add_argument(
        "--duration-s", type=float, default=90.0, help="interactive traffic (default 90)"
    )
    parser.add_argument("--out", default="demo-out", help="where the PNG and results go")
    parser.add_argument("--seed", type=int, default=7)


def demo_workload(duration_s: float) -> MixedWorkload:
    """The demo's workload: 35 % interactive with a burst to 70 %, a batch sized to finish."""
    return MixedWorkload(
        duration_s=duration_s,
        lp_requests=max(3, round(duration_s * BATCH_PER_S)),
        batch_at_s=min(3.0, duration_s / 10),
    )


def run_demo(
    duration_s: float, out: Path, seed: int = 7, console: Console | None = None
) -> dict[str, Any]:
    """Run the demo, write `out/timeline.png` and `out/results.json`; return the summary row."""
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    sim = SimulatorOptions(seed=seed)
    workload = demo_workload(duration_s)
    hp_calls = interactive_calls(workload, capacity_of(sim), sim.deployment, seed)
    lp_calls = batch_calls(workload, sim.deployment, seed)
    policy = Policy(
        "demo",
        "worker, linear throttle on the Redis estimate",
        "queued",
        {
            "PTU_LOWER_THRESHOLD": f"{LOWER:g}",
            "PTU_UPPER_THRESHOLD": f"{UPPER:g}",
            "PTU_MAX_CONCURRENCY": str(MAX_CONCURRENCY),
        },
    )
    title = f"ptu demo: {sim.deployment}, {sim.ptus} PTU"
    with sigterm_as_interrupt(), Stack(out / "run", sim) as stack:
        console.print(f"starting embedded Redis, simulator, estimator, ingress, worker in {out}")
        stack.start_redis()
        stack.start_simulator()
        prepare(stack, policy)
        console.print(
            f"driving {len(hp_calls)} interactive calls over {duration_s:g} s "
            f"(burst {workload.burst_window[0]:g}-{workload.burst_window[1]:g} s) "
            f"and a batch of {len(lp_calls)}"
        )
        with Dashboard(title, LOWER, UPPER, workload.burst_window, console) as dash:
            run = asyncio.run(
                drive(stack, policy, hp_calls, lp_calls, duration_s, 30.0, tick=dash.tick)
            )
    row = summarise(run, UPPER, None)
    _write(run, row, out, workload, console)
    return row


def _write(
    run: PolicyRun, row: dict[str, Any], out: Path, workload: MixedWorkload, console: Console
) -> None:
    report.write_results(
        out, [row], "ptu demo", ["utilisation: mean and p95 while the batch was pending"]
    )
    report.write_timeseries(run, out / "timeseries.csv")
    png = out / "timeline.png"
    report.plot_timeline(
        run,
        png,
        LOWER,
        UPPER,
        workload.burst_window,
        "ptu demo: true utilisation, low-priority concurrency, high-priority latency",
    )
    console.print(summary_table(row, SUMMARY_KEYS))
    console.print(f"timeline: {png}\nresults:  {out / 'results.json'}")


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    """Entry point of `ptu demo`."""
    logs.configure("warning", "console")
    run_demo(args.duration_s, Path(args.out), args.seed)
    return 0

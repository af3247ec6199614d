"""`ptu bench mixed`: policies side by side on one seeded mixed workload.

One simulator and one Redis serve every policy; between policies the simulator
is reset (`POST /sim/reset`), Redis is flushed and the orchestrator processes are
restarted with the policy's settings. Interactive traffic always goes through
the ingress (`x-priority: high`); only the way the low-priority batch travels
changes:

- baseline: no batch (the latency reference);
- direct: the batch called straight at the deployment with a fixed concurrency
  and the openai SDK's default retries, as a team without the orchestrator would;
- static: our worker at a fixed concurrency sized for the interactive peak, with
  the utilisation feedback moved out of the way (thresholds 0.98 / 0.99);
- linear-estimate: our worker, the Redis estimate source (the default);
- linear-monitor: our worker, the Azure Monitor source reading the simulator's
  metrics emulation (per-minute points, scaled ingestion lag) over HTTPS.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from bench.harness.identity import IdentityEndpoint
from bench.harness.runner import Policy, drive, prepare
from bench.harness.stack import API_KEY, SimulatorOptions, Stack, sigterm_as_interrupt
from bench.harness.workload import (
    Capacity,
    MixedWorkload,
    batch_calls,
    interactive_calls,
    static_concurrency,
)
from bench.report import tables as report
from bench.report.metrics import RESULT_KEYS, PolicyRun, summarise
from orchestrator.core import logs
from simulator.config import DEFAULT_RESOURCE_ID, parse_deployment

log = structlog.get_logger(__name__)

TABLE_ORDER = ("baseline", "direct", "static", "linear-estimate", "linear-monitor")
# linear-monitor runs right after the baseline: the simulator's metrics history (which a
# reset keeps, like Azure Monitor) then shows interactive-only minutes when its batch starts.
RUN_ORDER = ("baseline", "linear-monitor", "direct", "static", "linear-estimate")
TABLE_KEYS = (*RESULT_KEYS, "lp_completed", "lp_failed")


@dataclass(frozen=True, slots=True)
class MixedConfig:
    """Everything one `bench mixed` run needs."""

    workload: MixedWorkload
    sim: SimulatorOptions
    policies: tuple[str, ...] = RUN_ORDER
    lower: float = 0.2
    upper: float = 0.9
    max_concurrency: int = 20
    grace_s: float = 20.0
    monitor_poll_s: float = 5.0
    seed: int = 7


def quick_config(seed: int = 7) -> MixedConfig:
    """CI-sized: about 30 s per policy, under three minutes in all."""
    wl = MixedWorkload(duration_s=25.0, lp_requests=55)
    return MixedConfig(wl, SimulatorOptions(https=True, seed=seed), grace_s=3.0, seed=seed)


def full_config(seed: int = 7) -> MixedConfig:
    """The run the README quotes: about two minutes per policy."""
    wl = MixedWorkload(duration_s=100.0, lp_requests=180)
    return MixedConfig(wl, SimulatorOptions(https=True, seed=seed), seed=seed)


def capacity_of(sim: SimulatorOptions) -> Capacity:
    """The simulated deployment's capacity, as the workload generator sees it."""
    spec = parse_deployment(f"{sim.deployment}={sim.model}:{sim.ptus}")
    return Capacity(spec.capacity_tpm, spec.output_weight, sim.window_s)


def policies(cfg: MixedConfig, stack: Stack, identity: dict[str, str]) -> dict[str, Policy]:
    """The five policies and the PTU_* settings of their worker."""
    linear = {
        "PTU_LOWER_THRESHOLD": f"{cfg.lower:g}",
        "PTU_UPPER_THRESHOLD": f"{cfg.upper:g}",
        "PTU_MAX_CONCURRENCY": str(cfg.max_concurrency),
    }
    fixed = static_concurrency(
        cfg.workload, capacity_of(cfg.sim), cfg.upper, cfg.sim.ttft_ms, cfg.sim.tbt_ms
    )
    monitor = {
        **linear,
        "PTU_UTILIZATION_SOURCE": "azure_monitor",
        "PTU_AZURE_MONITOR_ENDPOINT": stack.sim_url,
        "PTU_AZURE_RESOURCE_ID": DEFAULT_RESOURCE_ID,
        "PTU_AZURE_MONITOR_POLL_S": f"{cfg.monitor_poll_s:g}",
        "PTU_AZURE_MONITOR_CA_FILE": str(stack.ca_file),
        **identity,
    }
    return {
        "baseline": Policy("baseline", "interactive traffic alone", "none"),
        "direct": Policy(
            "direct",
            f"batch straight to the deployment, {cfg.max_concurrency} concurrent, SDK retries",
            "direct",
            direct_concurrency=cfg.max_concurrency,
        ),
        "static": Policy(
            "static",
            f"worker at a fixed {fixed} concurrent (sized for the burst), no feedback",
            "queued",
            {
                "PTU_LOWER_THRESHOLD": "0.98",
                "PTU_UPPER_THRESHOLD": "0.99",
                "PTU_MAX_CONCURRENCY": str(fixed),
            },
        ),
        "linear-estimate": Policy(
            "linear-estimate", "worker, linear throttle on the Redis estimate", "queued", linear
        ),
        "linear-monitor": Policy(
            "linear-monitor",
            "worker, linear throttle on Azure Monitor (PT1M, "
            f"{cfg.sim.monitor_lag_s:g} s ingestion lag)",
            "queued",
            monitor,
        ),
    }


def run_mixed(cfg: MixedConfig, out: Path) -> list[dict[str, Any]]:
    """Run every policy in `cfg.policies`, write the outputs to `out`, return the rows."""
    out.mkdir(parents=True, exist_ok=True)
    model = cfg.sim.deployment
    hp_calls = interactive_calls(cfg.workload, capacity_of(cfg.sim), model, cfg.seed)
    lp_calls = batch_calls(cfg.workload, model, cfg.seed)
    runs: dict[str, PolicyRun] = {}
    with (
        sigterm_as_interrupt(),
        IdentityEndpoint(API_KEY) as identity,
        Stack(out / "run", cfg.sim) as stack,
    ):
        stack.start_redis()
        stack.start_simulator()
        table = policies(cfg, stack, identity.env)
        for name in cfg.policies:
            policy = table[name]
            log.info("policy_started", policy=name)
            prepare(stack, policy)
            runs[name] = asyncio.run(
                drive(
                    stack,
                    policy,
                    hp_calls,
                    lp_calls,
                    cfg.workload.duration_s,
                    cfg.grace_s,
                )
            )
            log.info("policy_finished", policy=name)
    ordered = [runs[n] for n in TABLE_ORDER if n in runs]
    baseline = runs.get("baseline")
    base_p99 = summarise(baseline, cfg.upper, None)["hp_p99_ms"] if baseline else None
    rows = [summarise(run, cfg.upper, base_p99) for run in ordered]
    _write(cfg, out, rows, ordered, len(hp_calls))
    return rows


def _write(
    cfg: MixedConfig, out: Path, rows: list[dict[str, Any]], runs: list[PolicyRun], n_hp: int
) -> None:
    wl = cfg.workload
    cap = capacity_of(cfg.sim)
    notes = [
        f"deployment {cfg.sim.model} x {cfg.sim.ptus} PTU ({cap.capacity_tpm:,.0f} TPM), "
        f"window {cfg.sim.window_s:g} s, TTFT {cfg.sim.ttft_ms:g} ms, TBT {cfg.sim.tbt_ms:g} ms",
        f"interactive: {n_hp} calls over {wl.duration_s:g} s at {wl.hp_share:.0%} of capacity, "
        f"burst to {wl.burst_share:.0%} during {wl.burst_window[0]:g}-{wl.burst_window[1]:g} s",
        f"batch: {wl.lp_requests} requests of ~{wl.lp.prompt_tokens} prompt tokens, "
        f"max_tokens {wl.lp.max_tokens}, submitted at {wl.batch_at_s:g} s",
        f"thresholds lower {cfg.lower:g} / upper {cfg.upper:g}, max concurrency "
        f"{cfg.max_concurrency}; seed {cfg.seed}",
        "latency percentiles over successful interactive calls; 429 rate over all of them",
        "utilisation = the simulator's true bucket level, sampled at 10 Hz while the batch is "
        "pending (whole run for the baseline)",
        "LP tokens/s = prompt + completion tokens of completed batch requests per second "
        "of makespan (of the run when unfinished, shown as makespan -); LP failed = requests "
        "whose final result is a failure (the worker gave up after PTU_MAX_ATTEMPTS 429s)",
        *(f"{r['policy']}: {r['description']}" for r in rows),
    ]
    report.write_results(out, rows, "bench mixed: policies side by side", notes, TABLE_KEYS)
    burst = wl.burst_window
    report.plot_policies(runs, out / "policies.png", cfg.lower, cfg.upper, burst)
    report.plot_latency_cdf(runs, out / "latency_cdf.png")
    for run in runs:
        report.write_timeseries(run, out / f"timeseries_{run.policy}.csv")
        report.plot_timeline(
            run, out / f"timeline_{run.policy}.png", cfg.lower, cfg.upper, burst, run.description
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ptu bench mixed` (besides --out, --quick, --seed)."""
    parser.add_argument("--policies", default=",".join(RUN_ORDER), help="comma-separated subset")
    parser.add_argument("--duration-s", type=float, help="interactive traffic per policy")
    parser.add_argument("--lp-requests", type=int, help="batch size")
    parser.add_argument("--max-concurrency", type=int, default=20)
    parser.add_argument("--lower", type=float, default=0.2)
    parser.add_argument("--upper", type=float, default=0.9)


def run(args: argparse.Namespace) -> int:
    """Run the scenario from the command line."""
    logs.configure("warning", "console")
    cfg = quick_config(args.seed) if args.quick else full_config(args.seed)
    wl = cfg.workload
    if args.duration_s:
        wl = replace(wl, duration_s=args.duration_s)
    if args.lp_requests:
        wl = replace(wl, lp_requests=args.lp_requests)
    chosen = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    unknown = sorted(set(chosen) - set(RUN_ORDER))
    if unknown:
        print(f"ptu bench mixed: unknown policies {unknown} (known: {', '.join(RUN_ORDER)})")
        return 2
    cfg = replace(
        cfg,
        workload=wl,
        policies=tuple(p for p in RUN_ORDER if p in chosen),
        lower=args.lower,
        upper=args.upper,
        max_concurrency=args.max_concurrency,
    )
    out = Path(args.out)
    rows = run_mixed(cfg, out)
    print(report.markdown_table(rows, TABLE_KEYS))
    print(f"\nwritten: {out / 'results.json'}, {out / 'results.md'}, {out}/*.png")
    return 0

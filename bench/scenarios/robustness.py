"""`ptu bench robustness`: the mixed workload under deployments that disagree with our model.

For every reality (see `realities.py`) the same seeded workload runs once per arm, side by
side: `off` (`PTU_CALIBRATION=off`, the open-loop token-event model alone), `auto` (the
default configuration, calibrated) and `oracle` (the same worker steering by the
simulator's true level, `bench/harness/oracle.py`: the physical best of the reality, what
the others are measured against): interactive traffic through the ingress at
~30 % of the capacity the orchestrator is told, with a burst to ~60 %, and one
low-priority batch through the worker. One simulator serves the whole benchmark; each run
patches it into its reality and resets it with its Azure Monitor history (so no run sees
another's minutes), flushes Redis and starts fresh orchestrator processes. The
orchestrator is always told the nominal deployment (15 PTU, `PTU_ESTIMATE_WINDOW_S` 10),
whatever the simulator serves. The Azure Monitor emulation is configured in every run
(`PTU_AZURE_MONITOR_ENDPOINT` + `PTU_AZURE_RESOURCE_ID`, short ingestion lag), as it would
be on a real deployment; it is the calibration's only slow signal when the header is absent.
A capacity step (`step=F,AT,FOR`) is made by PATCHing the simulator's capacity while the
run goes, at fixed offsets from when the batch is sent.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from bench.harness.identity import IdentityEndpoint
from bench.harness.oracle import ORACLE_WORKER
from bench.harness.oracle import POLL_S as ORACLE_POLL_S
from bench.harness.runner import Policy, drive, prepare
from bench.harness.stack import API_KEY, SimulatorOptions, Stack, sigterm_as_interrupt
from bench.harness.workload import MixedWorkload, batch_calls, interactive_calls
from bench.report import tables as report
from bench.report.metrics import PolicyRun
from bench.scenarios.enact import overasking, start_output_proxy, stepper
from bench.scenarios.mixed import capacity_of
from bench.scenarios.realities import (
    DEFAULT_REALITIES,
    OVERASK_MAX_TOKENS,
    OVERASK_USES,
    QUICK_REALITIES,
    Reality,
    parse_realities,
    simulator_patch,
    timed_patches,
)
from bench.scenarios.robustness_rows import (
    ERROR_AFTER_S,
    TABLE_KEYS,
    against_oracle,
    reality_row,
)
from orchestrator.core import logs
from orchestrator.core.errors import ConfigError
from simulator.config import DEFAULT_RESOURCE_ID

log = structlog.get_logger(__name__)

CALIBRATIONS = ("off", "auto", "oracle")
"""The arms: calibration off, the default configuration, the oracle."""


@dataclass(frozen=True, slots=True)
class RobustnessConfig:
    """Everything one `bench robustness` run needs."""

    workload: MixedWorkload
    told: SimulatorOptions
    realities: tuple[Reality, ...]
    calibrations: tuple[str, ...] = CALIBRATIONS
    lower: float = 0.2
    upper: float = 0.9
    max_concurrency: int = 20
    grace_s: float = 20.0
    monitor_poll_s: float = 5.0
    monitor: bool = True
    """Whether the worker is configured with the Azure Monitor emulation."""
    late_after_s: float | None = None
    """Also count interactive (and bypass) 429s from this many seconds into each run on."""
    seed: int = 7

    @property
    def table_keys(self) -> tuple[str, ...]:
        """The results table's columns: the late counts only when asked for."""
        late = ("hp_429_late", "bypass_429_late") if self.late_after_s is not None else ()
        return TABLE_KEYS + late


def _told(seed: int) -> SimulatorOptions:
    return SimulatorOptions(https=True, seed=seed, monitor_lag_s=5.0)


def _workload(duration_s: float, lp_requests: int) -> MixedWorkload:
    # the burst comes early (from 20 % of the run), while the batch is still pending
    return MixedWorkload(
        duration_s=duration_s,
        hp_share=0.30,
        burst_share=0.60,
        burst_start=0.2,
        lp_requests=lp_requests,
    )


def full_config(seed: int = 7) -> RobustnessConfig:
    """Every default reality: 50 s of traffic per run, about a minute with start-up on a
    loaded 2-core machine, so about 45 minutes for 14 realities x 3 arms."""
    realities = parse_realities(",".join(DEFAULT_REALITIES))
    return RobustnessConfig(_workload(50.0, 70), _told(seed), realities, grace_s=15.0, seed=seed)


def quick_config(seed: int = 7) -> RobustnessConfig:
    """CI-sized: one reality (a combination, late header) x 3, 12 s of traffic per run, ~2 min."""
    realities = parse_realities(",".join(QUICK_REALITIES))
    return RobustnessConfig(_workload(12.0, 12), _told(seed), realities, grace_s=4.0, seed=seed)


def policy(
    cfg: RobustnessConfig,
    stack: Stack,
    identity: dict[str, str],
    mode: str,
    endpoint: str | None = None,
) -> Policy:
    """The worker settings of one run: the nominal deployment, monitor configured; the
    deployment at `endpoint` when given (the overask reality's proxy), else the simulator."""
    env = {
        "PTU_AZURE_OPENAI_ENDPOINT": endpoint or stack.sim_url,
        "PTU_LOWER_THRESHOLD": f"{cfg.lower:g}",
        "PTU_UPPER_THRESHOLD": f"{cfg.upper:g}",
        "PTU_MAX_CONCURRENCY": str(cfg.max_concurrency),
        "PTU_DEPLOYMENTS": cfg.told.deployments_json(),
        "PTU_ESTIMATE_WINDOW_S": f"{cfg.told.window_s:g}",
        **identity,
    }
    if cfg.monitor:
        env |= {
            "PTU_AZURE_MONITOR_ENDPOINT": stack.sim_url,
            "PTU_AZURE_RESOURCE_ID": DEFAULT_RESOURCE_ID,
            "PTU_AZURE_MONITOR_POLL_S": f"{cfg.monitor_poll_s:g}",
            "PTU_AZURE_MONITOR_CA_FILE": str(stack.ca_file),
        }
    if mode == "oracle":  # the default configuration everywhere but the worker's throttle
        return Policy(mode, "oracle (true level)", "queued", env, worker_module=ORACLE_WORKER)
    if mode != "auto":  # the default run leaves PTU_CALIBRATION unset: it is the default
        env["PTU_CALIBRATION"] = mode
    label = "default (auto)" if mode == "auto" else mode
    return Policy(mode, f"calibration {label}", "queued", env)


def run_robustness(cfg: RobustnessConfig, out: Path) -> list[dict[str, Any]]:
    """Run every reality under every calibration mode, write the outputs, return the rows."""
    out.mkdir(parents=True, exist_ok=True)
    model = cfg.told.deployment
    hp_calls = interactive_calls(cfg.workload, capacity_of(cfg.told), model, cfg.seed)
    honest = batch_calls(cfg.workload, model, cfg.seed)
    overask = batch_calls(overasking(cfg.workload), model, cfg.seed)
    rows: list[dict[str, Any]] = []
    runs: dict[str, list[PolicyRun]] = {}
    with (
        sigterm_as_interrupt(),
        IdentityEndpoint(API_KEY) as identity,
        Stack(out / "run", cfg.told) as stack,
    ):
        stack.start_redis()
        stack.start_simulator()
        proxy = start_output_proxy(stack) if any(r.overask for r in cfg.realities) else None
        for reality in cfg.realities:
            patch = simulator_patch(cfg.told, reality)
            steps = timed_patches(cfg.told, reality, cfg.workload.batch_at_s)
            lp_calls = overask if reality.overask else honest
            for mode in cfg.calibrations:
                log.info("robustness_run_started", reality=reality.name, calibration=mode)
                endpoint = proxy if reality.overask else None
                chosen = policy(cfg, stack, identity.env, mode, endpoint)
                prepare(stack, chosen, sim_patch=patch, fresh_metrics=True)
                run = asyncio.run(
                    drive(
                        stack,
                        chosen,
                        hp_calls,
                        lp_calls,
                        cfg.workload.duration_s,
                        cfg.grace_s,
                        tick=stepper(stack, steps),
                    )
                )
                runs.setdefault(reality.name, []).append(run)
                rows.append(reality_row(reality, mode, run, cfg.upper, cfg.late_after_s))
                log.info("robustness_run_finished", reality=reality.name, calibration=mode)
    against_oracle(rows)
    _write(cfg, out, rows, runs, len(hp_calls))
    return rows


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name)


def _write(
    cfg: RobustnessConfig,
    out: Path,
    rows: list[dict[str, Any]],
    runs: dict[str, list[PolicyRun]],
    n_hp: int,
) -> None:
    wl, told = cfg.workload, cfg.told
    cap = capacity_of(told)
    notes = [
        f"the orchestrator is told: {told.model} x {told.ptus} PTU ({cap.capacity_tpm:,.0f} TPM),"
        f" window {told.window_s:g} s; TTFT {told.ttft_ms:g} ms, TBT {told.tbt_ms:g} ms",
        f"interactive (through the ingress): {n_hp} calls over {wl.duration_s:g} s at "
        f"{wl.hp_share:.0%} of the told capacity, burst to {wl.burst_share:.0%} during "
        f"{wl.burst_window[0]:g}-{wl.burst_window[1]:g} s",
        f"batch: {wl.lp_requests} requests of ~{wl.lp.prompt_tokens} prompt tokens, max_tokens "
        f"{wl.lp.max_tokens}, at {wl.batch_at_s:g} s; thresholds {cfg.lower:g} / {cfg.upper:g}, "
        f"max concurrency {cfg.max_concurrency}; seed {cfg.seed}",
        f"overask: the same batch asking max_tokens {OVERASK_MAX_TOKENS} (the ingress caps it at "
        f"PTU_MAX_TOKENS_CEILING), every low-priority call answered with {OVERASK_USES} output "
        "tokens (bench/harness/output_proxy.py sets the simulator's x-sim-completion-tokens)",
        "calibration off = PTU_CALIBRATION=off; auto = the default configuration; oracle = "
        "the default configuration with the worker steering by the simulator's true level "
        f"(/sim/state every {ORACLE_POLL_S * 1000:g} ms; bench only)",
        "x oracle = the arm's mean utilisation (makespan) / the oracle arm's in that reality",
        "bypass 429s = the simulator's own background traffic (another app calling the "
        "deployment directly), counted apart from ours",
        "true util = the simulator's utilisation (under its own model) sampled at 10 Hz while "
        "the batch is pending; x upper = that mean / the upper threshold",
        f"estimate MAE = mean |worker's reading - true level| in points after the first "
        f"{ERROR_AFTER_S:g} s (EstimateStore.read() from Redis, sampled beside the truth)",
        f"Azure Monitor emulation: PT1M, {told.monitor_lag_s:g} s ingestion lag, polled every "
        f"{cfg.monitor_poll_s:g} s"
        if cfg.monitor
        else "Azure Monitor: not configured (PTU_AZURE_MONITOR_ENDPOINT unset)",
        *(
            [f"late = calls made from {cfg.late_after_s:g} s into each run on"]
            if cfg.late_after_s is not None
            else []
        ),
        *(f"{r.name}: {r.describe()}" for r in cfg.realities),
    ]
    report.write_results(
        out, rows, "bench robustness: realities x calibration", notes, cfg.table_keys
    )
    for reality in cfg.realities:
        arms = runs.get(reality.name, [])
        steps = timed_patches(told, reality, wl.batch_at_s)
        report.plot_estimates(
            arms,
            out / f"reality_{_slug(reality.name)}.png",
            cfg.lower,
            cfg.upper,
            wl.burst_window,
            f"{reality.name}: {reality.describe()}",
            truth_only=("oracle",),
            span=(steps[0][0], steps[-1][0], "capacity cut") if steps else None,
        )
        for run in arms:
            report.write_timeseries(run, out / f"timeseries_{_slug(reality.name)}_{run.policy}.csv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ptu bench robustness` (besides --out, --quick, --seed)."""
    parser.add_argument(
        "--realities",
        help=f"comma-separated reality specs, knobs joined by '+' (default: "
        f"{','.join(DEFAULT_REALITIES)}; e.g. bypass=0.2+capacity=0.85,step=0.6,5,20)",
    )
    parser.add_argument(
        "--arms",
        "--calibrations",
        dest="calibrations",
        metavar="ARMS",
        default=",".join(CALIBRATIONS),
        help=f"arms side by side (default {','.join(CALIBRATIONS)})",
    )
    parser.add_argument("--duration-s", type=float, help="interactive traffic per run")
    parser.add_argument("--lp-requests", type=int, help="batch size")
    parser.add_argument(
        "--monitor-lag-s", type=float, help="the Azure Monitor emulation's ingestion lag (5)"
    )
    parser.add_argument(
        "--no-monitor", action="store_true", help="leave Azure Monitor out of the worker's settings"
    )
    parser.add_argument(
        "--late-after-s",
        type=float,
        help="also count 429s of calls made from this many seconds into each run on",
    )


def run(args: argparse.Namespace) -> int:
    """Run the scenario from the command line."""
    logs.configure("warning", "console")
    cfg = quick_config(args.seed) if args.quick else full_config(args.seed)
    try:
        realities = parse_realities(args.realities) if args.realities else cfg.realities
        modes = tuple(m.strip() for m in args.calibrations.split(",") if m.strip())
        unknown = sorted(set(modes) - set(CALIBRATIONS))
        if unknown or not modes:
            raise ConfigError(f"--arms: one or more of {', '.join(CALIBRATIONS)}")
    except ConfigError as exc:
        print(f"ptu bench robustness: {exc}")
        return 2
    wl = cfg.workload
    if args.duration_s:
        wl = replace(wl, duration_s=args.duration_s)
    if args.lp_requests:
        wl = replace(wl, lp_requests=args.lp_requests)
    told = cfg.told
    if args.monitor_lag_s is not None:
        told = replace(told, monitor_lag_s=args.monitor_lag_s)
    cfg = replace(
        cfg,
        workload=wl,
        told=told,
        realities=realities,
        calibrations=modes,
        monitor=not args.no_monitor,
        late_after_s=args.late_after_s,
    )
    out = Path(args.out)
    rows = run_robustness(cfg, out)
    print(report.markdown_table(rows, cfg.table_keys))
    print(f"\nwritten: {out / 'results.json'}, {out / 'results.md'}, {out}/reality_*.png")
    return 0

"""`ptu bench foreign`: our product against an upstream we did not write.

The upstream (e.g. Microsoft's `aoai-api-simulator` in generate mode, or `ptu simulator`
with a standard deployment) is already running at `--upstream URL`; nothing here builds
or starts it. Interactive traffic always goes through our ingress (`x-priority: high`) at
`hp_share` of the deployment's TPM; one low-priority batch travels in three ways, side
by side in one run:

- direct: the bench client sends the batch straight to the upstream, `max_concurrency`
  lanes with the openai SDK's default retries, no orchestrator;
- off: our worker, `PTU_CALIBRATION=off` (the open-loop token-event model alone);
- auto: our worker, the default configuration.

The orchestrator is told the deployment as provisioned with a capacity equal to the
upstream's TPM (`ptus` 1, `input_tpm_per_ptu` = TPM, `output_weight` 1: a TPM quota counts
an output token as one token), everything else at its defaults. A TPM share is counted as
a minute-window limiter counts a call at admission, prompt + `max_tokens` (Azure's
standard deployments; `aoai-api-simulator` counts `max_tokens` alone, hence small prompts).

The harness can neither reset an upstream it does not run nor read its true level. Before
each arm after the first it waits `drain_s` (default 65 s: a 60 s sliding window and a
margin), then probes the deployment with a one-token call and records the headroom the
upstream reports (`x-ratelimit-remaining-tokens`), so the table shows that every arm
started on a drained window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx2
import structlog

from bench.harness.runner import Policy, drive, prepare
from bench.harness.stack import API_KEY, SimulatorOptions, Stack, sigterm_as_interrupt
from bench.harness.traffic import chat_url
from bench.harness.workload import (
    CallShape,
    Capacity,
    MixedWorkload,
    batch_calls,
    interactive_calls,
)
from bench.report import tables as report
from bench.report.metrics import PolicyRun, interactive_in_window, summarise
from orchestrator.calls.signals import read_signals
from orchestrator.core import logs

log = structlog.get_logger(__name__)

ARMS = ("direct", "off", "auto")
DEPLOYMENT = "gpt-35-turbo-60k"
WINDOW_S = 60.0
"""The upstream's token window: a minute (also the orchestrator's default bucket size)."""
UPPER = 0.9
"""The product's default upper threshold (for the summary's utilisation columns)."""
HP = CallShape(prompt_tokens=20, max_tokens=200)
LP = CallShape(prompt_tokens=100, max_tokens=600)
TABLE_KEYS = (
    "policy",
    "window_429",
    "window_429_rate",
    "lp_makespan_s",
    "lp_completed",
    "lp_failed",
    "hp_429",
    "hp_p50_ms",
    "hp_p99_ms",
    "remaining_tokens_at_start",
)


@dataclass(frozen=True, slots=True)
class ForeignConfig:
    """Everything one `bench foreign` run needs."""

    upstream: str
    workload: MixedWorkload
    api_key: str = API_KEY
    deployment: str = DEPLOYMENT
    tpm: int = 60_000
    arms: tuple[str, ...] = ARMS
    max_concurrency: int = 20
    drain_s: float = WINDOW_S + 5.0
    grace_s: float = 120.0
    end_after_batch_s: float = 10.0
    seed: int = 7

    @property
    def capacity(self) -> Capacity:
        """The deployment as the workload generator sees it: a minute window, no refund."""
        return Capacity(float(self.tpm), 1.0, WINDOW_S, charged_share=1.0)


@dataclass(frozen=True, slots=True)
class Probe:
    """What one one-token call told about the upstream."""

    status: int
    remaining_tokens: int | None
    remaining_requests: int | None


def workload(duration_s: float, lp_requests: int, hp_share: float = 0.3) -> MixedWorkload:
    """Interactive calls at a steady `hp_share` (no burst), the batch 5 s in."""
    return MixedWorkload(
        duration_s=duration_s,
        hp_share=hp_share,
        burst_share=hp_share,
        hp=HP,
        lp=LP,
        lp_requests=lp_requests,
        batch_at_s=5.0,
    )


def full_config(upstream: str, seed: int = 7) -> ForeignConfig:
    """100 batch lines of 600 tokens (one minute of a 60,000 TPM deployment): ~8 min."""
    # interactive calls are planned for 4 minutes; each arm ends 10 s after its batch
    return ForeignConfig(upstream, workload(240.0, 100), seed=seed)


def quick_config(upstream: str, seed: int = 7) -> ForeignConfig:
    """CI-sized: 10 lines, 20 s of interactive traffic per arm (the drains dominate)."""
    return ForeignConfig(upstream, workload(20.0, 10), grace_s=30.0, seed=seed)


def deployments_json(cfg: ForeignConfig) -> str:
    """`PTU_DEPLOYMENTS`: the upstream's deployment as provisioned, capacity = its TPM."""
    entry = {
        "name": cfg.deployment,
        "model": cfg.deployment,
        "ptus": 1,
        "input_tpm_per_ptu": cfg.tpm,
        "output_weight": 1.0,
    }
    return json.dumps([entry])


def policies(cfg: ForeignConfig) -> dict[str, Policy]:
    """The three arms; the worker arms differ only in PTU_CALIBRATION."""
    env = {
        "PTU_DEPLOYMENTS": deployments_json(cfg),
        "PTU_ESTIMATE_WINDOW_S": f"{WINDOW_S:g}",
        "PTU_MAX_CONCURRENCY": str(cfg.max_concurrency),
    }
    return {
        "direct": Policy(
            "direct",
            f"batch straight to the upstream, {cfg.max_concurrency} concurrent, SDK retries",
            "direct",
            direct_concurrency=cfg.max_concurrency,
        ),
        "off": Policy(
            "off", "worker, calibration off", "queued", {**env, "PTU_CALIBRATION": "off"}
        ),
        "auto": Policy("auto", "worker, default configuration (calibration auto)", "queued", env),
    }


PROBE_TIMEOUT_S = 60.0
"""`aoai-api-simulator` spends ~12 s on its first chat call (it builds its lorem texts)."""


def probe(cfg: ForeignConfig, timeout_s: float = PROBE_TIMEOUT_S) -> Probe | None:
    """One `max_tokens: 1` call to the deployment; None when nothing answers at the URL."""
    body = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    try:
        response = httpx2.post(
            chat_url(cfg.upstream, cfg.deployment),
            json=body,
            headers={"api-key": cfg.api_key},
            timeout=timeout_s,
        )
    except httpx2.HTTPError as exc:
        log.debug("upstream_probe_failed", error=str(exc))
        return None
    signals = read_signals(response.headers)
    return Probe(response.status_code, signals.remaining_tokens, signals.remaining_requests)


def refusal(found: Probe | None, cfg: ForeignConfig) -> str | None:
    """The one line to print when the upstream cannot serve the run, else None."""
    if found is None:
        return f"no answer from {cfg.upstream} within {PROBE_TIMEOUT_S:g} s (is it running?)"
    if found.status in (401, 403):
        return f"{cfg.upstream} refused the API key (HTTP {found.status}); pass --api-key"
    if found.status == 404:
        return f"{cfg.upstream} has no deployment {cfg.deployment!r} (HTTP 404); pass --deployment"
    if found.status not in (200, 429):
        return f"{cfg.upstream} answered HTTP {found.status} to a one-token call"
    return None


def arm_row(run: PolicyRun, start: Probe | None) -> dict[str, Any]:
    """One results.json row: the mixed summary plus the batch window's interactive 429s."""
    row = summarise(run, UPPER, None)
    calls, throttled = interactive_in_window(run)
    row.update(
        window_calls=calls,
        window_429_count=throttled,
        window_429=f"{throttled} / {calls}",
        window_429_rate=round(throttled / calls, 4) if calls else None,
        hp_429=f"{row['hp_429']} / {row['hp_calls']}",
        hp_429_count=row["hp_429"],
        remaining_tokens_at_start=None if start is None else start.remaining_tokens,
        remaining_requests_at_start=None if start is None else start.remaining_requests,
    )
    return row


def run_foreign(
    cfg: ForeignConfig, out: Path, sleep: Callable[[float], None] = time.sleep
) -> list[dict[str, Any]]:
    """Run every arm in `cfg.arms` against the running upstream; write the outputs."""
    out.mkdir(parents=True, exist_ok=True)
    hp_calls = interactive_calls(cfg.workload, cfg.capacity, cfg.deployment, cfg.seed)
    lp_calls = batch_calls(cfg.workload, cfg.deployment, cfg.seed)
    table = policies(cfg)
    told = SimulatorOptions(deployment=cfg.deployment, window_s=WINDOW_S, api_key=cfg.api_key)
    rows: list[dict[str, Any]] = []
    runs: list[PolicyRun] = []
    with sigterm_as_interrupt(), Stack(out / "run", told) as stack:
        stack.start_redis()
        stack.use_upstream(cfg.upstream)
        for i, name in enumerate(cfg.arms):
            if i:
                log.info("foreign_drain", seconds=cfg.drain_s)
                sleep(cfg.drain_s)
            policy = table[name]
            prepare(stack, policy)
            start = probe(cfg)
            left = None if start is None else start.remaining_tokens
            log.info("foreign_arm_started", arm=name, remaining_tokens=left)
            run = asyncio.run(
                drive(
                    stack,
                    policy,
                    hp_calls,
                    lp_calls,
                    cfg.workload.duration_s,
                    cfg.grace_s,
                    end_after_batch_s=cfg.end_after_batch_s,
                )
            )
            runs.append(run)
            rows.append(arm_row(run, start))
    _write(cfg, out, rows, runs, len(hp_calls))
    return rows


def _write(
    cfg: ForeignConfig, out: Path, rows: list[dict[str, Any]], runs: list[PolicyRun], n_hp: int
) -> None:
    wl, cap = cfg.workload, cfg.capacity
    hp_rate = cap.rate_for_share(wl.hp_share, wl.hp)
    notes = [
        f"upstream {cfg.upstream}, deployment {cfg.deployment}, {cfg.tpm:,} TPM; the "
        f"orchestrator is told: provisioned, 1 PTU x {cfg.tpm:,} input TPM, output weight 1, "
        f"window {WINDOW_S:g} s, defaults otherwise (thresholds 0.2 / {UPPER:g}), max "
        f"concurrency {cfg.max_concurrency}",
        f"interactive (through the ingress, x-priority high): {hp_rate * 60:.0f} calls/min of "
        f"~{wl.hp.prompt_tokens} prompt + {wl.hp.max_tokens} max_tokens = {wl.hp_share:.0%} of "
        f"the TPM (counted as prompt + max_tokens), planned for {wl.duration_s:g} s ({n_hp} "
        f"calls); each arm ends {cfg.end_after_batch_s:g} s after its batch",
        f"batch: {wl.lp_requests} lines of ~{wl.lp.prompt_tokens} prompt tokens, max_tokens "
        f"{wl.lp.max_tokens}, at {wl.batch_at_s:g} s; direct = {cfg.max_concurrency} lanes "
        "of the openai SDK (default retries), a line whose retries run out is sent again",
        "batch window = from the batch's submission to its last result; interactive 429s "
        "in the window = calls started in it that got 429 from the ingress",
        f"between arms the run waits {cfg.drain_s:g} s for the upstream's window to drain, "
        "then a one-token probe reads the headroom the upstream reports (upstream tokens left "
        "at start; - when it sends no x-ratelimit-remaining-tokens)",
        *(f"{r['policy']}: {r['description']}" for r in rows),
    ]
    title = "bench foreign: the product against an upstream we did not write"
    report.write_results(out, rows, title, notes, TABLE_KEYS)
    report.plot_latency_cdf(runs, out / "latency_cdf.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ptu bench foreign` (besides --out, --quick, --seed)."""
    parser.add_argument("--upstream", required=True, help="URL of the running upstream")
    parser.add_argument("--api-key", default=API_KEY, help=f"its API key (default {API_KEY})")
    parser.add_argument("--deployment", default=DEPLOYMENT, help="its chat deployment")
    parser.add_argument("--tpm", type=int, default=60_000, help="the deployment's tokens/min")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset")
    parser.add_argument("--drain-s", type=float, help="wait between arms (default 65)")
    parser.add_argument("--lp-requests", type=int, help="batch size")
    parser.add_argument("--max-concurrency", type=int, default=20)


def run(args: argparse.Namespace) -> int:
    """Run the scenario from the command line."""
    logs.configure("warning", "console")
    build = quick_config if args.quick else full_config
    cfg = build(args.upstream, args.seed)
    chosen = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    unknown = sorted(set(chosen) - set(ARMS))
    if unknown or not chosen:
        print(f"ptu bench foreign: --arms takes one or more of {', '.join(ARMS)}")
        return 2
    if min(args.tpm, args.max_concurrency, args.lp_requests or 1) <= 0:
        print("ptu bench foreign: --tpm, --max-concurrency and --lp-requests must be positive")
        return 2
    wl = cfg.workload
    if args.lp_requests:
        wl = replace(wl, lp_requests=args.lp_requests)
    cfg = replace(
        cfg,
        workload=wl,
        api_key=args.api_key,
        deployment=args.deployment,
        tpm=args.tpm,
        arms=tuple(a for a in ARMS if a in chosen),
        max_concurrency=args.max_concurrency,
        drain_s=cfg.drain_s if args.drain_s is None else args.drain_s,
    )
    problem = refusal(probe(cfg), cfg)
    if problem is not None:
        print(f"ptu bench foreign: {problem}")
        return 2
    out = Path(args.out)
    rows = run_foreign(cfg, out)
    print(report.markdown_table(rows, TABLE_KEYS))
    print(f"\nwritten: {out / 'results.json'}, {out / 'results.md'}")
    return 0

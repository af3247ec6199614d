"""`ptu bench throttle-curve`: low-priority concurrency at the simulator vs the policy's limit.

A closed-loop high-priority client (labelled `x-ptu-priority: high`, its token
events, with the utilisation header, recorded in the Redis estimate the way the
ingress records them) holds
the simulator's true utilisation near each target. Real `ptu worker` processes
drain a deep backlog with the `estimate` source. At each point the table gives
the limit the policy allows at the measured utilisation and what the simulator
saw: the peak and mean low-priority calls in flight. A last phase jumps the
high-priority load from the lowest target past the upper threshold and measures
how long new low-priority calls kept arriving at the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx2
import redis.asyncio as aioredis

from bench.harness.sampler import Sample, Sampler
from bench.harness.stack import API_KEY, SimulatorOptions, Stack, sigterm_as_interrupt
from bench.report.tables import markdown_table
from orchestrator.calls.signals import UTILISATION_HEADER, parse_utilisation
from orchestrator.core import keys, logs
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import QueuedRequest, TokenEvent
from orchestrator.core.settings import DeploymentConfig
from orchestrator.core.tokens import estimate_prompt_tokens
from orchestrator.queues.redis_streams import RedisStreamsQueue
from orchestrator.throttle.policy import concurrency_limit
from orchestrator.utilisation.estimate.store import EstimateStore

DEPLOYMENT = "ptu-curve"
API_VERSION = "2024-10-21"
HP_MESSAGES = [{"role": "user", "content": "Answer the customer's question politely."}]
LP_MESSAGES = [{"role": "user", "content": "Classify this ticket."}]


@dataclass(frozen=True, slots=True)
class CurveConfig:
    """One run of the scenario."""

    targets: tuple[float, ...] = (0.10, 0.50, 0.80, 0.95)
    settle_s: float = 4.0
    measure_s: float = 6.0
    burst_target: float = 0.97
    burst_observe_s: float = 3.0
    lower: float = 0.20
    upper: float = 0.90
    max_concurrency: int = 10
    workers: int = 1
    backlog: int = 2_500
    model: str = "gpt-4o"
    ptus: int = 15
    window_s: float = 10.0
    ttft_ms: float = 800.0
    hp_max_tokens: int = 40
    sample_s: float = 0.05


QUICK = CurveConfig(settle_s=2.0, measure_s=2.5, burst_observe_s=2.0, backlog=1_200)


class HighLoad:
    """Closed-loop high-priority client holding the true utilisation near `target`."""

    def __init__(
        self,
        client: httpx2.AsyncClient,
        sim_url: str,
        store: EstimateStore,
        cfg: CurveConfig,
        capacity_tokens: float,
    ) -> None:
        self.client, self.sim_url, self.store, self.cfg = client, sim_url, store, cfg
        self.target = 0.0
        self.capacity_tokens = capacity_tokens
        prompt = estimate_prompt_tokens({"messages": HP_MESSAGES})
        self.charge = prompt + cfg.hp_max_tokens * 3.0  # gpt-4o output weight
        self.recent: list[tuple[float, float]] = []  # (sent at, utilisation share)
        self.tasks: set[asyncio.Task[None]] = set()
        self.sent = self.throttled = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Top the bucket up to the target every 25 ms; heartbeat the estimate as its feeder."""
        last_beat = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now - last_beat >= 0.5:
                await self.store.heartbeat()
                last_beat = now
            state = (await self.client.get(f"{self.sim_url}/sim/state")).json()
            u = float(state["deployments"][DEPLOYMENT]["utilization"])
            # calls sent in the last 150 ms may not be admitted yet: count them as in
            self.recent = [(t, s) for t, s in self.recent if now - t < 0.15]
            deficit = self.target - u - sum(s for _, s in self.recent)
            share = self.charge / self.capacity_tokens
            for _ in range(min(64, max(0, math.ceil(deficit / share)))):
                self.recent.append((now, share))
                task = asyncio.create_task(self._call())
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            await asyncio.sleep(0.025)
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _call(self) -> None:
        rid = f"hp-{uuid.uuid4().hex[:12]}"
        body = {"messages": HP_MESSAGES, "max_tokens": self.cfg.hp_max_tokens}
        prompt = estimate_prompt_tokens(body)
        await self.store.record(_event(rid, "admit", prompt, self.cfg.hp_max_tokens))
        self.sent += 1
        usage: dict[str, Any] = {}
        utilisation: float | None = None
        try:
            response = await self.client.post(
                f"{self.sim_url}/openai/deployments/{DEPLOYMENT}/chat/completions",
                params={"api-version": API_VERSION},
                json=body,
                headers={
                    "api-key": API_KEY,
                    "x-ptu-priority": "high",
                    "x-sim-completion-tokens": str(self.cfg.hp_max_tokens),
                },
            )
            # the header the ingress would record with the event
            utilisation = parse_utilisation(response.headers.get(UTILISATION_HEADER))
            if response.status_code == 200:
                usage = response.json().get("usage") or {}
            elif response.status_code == 429:
                self.throttled += 1
        finally:
            prompt_used = int(usage.get("prompt_tokens", 0))
            done = _event(rid, "complete", prompt_used, self.cfg.hp_max_tokens)
            done.completion_tokens = int(usage.get("completion_tokens", 0))
            done.utilisation = utilisation
            await self.store.record(done)


def _event(rid: str, phase: str, prompt: int, max_tokens: int) -> TokenEvent:
    return TokenEvent.model_validate(
        {"request_id": rid, "deployment": DEPLOYMENT, "phase": phase, "timestamp": time.time(),
         "prompt_tokens": prompt, "max_tokens": max_tokens}
    )  # fmt: skip


async def enqueue_backlog(redis_url: str, n: int) -> None:
    """Queue `n` cheap low-priority requests (max_tokens 1) straight into the stream."""
    redis = aioredis.Redis.from_url(redis_url)
    queue, results = RedisStreamsQueue(redis, DEPLOYMENT, "bench"), ResultStore(redis, 3600)
    now = time.time()
    for i in range(n):
        rid = f"lp-{i:05d}-{uuid.uuid4().hex[:6]}"
        message = QueuedRequest(
            id=rid, deployment=DEPLOYMENT, body={"messages": LP_MESSAGES, "max_tokens": 1},
            reply_key=keys.reply(rid), enqueued_at=now, deadline=now + 3600,
        )  # fmt: skip
        await results.register(message)
        await queue.put(message)
    await redis.aclose()


def point_row(
    target: float, window: list[Sample], estimates: list[float], cfg: CurveConfig
) -> dict[str, Any]:
    """One table row: measured utilisation, the policy's limit there, what the simulator saw."""
    utils = [s.utilization for s in window]
    mean_u = statistics.fmean(utils)

    def limit(u: float) -> int:
        return concurrency_limit(u, cfg.lower, cfg.upper, cfg.max_concurrency)

    return {
        "target": target,
        "util_mean": round(mean_u, 3),
        "util_min": round(min(utils), 3),
        "util_max": round(max(utils), 3),
        "estimate_mean": round(statistics.fmean(estimates), 3) if estimates else None,
        "expected_limit": limit(mean_u),
        "expected_range": f"{limit(max(utils))}-{limit(min(utils))}",
        "observed_peak": max(s.low_peak for s in window),
        "observed_mean": round(statistics.fmean(s.low_in_flight for s in window), 2),
        "low_429": window[-1].low_throttled - window[0].low_throttled,
    }


async def measure(stack: Stack, cfg: CurveConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Drive every target and the burst; return the table rows and the burst figures."""
    dep = DeploymentConfig(name=DEPLOYMENT, model=cfg.model, ptus=cfg.ptus)
    redis = aioredis.Redis.from_url(stack.redis_url)
    store = EstimateStore(redis, [dep], window_s=cfg.window_s, max_age_s=5.0)
    rows: list[dict[str, Any]] = []
    async with httpx2.AsyncClient(timeout=30, limits=httpx2.Limits(max_connections=200)) as client:
        load = HighLoad(client, stack.sim_url, store, cfg, dep.capacity_tpm / 60 * cfg.window_s)
        stop = asyncio.Event()
        driver = asyncio.create_task(load.run(stop))
        sampler = Sampler(client, stack.sim_url, DEPLOYMENT, time.time(), cfg.sample_s)
        sampler.start()
        try:
            for target in cfg.targets:
                load.target = target
                await asyncio.sleep(cfg.settle_s)
                first, estimates = len(sampler.samples), []
                end = time.monotonic() + cfg.measure_s
                while time.monotonic() < end:
                    estimates.append((await store.read(DEPLOYMENT)).value)
                    await asyncio.sleep(0.1)
                rows.append(point_row(target, sampler.samples[first:], estimates, cfg))
            burst = await _burst(load, sampler, store, cfg)
        finally:
            stop.set()
            await driver
            await sampler.stop()
            await redis.aclose()
    burst.update(hp_calls=load.sent, hp_429=load.throttled)
    return rows, burst


async def _burst(
    load: HighLoad, sampler: Sampler, store: EstimateStore, cfg: CurveConfig
) -> dict[str, Any]:
    """From the lowest target, jump past `upper`: how long do new low-priority calls still start?"""
    load.target = min(cfg.targets)
    await asyncio.sleep(cfg.settle_s)
    first = len(sampler.samples)
    t_burst = time.time() - sampler.t0
    load.target = cfg.burst_target
    crossed: float | None = None
    end = time.monotonic() + cfg.burst_observe_s
    while time.monotonic() < end:
        if crossed is None and (await store.read(DEPLOYMENT)).value >= cfg.upper:
            crossed = time.time() - sampler.t0 - t_burst
        await asyncio.sleep(0.01)
    window = sampler.samples[max(0, first - 1) :]
    last_start = max(
        (b.t for a, b in itertools.pairwise(window) if b.low_requests > a.low_requests),
        default=t_burst,
    )
    after = [s for s in window if s.t >= t_burst + 0.5]
    at_burst = [s.low_requests for s in window if s.t <= t_burst] or [window[0].low_requests]
    return {
        "burst_target": cfg.burst_target,
        "estimate_crossed_upper_s": None if crossed is None else round(crossed, 3),
        "last_low_start_after_burst_s": round(max(0.0, last_start - t_burst), 3),
        "low_starts_after_burst": window[-1].low_requests - at_burst[-1],
        "sample_interval_s": cfg.sample_s,
        "util_after_burst": _mean([s.utilization for s in after]),
        "low_in_flight_at_end": window[-1].low_in_flight if window else None,
    }


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def run_curve(cfg: CurveConfig, out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Start the stack, run the measurement, write results.json and results.md."""
    sim = SimulatorOptions(
        deployment=DEPLOYMENT, model=cfg.model, ptus=cfg.ptus, window_s=cfg.window_s,
        tbt_ms=0.0, ttft_ms=cfg.ttft_ms, monitor_lag_s=60.0,
    )  # fmt: skip
    with sigterm_as_interrupt(), Stack(out / "run", sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        asyncio.run(enqueue_backlog(stack.redis_url, cfg.backlog))
        env = stack.base_env(
            PTU_LOWER_THRESHOLD=str(cfg.lower),
            PTU_UPPER_THRESHOLD=str(cfg.upper),
            PTU_MAX_CONCURRENCY=str(cfg.max_concurrency),
            PTU_SLOT_LEASE_S="10",
        )
        for n in range(cfg.workers):
            stack.start_worker(env, name=f"worker-{n + 1}")
        rows, burst = asyncio.run(measure(stack, cfg))
        stack.check_alive()
    write(out, rows, burst, cfg)
    return rows, burst


COLUMNS = (
    "target", "util_mean", "util_min", "util_max", "estimate_mean", "expected_limit",
    "expected_range", "observed_peak", "observed_mean", "low_429",
)  # fmt: skip


def write(out: Path, rows: list[dict[str, Any]], burst: dict[str, Any], cfg: CurveConfig) -> None:
    """results.json (config, rows, burst) and results.md."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {"config": asdict(cfg), "points": rows, "burst": burst}
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# bench throttle-curve",
        "",
        f"{cfg.workers} worker process(es), estimate source, lower {cfg.lower}, upper "
        f"{cfg.upper}, max concurrency {cfg.max_concurrency}; simulator {cfg.model} "
        f"{cfg.ptus} PTU, window {cfg.window_s:g} s, TTFT {cfg.ttft_ms:g} ms.",
        "",
        markdown_table(rows, COLUMNS),
        "",
        "- expected_limit: the policy's limit at the mean true utilisation of the window; "
        "expected_range: the limit at the window's highest and lowest utilisation",
        "- observed_peak / observed_mean: low-priority calls in flight at the simulator "
        f"(peak per {cfg.sample_s:g} s sample, `/sim/state?reset_peaks=1`)",
        f"- burst from {min(cfg.targets):.0%} to {burst['burst_target']:.0%}: the estimate "
        f"crossed the upper threshold after {burst['estimate_crossed_upper_s']} s; the last "
        f"new low-priority call reached the simulator {burst['last_low_start_after_burst_s']} s "
        f"after the burst began (sampling every {cfg.sample_s:g} s; "
        f"{burst['low_starts_after_burst']} low-priority calls started after it)",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--workers N` worker processes sharing the limit."""
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")


def run(args: argparse.Namespace) -> int:
    """Run the scenario from the command line."""
    logs.configure("warning", "console")
    cfg = replace(QUICK if args.quick else CurveConfig(), workers=args.workers)
    run_curve(cfg, Path(args.out))
    print(Path(args.out, "results.md").read_text())
    return 0

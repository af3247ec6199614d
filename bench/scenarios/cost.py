"""`ptu bench cost`: what one request costs the gateway, counted before anything is cut.

Against an instant upstream (the simulator with TTFT and TBT 0 and 1,000 PTU, so it never
throttles), one stack, one run, in phases; during each phase the stack's Redis serves only
the processes under test, and a reading (`INFO commandstats`, `INFO cpu`, /proc CPU of the
process) is taken before and after it:

1. High priority: for each concurrency (1, 32, 128), closed-loop clients straight to the
   simulator (the limit of this client on this machine), then the same clients through
   one ingress process: requests/s, and per request the Redis commands by name, Redis CPU
   and the ingress's CPU (the phase ends once the ingress is idle again, its background
   token events included), and the Redis calls it went on without (`fail_opens`: a write
   given up on costs no command, so a count that is not 0 flatters the commands).
2. Enqueue: low-priority POSTs answered 202 by the same ingress, per enqueue.
3. Scale-out of the ingress (`cost_scale`): one process at the highest concurrency, then
   `ptu ingress --workers 2` at the same (the ingress stops after it).
4. Low priority: `ptu estimator` (which keeps the estimate fresh, as the ingress did) and
   one `ptu worker` draining the queue from step 2: calls/s, and per call the Redis
   commands, Redis CPU and the worker's CPU.
5. Scale-out of the workers (`cost_scale`): 1, 2 and 4 worker processes, each count
   draining its share of a queue filled through the ingress beforehand.

The idle rate of each set of processes (commands per second with nothing to do: heartbeats,
sweeps) is read first and shown beside; it is spread over the requests, not subtracted.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx2
import redis.asyncio as aioredis

from bench.harness.runner import Policy, prepare
from bench.harness.stack import Stack, sigterm_as_interrupt
from bench.harness.traffic import chat_url
from bench.scenarios import cost_report
from bench.scenarios.cost_measures import Reading, command_delta, per_request, targets
from bench.scenarios.cost_probe import Meter, closed_loop, fail_opens, low_calls, wait_for_calls
from bench.scenarios.cost_scale import ingress_scale, worker_scale
from bench.scenarios.overhead import (
    BODY,
    DIRECT_HEADERS,
    instant_upstream,
    measure_enqueue,
    results_written,
)
from bench.scenarios.waiting_probe import settled
from orchestrator.core import logs

HIGH = {"x-priority": "high"}
IDLE_S = 2.0
"""Seconds each set of processes is watched with nothing to do."""
SETTLE_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class CostConfig:
    """Sizes of the phases."""

    concurrencies: tuple[int, ...] = (1, 32, 128)
    step_s: float = 10.0
    """Seconds of closed-loop load per concurrency and arm."""
    enqueue_requests: int = 3000
    enqueue_concurrency: int = 32
    worker_concurrency: int = 64
    """`PTU_MAX_CONCURRENCY` of the worker."""
    worker_timeout_s: float = 120.0
    scale_calls: int = 2000
    """Calls each count of workers drains in the scale-out phase."""
    worker_counts: tuple[int, ...] = (1, 2, 4)


QUICK = CostConfig(step_s=2.0, enqueue_requests=400, worker_timeout_s=60.0, scale_calls=400)
SLACK = 200
"""Messages queued beyond the scale-out phase's calls (calls in flight when a count stops)."""


async def measure_high(stack: Stack, meter: Meter, cfg: CostConfig) -> list[dict[str, Any]]:
    """Per concurrency: direct requests/s, then through the ingress with its cost."""
    pid = stack.children["ingress"].proc.pid
    direct_url = chat_url(stack.sim_url, stack.sim.deployment)
    ingress_url = chat_url(stack.ingress_url, stack.sim.deployment)

    def read() -> Reading:
        return meter.read({"ingress": pid})

    rows = []
    for c in cfg.concurrencies:
        direct = await closed_loop(direct_url, DIRECT_HEADERS, BODY, c, cfg.step_s)
        opened = await fail_opens(stack.ingress_url)
        via = await closed_loop(ingress_url, HIGH, BODY, c, cfg.step_s, read)
        await settled(pid, SETTLE_TIMEOUT_S)
        # the metrics request itself costs no Redis command
        skipped = await fail_opens(stack.ingress_url) - opened
        assert via.start is not None
        cost = per_request(via.start, read(), via.ok, "ingress")
        rows.append(
            {
                "measure": "high-priority request",
                "concurrency": c,
                "per_s": via.per_s,
                "errors": via.errors,
                "direct_per_s": direct.per_s,
                "direct_errors": direct.errors,
                "fail_opens": skipped,
                **cost,
            }
        )
    return rows


async def measure_enqueues(
    stack: Stack, meter: Meter, cfg: CostConfig
) -> tuple[dict[str, Any], list[str]]:
    """Low-priority POSTs through the same ingress, with the cost of each 202."""
    pid = stack.children["ingress"].proc.pid
    before = meter.read({"ingress": pid})
    rate, ids = await measure_enqueue(stack, cfg.enqueue_requests, cfg.enqueue_concurrency)
    await settled(pid, SETTLE_TIMEOUT_S)
    cost = per_request(before, meter.read({"ingress": pid}), len(ids), "ingress")
    row = {
        "measure": "enqueue (202)",
        "concurrency": cfg.enqueue_concurrency,
        "per_s": rate["enqueue_per_s"],
        "errors": cfg.enqueue_requests - len(ids),
        **cost,
    }
    return row, ids


async def measure_worker(
    stack: Stack, meter: Meter, ids: list[str], cfg: CostConfig
) -> dict[str, Any]:
    """One worker draining the queue: calls/s and the cost of each call, counted by the
    simulator (the worker may have made a few calls before the first reading)."""
    pid = stack.children["worker"].proc.pid
    async with httpx2.AsyncClient(timeout=5.0) as client:
        first = await low_calls(client, stack.sim_url, stack.sim.deployment)
    before = meter.read({"worker": pid})
    seen, drained_at = await wait_for_calls(
        stack.sim_url, stack.sim.deployment, len(ids), cfg.worker_timeout_s
    )
    await settled(pid, SETTLE_TIMEOUT_S)
    after = meter.read({"worker": pid})
    calls = seen - first
    elapsed = drained_at - before.at
    store = aioredis.Redis.from_url(stack.redis_url)
    try:
        written = await results_written(store, ids)  # after the last reading
    finally:
        await store.aclose()
    return {
        "measure": "low-priority call",
        "concurrency": cfg.worker_concurrency,
        "per_s": round(calls / elapsed, 1) if elapsed > 0 else None,
        "errors": len(ids) - written,
        **per_request(before, after, calls, "worker"),
        "queued": len(ids),
        "results_written": written,
    }


async def idle_rate(meter: Meter, pids: dict[str, int], label: str) -> dict[str, Any]:
    """Redis commands and CPU ms per second of `label`'s processes (and Redis's own CPU)
    with nothing to do, once they are done starting."""
    for pid in pids.values():
        await settled(pid, SETTLE_TIMEOUT_S)
    before = meter.read(pids)
    await asyncio.sleep(IDLE_S)
    after = meter.read(pids)
    delta = command_delta(before.commands, after.commands)
    seconds = after.at - before.at
    cpu_s = sum(after.process_cpu_s[name] - before.process_cpu_s[name] for name in pids)
    return {
        "processes": label,
        "commands_per_s": round(sum(delta.values()) / seconds, 1),
        "process_cpu_ms_per_s": round(cpu_s * 1000.0 / seconds, 1),
        "redis_cpu_ms_per_s": round((after.redis_cpu_s - before.redis_cpu_s) * 1000 / seconds, 1),
        "commands": {name: round(n / seconds, 2) for name, n in delta.items()},
    }


def run_cost(cfg: CostConfig, out: Path) -> dict[str, Any]:
    """Run the three phases; write results.json, results.md and the plot."""
    out.mkdir(parents=True, exist_ok=True)
    env = {"PTU_MAX_CONCURRENCY": str(cfg.worker_concurrency), "PTU_ESTIMATE_WINDOW_S": "60"}
    started = time.monotonic()
    with sigterm_as_interrupt(), Stack(out / "run", instant_upstream()) as stack:
        stack.start_redis()
        stack.start_simulator()
        prepare(stack, Policy("cost", "ingress only", "none", env))
        meter = Meter(stack.redis_url)
        try:
            first = {"ingress": stack.children["ingress"].proc.pid}
            idle = [asyncio.run(idle_rate(meter, first, "ingress"))]
            high = asyncio.run(measure_high(stack, meter, cfg))
            enqueue, ids = asyncio.run(measure_enqueues(stack, meter, cfg))
            # one process at saturation beside `--workers 2` (the ingress stops after it)
            ingress = ingress_scale(stack, env, max(cfg.concurrencies), cfg.step_s)
            stack.start_estimator(stack.base_env(**env))
            estimator = {"estimator": stack.children["estimator"].proc.pid}
            idle.append(asyncio.run(idle_rate(meter, estimator, "estimator")))
            stack.start_worker(stack.base_env(**env))
            low = asyncio.run(measure_worker(stack, meter, ids, cfg))
            stack.stop("worker")
            stack.start_ingress(stack.base_env(**env))
            queued = len(cfg.worker_counts) * cfg.scale_calls + SLACK
            asyncio.run(measure_enqueue(stack, queued, cfg.enqueue_concurrency))
            stack.stop("ingress")
            workers = worker_scale(
                stack, env, cfg.worker_counts, cfg.scale_calls, cfg.worker_timeout_s
            )
        finally:
            meter.close()
    result = {
        "scenario": "cost",
        "config": {
            "concurrencies": list(cfg.concurrencies),
            "step_s": cfg.step_s,
            "enqueue_requests": cfg.enqueue_requests,
            "enqueue_concurrency": cfg.enqueue_concurrency,
            "worker_concurrency": cfg.worker_concurrency,
            "scale_calls": cfg.scale_calls,
            "worker_counts": list(cfg.worker_counts),
        },
        "rows": [*high, enqueue, low],
        "idle": idle,
        "ingress_scale": ingress,
        "worker_scale": workers,
        "targets": targets(high, low, ingress.get("ratio")),
        "run_s": round(time.monotonic() - started, 1),
    }
    cost_report.write(result, out)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Scenario flags (bench.cli adds --out, --quick and --seed)."""
    parser.add_argument(
        "--concurrency",
        default=None,
        help="closed-loop high-priority clients, comma-separated (default 1,32,128)",
    )
    parser.add_argument(
        "--step-s", type=float, default=None, help="seconds per concurrency and arm (10; 2 quick)"
    )


def config_of(args: argparse.Namespace) -> CostConfig:
    """The configuration of the command line; one clear error for a bad flag."""
    cfg = QUICK if args.quick else CostConfig()
    if args.concurrency is not None:
        try:
            levels = tuple(int(part) for part in str(args.concurrency).split(","))
        except ValueError:
            raise SystemExit(
                "ptu bench cost: --concurrency takes integers, e.g. 1,32,128"
            ) from None
        if not levels or min(levels) < 1:
            raise SystemExit("ptu bench cost: --concurrency levels must be positive")
        cfg = replace(cfg, concurrencies=tuple(sorted(set(levels))))
    if args.step_s is not None:
        if args.step_s <= 0:
            raise SystemExit("ptu bench cost: --step-s must be positive")
        cfg = replace(cfg, step_s=args.step_s)
    return cfg


def run(args: argparse.Namespace) -> int:
    """Run the scenario from the command line."""
    logs.configure("warning", "console")
    result = run_cost(config_of(args), Path(args.out))
    print(Path(args.out, "results.md").read_text())
    low = result["rows"][-1]
    return 0 if low["results_written"] == low["queued"] else 1

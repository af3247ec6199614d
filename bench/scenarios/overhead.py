"""`ptu bench overhead`: what the ingress and the worker cost, against an instant upstream.

1. Added latency of the ingress on the high-priority non-streaming path: the
   same call in turn straight to the simulator, through the ingress, and through
   a second ingress where the caller is a tenant with a tokens-per-minute limit
   (`PTU_TENANTS`, `PTU_API_KEYS`: every request checked against the limit, every
   answer recorded in the usage ledger), one at a time, in one run (so all three
   see the same machine load), each arm first in turn.
2. Enqueue requests per second one ingress process sustains (`x-priority: low`,
   a fixed number of concurrent clients).
3. Results per second one worker dispatches: the queue from step 2 drained by a
   single `ptu worker` against the instant upstream.

The simulator runs with `--tbt-ms 0 --ttft-ms 0` and a capacity large enough
that it never throttles, so every millisecond measured is ours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import redis.asyncio as aioredis

from bench.harness.runner import Policy, prepare
from bench.harness.stack import API_KEY, SimulatorOptions, Stack, sigterm_as_interrupt
from bench.harness.traffic import chat_url
from bench.report import tables as report
from bench.report.metrics import percentile
from orchestrator.core import keys, logs

BODY: dict[str, Any] = {
    "model": "gpt-4o-mini-ptu",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 16,
}


@dataclass(frozen=True, slots=True)
class OverheadConfig:
    """Sizes of the three measurements."""

    latency_pairs: int = 2000
    enqueue_requests: int = 3000
    enqueue_concurrency: int = 32
    worker_concurrency: int = 64
    worker_timeout_s: float = 180.0


QUICK = OverheadConfig(latency_pairs=300, enqueue_requests=400, worker_timeout_s=60.0)


def instant_upstream() -> SimulatorOptions:
    """The simulator with no latency and a capacity it never reaches."""
    # 1,000 PTU of gpt-4o-mini drain 616k tokens/s: the bucket never fills here
    return SimulatorOptions(ptus=1000, tbt_ms=0.0, ttft_ms=0.0, window_s=60.0)


DIRECT_HEADERS = {"api-key": API_KEY, "x-ptu-priority": "high"}
"""A high-priority call straight to the simulator, tagged as the ingress would tag it."""

TENANT_KEY = "bench-tenant-key"
TENANTS = [{"name": "metered", "tokens_per_minute": 1_000_000_000}]
"""The limited tenant of the third arm: a limit checked on every request, never reached."""


def tenant_env() -> dict[str, str]:
    """PTU_* settings of the ingress whose caller is a tenant with a per-minute limit."""
    return {"PTU_TENANTS": json.dumps(TENANTS), "PTU_API_KEYS": json.dumps({TENANT_KEY: "metered"})}


async def measure_latency(
    stack: Stack, pairs: int, tenant_url: str | None = None
) -> tuple[dict[str, Any], list[float], list[float], list[float]]:
    """Interleaved direct / via-ingress (/ via the tenant ingress) calls; p50 and p99 of
    each and of the difference to direct."""
    direct_url = chat_url(stack.sim_url, stack.sim.deployment)
    ingress_url = chat_url(stack.ingress_url, stack.sim.deployment)
    direct: list[float] = []
    via: list[float] = []
    limited: list[float] = []
    arms = [(direct_url, DIRECT_HEADERS, direct), (ingress_url, {"x-priority": "high"}, via)]
    if tenant_url is not None:
        url = chat_url(tenant_url, stack.sim.deployment)
        arms.append((url, {"x-priority": "high", "api-key": TENANT_KEY}, limited))
    async with httpx2.AsyncClient(timeout=30.0) as client:
        for i in range(pairs + 20):
            # each arm in turn goes first, so none always follows another
            turn = i % len(arms)
            for url, headers, sink in arms[turn:] + arms[:turn]:
                started = time.perf_counter()
                response = await client.post(url, json=BODY, headers=headers)
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                if i >= 20:  # the first calls warm up connections and code paths
                    sink.append(elapsed * 1000.0)
    d50, d99 = percentile(direct, 50), percentile(direct, 99)
    v50, v99 = percentile(via, 50), percentile(via, 99)
    assert d50 is not None and d99 is not None and v50 is not None and v99 is not None
    row: dict[str, Any] = {
        "calls_each": len(direct),
        "direct_p50_ms": round(d50, 2),
        "direct_p99_ms": round(d99, 2),
        "ingress_p50_ms": round(v50, 2),
        "ingress_p99_ms": round(v99, 2),
        "added_p50_ms": round(v50 - d50, 2),
        "added_p99_ms": round(v99 - d99, 2),
        "ratio_p50": round(v50 / d50, 2),
        "ratio_p99": round(v99 / d99, 2),
    }
    t50, t99 = percentile(limited, 50), percentile(limited, 99)
    if t50 is not None and t99 is not None:
        row["tenant_p50_ms"] = round(t50, 2)
        row["tenant_p99_ms"] = round(t99, 2)
        row["tenant_added_p50_ms"] = round(t50 - d50, 2)
        row["tenant_added_p99_ms"] = round(t99 - d99, 2)
        # the tenant limit's cost: its added p50 over the plain ingress's added p50
        row["tenant_vs_plain_added_p50"] = (
            round((t50 - d50) / (v50 - d50), 2) if v50 > d50 else None
        )
    return row, direct, via, limited


async def measure_enqueue(
    stack: Stack, n: int, concurrency: int
) -> tuple[dict[str, Any], list[str]]:
    """`n` low-priority submissions from `concurrency` clients; accepted per second."""
    url = chat_url(stack.ingress_url, stack.sim.deployment)
    ids: list[str] = []
    todo = iter(range(n))
    limits = httpx2.Limits(max_connections=concurrency)

    async def client_loop(client: httpx2.AsyncClient) -> None:
        for _ in todo:
            response = await client.post(url, json=BODY, headers={"x-priority": "low"})
            if response.status_code == 202:
                ids.append(str(response.json()["id"]))

    async with httpx2.AsyncClient(timeout=30.0, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "enqueue_requests": n,
        "enqueue_accepted": len(ids),
        "enqueue_concurrency": concurrency,
        "enqueue_per_s": round(len(ids) / elapsed, 1),
    }, ids


async def results_written(client: aioredis.Redis, ids: Sequence[str]) -> int:
    """How many of the requests `ids` have their result document."""
    async with client.pipeline(transaction=False) as pipe:
        for rid in ids:
            pipe.exists(keys.result(rid))
        return sum(await pipe.execute())


async def measure_dispatch(stack: Stack, ids: list[str], timeout_s: float) -> dict[str, Any]:
    """Seconds from the worker's first call until every queued request has its result."""
    client = aioredis.Redis.from_url(stack.redis_url)
    sim = httpx2.AsyncClient(timeout=5.0)
    try:
        first: float | None = None
        deadline = time.perf_counter() + timeout_s
        done = 0
        while time.perf_counter() < deadline:
            if first is None:
                state = (await sim.get(f"{stack.sim_url}/sim/state")).json()
                if state["deployments"][stack.sim.deployment]["by_priority"].get("low"):
                    first = time.perf_counter()
            done = await results_written(client, ids)
            if done >= len(ids):
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - (first or deadline)
    finally:
        await client.aclose()
        await sim.aclose()
    return {
        "worker_results": done,
        "worker_results_per_s": round(done / elapsed, 1) if elapsed > 0 else None,
    }


def run_overhead(cfg: OverheadConfig, out: Path) -> dict[str, Any]:
    """Run the three measurements; write results.json, results.md and a latency plot."""
    out.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {"scenario": "overhead"}
    worker_env = {
        "PTU_MAX_CONCURRENCY": str(cfg.worker_concurrency),
        "PTU_ESTIMATE_WINDOW_S": "60",
    }
    with sigterm_as_interrupt(), Stack(out / "run", instant_upstream()) as stack:
        stack.start_redis()
        stack.start_simulator()
        prepare(stack, Policy("overhead", "ingress only", "none", worker_env))
        tenant_url = stack.start_ingress(stack.base_env(**worker_env, **tenant_env()), "tenants")
        latency, direct, via, limited = asyncio.run(
            measure_latency(stack, cfg.latency_pairs, tenant_url)
        )
        stack.stop("tenants")
        row.update(latency)
        enqueue, ids = asyncio.run(
            measure_enqueue(stack, cfg.enqueue_requests, cfg.enqueue_concurrency)
        )
        row.update(enqueue)
        env = stack.base_env(**worker_env)
        stack.start_estimator(env)
        stack.start_worker(env)
        row.update(asyncio.run(measure_dispatch(stack, ids, cfg.worker_timeout_s)))
    _write(row, out)
    report.plot_cdfs(
        {
            "direct to the deployment": direct,
            "through the ingress": via,
            "through the ingress, tenant with a limit": limited,
        },
        out / "latency_cdf.png",
        "high-priority latency ms, instant upstream",
    )
    return row


def _write(row: dict[str, Any], out: Path) -> None:
    keys_shown = [
        "direct_p50_ms", "direct_p99_ms", "ingress_p50_ms", "ingress_p99_ms",
        "added_p50_ms", "added_p99_ms", "ratio_p50", "ratio_p99",
        "enqueue_per_s", "worker_results_per_s",
    ]  # fmt: skip
    tenant_keys = [
        "ingress_p50_ms", "ingress_p99_ms", "added_p50_ms", "added_p99_ms",
        "tenant_p50_ms", "tenant_p99_ms", "tenant_added_p50_ms", "tenant_added_p99_ms",
        "tenant_vs_plain_added_p50",
    ]  # fmt: skip
    (out / "results.json").write_text(json.dumps([row], indent=2) + "\n")
    lines = [
        "# bench overhead",
        "",
        report.markdown_table([row], keys_shown),
        "",
        f"- latency: {row.get('calls_each')} interleaved non-streaming calls each way, "
        "one at a time, instant upstream (TTFT 0, TBT 0)",
        f"- enqueue: {row.get('enqueue_requests')} low-priority submissions from "
        f"{row.get('enqueue_concurrency')} concurrent clients to one ingress process",
        "- dispatch: one worker draining that queue against the instant upstream, "
        "from its first call to the last result",
        "",
        "Tenant limits, side by side in the same latency run: a second ingress whose caller "
        "is a tenant with a tokens-per-minute limit (checked on every request, never reached):",
        "",
        report.markdown_table([row], [k for k in tenant_keys if k in row]),
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No flags besides --out, --quick and --seed."""


def run(args: argparse.Namespace) -> int:
    """Run the scenario from the command line."""
    logs.configure("warning", "console")
    row = run_overhead(QUICK if args.quick else OverheadConfig(), Path(args.out))
    print(Path(args.out, "results.md").read_text())
    return 0 if row.get("worker_results") == row.get("enqueue_accepted") else 1

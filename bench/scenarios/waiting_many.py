"""Part 2 of `ptu bench waiting`: many waiting calls held by one ingress process.

A fresh stack against a cheap upstream (the simulator with 1,000 PTU, TTFT 5 ms, TBT
1 ms: it never throttles and a call lasts milliseconds), one ingress and no worker yet.
Interactive calls go through the ingress at a steady rate all along, labelled by phase:

1. `before`: the ingress alone;
2. `enqueue`: `waiters` concurrent calls `Prefer: wait=N` (one connection each) are
   sent, until every one is queued (the tenant's stream holds them all);
3. `held`: all of them are held at once for `phase_s`; the Redis clients connected from
   the ingress are counted here (`CLIENT LIST`);
4. `draining`: the estimator and one worker start and drain the queue; each held call
   is answered as its result is written;
5. `after`: the ingress alone again.

Measured: each call's answer by request id (`x-ptu-request-id`; a 202 carries its id in
`Location`), the reply list of every id in Redis (exactly one result each), the
upstream's low-priority call count, the ingress's RSS (`VmRSS` of its process, sampled
every 0.5 s: growth is the peak over the value before the waiters) and its Redis
connections (its established TCP connections to the Redis port, from /proc, against its
pool size `ingress.wiring.REDIS_MAX_CONNECTIONS`), and the interactive p99 while the
calls are held over the p99 without them (`before` and `after` together).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx2
import redis.asyncio as aioredis

from bench.harness.runner import Policy, prepare
from bench.harness.stack import DEPLOYMENT, SimulatorOptions, Stack
from bench.harness.traffic import chat_url
from bench.report.metrics import percentile
from bench.scenarios.waiting_measures import (
    local_ports_to,
    ratio,
    redis_clients,
    reply_counts,
    socket_inodes,
    status_kb,
    tally,
    target_row,
)
from bench.scenarios.waiting_report import PHASES
from ingress.wiring import REDIS_MAX_CONNECTIONS
from orchestrator.core import keys
from orchestrator.tenants.config import DEFAULT_TENANT

SIM = SimulatorOptions(ptus=1000, tbt_ms=1.0, ttft_ms=5.0, window_s=60.0)
HP_BODY: dict[str, Any] = {
    "model": DEPLOYMENT,
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 16,
}
WAITER_BODY: dict[str, Any] = {**HP_BODY, "max_tokens": 8}


@dataclass(frozen=True, slots=True)
class ManyConfig:
    """Sizes of part 2."""

    waiters: int = 2000
    wait_s: int = 300
    """More than the drain takes: a call answered 202 is reported, not lost."""
    hp_per_s: float = 20.0
    phase_s: float = 20.0
    worker_concurrency: int = 64
    drain_timeout_s: float = 240.0


QUICK = ManyConfig(waiters=200, phase_s=8.0, drain_timeout_s=90.0)


def raise_open_files(waiters: int) -> None:
    """Raise this process's soft open-files limit (the stack's processes inherit it) to
    what `waiters` connections on both ends need; one clear error when the hard limit
    is lower."""
    need = 2 * waiters + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(
                f"ptu bench waiting: {waiters} waiters need {need} open files, "
                f"the hard limit is {hard} (ulimit -Hn)"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def rss_kb(pid: int) -> int:
    """The process's resident set size now."""
    return status_kb(Path(f"/proc/{pid}/status").read_text(), "VmRSS") or 0


def redis_ports(pid: int, redis_port: int) -> set[int]:
    """Local ports of the process's established connections to the Redis port."""
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed while listed
            targets.append(os.readlink(fd))
    tables = "".join(Path(f"/proc/{pid}/net/{name}").read_text() for name in ("tcp", "tcp6"))
    return local_ports_to(tables, socket_inodes(targets), redis_port)


@dataclass
class Probe:
    """The ingress process as the run samples it."""

    pid: int
    redis_port: int
    t0: float
    samples: list[tuple[float, int, int, int]]
    """(s since start, VmRSS kB, Redis connections, calls held)."""

    async def run(self, held: list[asyncio.Task[tuple[int, str | None]]]) -> None:
        """Sample every 0.5 s until cancelled."""
        while True:
            waiting = sum(1 for t in held if not t.done())
            self.samples.append(
                (
                    time.monotonic() - self.t0,
                    rss_kb(self.pid),
                    len(redis_ports(self.pid, self.redis_port)),
                    waiting,
                )
            )
            await asyncio.sleep(0.5)


async def _interactive(
    http: httpx2.AsyncClient, rate: float, phase: list[str], sink: list[tuple[str, float, int]]
) -> None:
    """High-priority calls at `rate` (open loop) until cancelled, each labelled with the
    phase it started in: (phase, ms, status; 0 for no answer)."""
    url = chat_url("", DEPLOYMENT)

    async def one(name: str) -> None:
        started = time.perf_counter()
        try:
            status = (
                await http.post(url, json=HP_BODY, headers={"x-priority": "high"})
            ).status_code
        except httpx2.HTTPError:
            status = 0
        sink.append((name, (time.perf_counter() - started) * 1000.0, status))

    tasks: set[asyncio.Task[None]] = set()
    next_at = time.perf_counter()
    try:
        while True:
            task = asyncio.create_task(one(phase[0]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += 1.0 / rate
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    finally:
        await asyncio.gather(*tasks, return_exceptions=True)  # the last calls finish


async def _waiter(http: httpx2.AsyncClient, wait_s: int) -> tuple[int, str | None]:
    """One waiting call: (status, request id); (0, None) when it got no answer."""
    headers = {"x-priority": "low", "prefer": f"wait={wait_s}"}
    try:
        response = await http.post(chat_url("", DEPLOYMENT), json=WAITER_BODY, headers=headers)
    except httpx2.HTTPError:
        return 0, None
    if response.status_code == 202:
        return 202, response.headers.get("location", "").rsplit("/", 1)[-1] or None
    return response.status_code, response.headers.get("x-ptu-request-id")


async def _queued(redis: aioredis.Redis, n: int, timeout_s: float) -> None:
    stream = keys.tenant_queue(DEPLOYMENT, DEFAULT_TENANT)
    deadline = time.monotonic() + timeout_s
    while await redis.xlen(stream) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} waiting calls not queued within {timeout_s:g} s")
        await asyncio.sleep(0.1)


def _start_worker(stack: Stack, env: dict[str, str]) -> None:
    stack.start_estimator(env)
    stack.start_worker(env)


async def _low_calls(sim_url: str) -> int:
    async with httpx2.AsyncClient(timeout=5.0) as sim:
        state = (await sim.get(f"{sim_url}/sim/state")).json()["deployments"][DEPLOYMENT]
    return int(state["by_priority"].get("low", {}).get("requests", 0))


async def _many(stack: Stack, cfg: ManyConfig, env: dict[str, str]) -> dict[str, Any]:
    probe = Probe(
        stack.children["ingress"].proc.pid,
        urlparse(stack.redis_url).port or 6379,
        time.monotonic(),
        [],
    )
    redis = aioredis.Redis.from_url(stack.redis_url)
    phase = ["warmup"]
    hp: list[tuple[str, float, int]] = []
    held: list[asyncio.Task[tuple[int, str | None]]] = []
    marks: dict[str, float] = {}
    wait_limits = httpx2.Limits(max_connections=cfg.waiters + 16, max_keepalive_connections=16)
    async with (
        httpx2.AsyncClient(base_url=stack.ingress_url, timeout=60.0) as hp_http,
        httpx2.AsyncClient(
            base_url=stack.ingress_url, timeout=cfg.wait_s + 60.0, limits=wait_limits
        ) as wait_http,
    ):
        background = [
            asyncio.create_task(probe.run(held)),
            asyncio.create_task(_interactive(hp_http, cfg.hp_per_s, phase, hp)),
        ]
        try:
            await asyncio.sleep(2.0)  # connections and code paths warm up
            phase[0] = "before"
            await asyncio.sleep(cfg.phase_s)
            rss_before, ports_before = rss_kb(probe.pid), redis_ports(probe.pid, probe.redis_port)
            low_before = await _low_calls(stack.sim_url)
            phase[0], marks["enqueue"] = "enqueue", time.monotonic()
            held += [
                asyncio.create_task(_waiter(wait_http, cfg.wait_s)) for _ in range(cfg.waiters)
            ]
            await _queued(redis, cfg.waiters, 120.0)
            phase[0], marks["held"] = "held", time.monotonic()
            await asyncio.sleep(cfg.phase_s)
            ports = redis_ports(probe.pid, probe.redis_port)
            from_ingress = redis_clients(await redis.client_list(), ports)
            phase[0], marks["draining"] = "draining", time.monotonic()
            await asyncio.to_thread(_start_worker, stack, env)
            await asyncio.wait(held, timeout=cfg.drain_timeout_s)
            phase[0], marks["after"] = "after", time.monotonic()
            await asyncio.sleep(cfg.phase_s)
            marks["end"] = time.monotonic()
        finally:
            for task in background + held:
                task.cancel()
            await asyncio.gather(*background, *held, return_exceptions=True)
        answers = [_answer(t) for t in held]
        ids = [rid for _status, rid in answers if rid]
        async with redis.pipeline(transaction=False) as pipe:
            for rid in ids:
                pipe.llen(keys.reply(rid))
            lengths = dict(zip(ids, await pipe.execute(), strict=True))
        low_calls = await _low_calls(stack.sim_url) - low_before
    await redis.aclose()
    row = _row(cfg, answers, lengths, low_calls, marks, hp, probe, rss_before)
    row.update(
        redis_conns_before=len(ports_before),
        redis_clients_from_ingress_held=from_ingress["clients"],
        redis_clients_active_held=from_ingress["active_last_s"],
        redis_subscriptions_held=from_ingress["subscriptions"],
        redis_pool_size=REDIS_MAX_CONNECTIONS,
    )
    return {"row": row, "samples": probe.samples, "hp": hp}


def _answer(task: asyncio.Task[tuple[int, str | None]]) -> tuple[int, str | None]:
    """A held call's answer; (0, None) when it had none (cancelled at the drain's end)."""
    if task.cancelled() or task.exception() is not None:
        return 0, None
    return task.result()


def _row(
    cfg: ManyConfig,
    answers: list[tuple[int, str | None]],
    lengths: dict[str, int],
    low_calls: int,
    marks: dict[str, float],
    hp: list[tuple[str, float, int]],
    probe: Probe,
    rss_before: int,
) -> dict[str, Any]:
    counted = tally(answers)
    missing, duplicated = reply_counts(lengths)
    row: dict[str, Any] = {
        "waiters": cfg.waiters,
        "answered_200": counted.ok_200,
        "fell_back_202": counted.fell_back_202,
        "no_answer_or_error": counted.other,
        "distinct_request_ids": counted.distinct_ids,
        "repeated_request_ids": counted.repeated_ids,
        "reply_missing": missing,
        "reply_duplicated": duplicated,
        "upstream_low_calls": low_calls,
        "exactly_once": counted.exactly_once and missing == 0 and duplicated == 0,
        "enqueue_s": round(marks["held"] - marks["enqueue"], 2),
        "drain_s": round(marks["after"] - marks["draining"], 2),
        "rss_before_mb": round(rss_before / 1024, 1),
        "rss_peak_mb": round(max(s[1] for s in probe.samples) / 1024, 1),
        "redis_conns_peak": max(s[2] for s in probe.samples),
    }
    row["rss_growth_mb"] = round(row["rss_peak_mb"] - row["rss_before_mb"], 1)
    without = [ms for name, ms, status in hp if name in ("before", "after") and status == 200]
    row["hp_p99_without_ms"] = _rounded(percentile(without, 99))
    for name in PHASES:
        done = [ms for n, ms, status in hp if n == name and status == 200]
        row[f"hp_{name}_calls"] = sum(1 for n, _ms, _s in hp if n == name)
        row[f"hp_{name}_errors"] = sum(1 for n, _ms, s in hp if n == name and s != 200)
        row[f"hp_{name}_p50_ms"] = _rounded(percentile(done, 50))
        row[f"hp_{name}_p99_ms"] = _rounded(percentile(done, 99))
    for name in ("held", "draining"):
        value = ratio(row[f"hp_{name}_p99_ms"], row["hp_p99_without_ms"])
        row[f"hp_p99_ratio_{name}"] = None if value is None else round(value, 3)
    return row


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def targets(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The target rows of part 2."""
    n = row["waiters"]
    not_once = (
        n
        - row["answered_200"]
        + row["repeated_request_ids"]
        + row["reply_missing"]
        + row["reply_duplicated"]
    )
    return [
        target_row(f"{n} waiting calls: calls not answered exactly once with a 200", not_once, 0),
        target_row(f"ingress RSS growth, {n} calls held", row["rss_growth_mb"], 100.0, " MB"),
        target_row(
            "ingress Redis connections (peak) vs its pool size",
            row["redis_conns_peak"],
            float(row["redis_pool_size"]),
        ),
        target_row(
            f"interactive p99 with {n} calls held / without", row["hp_p99_ratio_held"], 1.2, "x"
        ),
    ]


def run_many(stack: Stack, cfg: ManyConfig) -> dict[str, Any]:
    """Part 2 on `stack` (Redis and the simulator running)."""
    extra = {"PTU_MAX_CONCURRENCY": str(cfg.worker_concurrency), "PTU_ESTIMATE_WINDOW_S": "60"}
    prepare(stack, Policy("many-waiters", "ingress only", "none", extra))
    return asyncio.run(_many(stack, cfg, stack.base_env(**extra)))

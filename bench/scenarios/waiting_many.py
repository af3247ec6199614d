"""Part 2 of `ptu bench waiting`: many waiting calls held by one ingress process.

A fresh stack against a cheap upstream (the simulator with 1,000 PTU, TTFT 5 ms, TBT
1 ms: it never throttles and a call lasts milliseconds), one ingress and no worker yet.
From a process of their own, interactive calls go at a steady rate through the ingress
and, interleaved, through a twin ingress that holds no waiters (what the machine's load
alone does meanwhile), each labelled afterwards with the phase it started in:

1. `before`: no waiters;
2. `enqueue`: `waiters` concurrent calls `Prefer: wait=N` (one connection each) are
   sent, until every one is queued (the tenant's stream holds them all);
3. `settle`: until the ingress is done with the arrivals' work (under
   `waiting_probe.SETTLED_CORES` of CPU over a second, at most 30 s);
4. `held`: all of them are held at once for `phase_s`; the Redis clients connected from
   the ingress are then counted (`CLIENT LIST`);
5. `draining`: the estimator and one worker start and drain the queue; each held call
   is answered as its result is written;
6. `after`: no waiters again.

Measured: each call's answer by request id (`x-ptu-request-id`; a 202 carries its id in
`Location`), the reply list of every id in Redis (exactly one result each), the
upstream's low-priority call count, the ingress's RSS (`VmRSS` of its process, sampled
every 0.5 s: growth is the peak over the value before the waiters), its CPU per phase,
its Redis connections (its established TCP connections to the Redis port, from /proc,
against its pool size `ingress.wiring.REDIS_MAX_CONNECTIONS`), and the interactive p99
while the calls are held over the p99 without them (`before` and `after` together).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
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
from bench.scenarios.waiting_measures import (
    errors_by_status,
    latency_by_phase,
    phase_of,
    phase_rates,
    ratio,
    redis_clients,
    reply_counts,
    tally,
)
from bench.scenarios.waiting_probe import Probe, cpu_s, redis_ports, rss_kb, settled
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
TARGETS = ("ingress", "twin")
"""Where the interactive calls go: the ingress holding the waiters, a twin without any."""


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


def interactive_process(urls: list[str], rate: float, stop: Any, ready: Any, path: str) -> None:
    """In a process of its own (the one holding the waiters must not slow the timing):
    high-priority calls at `rate` to each of `urls`, interleaved, until `stop` is set,
    written to `path` as JSON [url index, start epoch, ms, status; 0: no answer]."""
    calls: list[tuple[int, float, float, int]] = []
    asyncio.run(_interactive(urls, rate, stop, ready, calls))
    Path(path).write_text(json.dumps(calls))


async def _interactive(
    urls: list[str], rate: float, stop: Any, ready: Any, sink: list[tuple[int, float, float, int]]
) -> None:
    async with httpx2.AsyncClient(timeout=60.0) as http:

        async def one(index: int) -> None:
            at, started = time.time(), time.perf_counter()
            try:
                response = await http.post(
                    chat_url(urls[index], DEPLOYMENT), json=HP_BODY, headers={"x-priority": "high"}
                )
                status = response.status_code
            except httpx2.HTTPError:
                status = 0
            sink.append((index, at, (time.perf_counter() - started) * 1000.0, status))

        tasks: set[asyncio.Task[None]] = set()
        next_at = time.perf_counter()
        ready.set()
        for tick in itertools.count():  # open loop, each url in turn
            if stop.is_set():
                break
            task = asyncio.create_task(one(tick % len(urls)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += 1.0 / (rate * len(urls))
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await asyncio.gather(*tasks)  # the last calls finish


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


async def _many(stack: Stack, cfg: ManyConfig, env: dict[str, str], out: Path) -> dict[str, Any]:
    pid, redis_port = stack.children["ingress"].proc.pid, urlparse(stack.redis_url).port or 6379
    probe = Probe(pid, redis_port, time.time(), [])
    # connected before the burst of waiters: Redis then accepts the ingress's pool growing
    # by hundreds of connections at once, and a new connection may wait for its turn
    redis = aioredis.Redis.from_url(stack.redis_url, socket_connect_timeout=30.0)
    await redis.ping()
    held: list[asyncio.Task[tuple[int, str | None]]] = []
    marks: dict[str, float] = {}
    cpu_at: dict[str, float] = {}

    def mark(name: str) -> None:
        marks[name], cpu_at[name] = time.time(), cpu_s(pid)

    # the same calls to a twin ingress without waiters, at the same moments: what the
    # machine's load alone does to the latency meanwhile
    twin = await asyncio.to_thread(stack.start_ingress, env, "twin")
    context = multiprocessing.get_context("spawn")
    stop, ready, hp_path = context.Event(), context.Event(), out / "interactive.json"
    timing = context.Process(
        target=interactive_process,
        args=([stack.ingress_url, twin], cfg.hp_per_s, stop, ready, str(hp_path)),
    )
    limits = httpx2.Limits(max_connections=cfg.waiters + 16, max_keepalive_connections=16)
    client = httpx2.AsyncClient(
        base_url=stack.ingress_url, timeout=cfg.wait_s + 60.0, limits=limits
    )
    sampling = asyncio.create_task(probe.run(held))
    timing.start()
    try:
        await asyncio.to_thread(ready.wait, 60.0)
        await asyncio.sleep(2.0)  # connections and code paths warm up
        mark("before")
        await asyncio.sleep(cfg.phase_s)
        rss_before, ports_before = rss_kb(pid), redis_ports(pid, redis_port)
        low_before = await _low_calls(stack.sim_url)
        mark("enqueue")
        held += [asyncio.create_task(_waiter(client, cfg.wait_s)) for _ in range(cfg.waiters)]
        await _queued(redis, cfg.waiters, 120.0)
        mark("settle")  # the ingress finishes the arrivals' work (records, first reads)
        await settled(pid, 30.0)
        mark("held")
        await asyncio.sleep(cfg.phase_s)
        mark("count")  # reading the socket table: neither phase
        ports = redis_ports(pid, redis_port)
        from_ingress = redis_clients(await redis.client_list(), ports)
        mark("draining")
        await asyncio.to_thread(_start_worker, stack, env)
        await asyncio.wait(held, timeout=cfg.drain_timeout_s)
        mark("after")
        await asyncio.sleep(cfg.phase_s)
        mark("end")
    finally:
        stop.set()
        await asyncio.to_thread(timing.join, 90.0)
        for task in [sampling, *held]:
            task.cancel()
        await asyncio.gather(sampling, *held, return_exceptions=True)
        await client.aclose()
    answers = [_answer(t) for t in held]
    ids = [rid for _status, rid in answers if rid]
    async with redis.pipeline(transaction=False) as pipe:
        for rid in ids:
            pipe.llen(keys.reply(rid))
        lengths = dict(zip(ids, await pipe.execute(), strict=True))
    low_calls = await _low_calls(stack.sim_url) - low_before
    await redis.aclose()
    hp = [
        (TARGETS[i], phase_of(at, marks), ms, s) for i, at, ms, s in json.loads(hp_path.read_text())
    ]
    row = _row(cfg, answers, lengths, low_calls, marks, hp, probe, rss_before)
    row.update({f"ingress_cpu_{k}": round(v, 2) for k, v in phase_rates(marks, cpu_at).items()})
    row.update(
        redis_conns_before=len(ports_before),
        redis_clients_from_ingress_held=from_ingress["clients"],
        redis_clients_active_held=from_ingress["active_last_s"],
        redis_subscriptions_held=from_ingress["subscriptions"],
        redis_active_commands_held=from_ingress["active_commands"],
        redis_pool_size=REDIS_MAX_CONNECTIONS,
    )
    shown = {
        k: v - probe.t0
        for k, v in marks.items()
        if k in ("enqueue", "settle", "held", "draining", "after")
    }
    return {"row": row, "samples": probe.samples, "hp": hp, "marks": shown}


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
    hp: list[tuple[str, str, float, int]],
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
        "error_statuses": errors_by_status(answers),
        "distinct_request_ids": counted.distinct_ids,
        "repeated_request_ids": counted.repeated_ids,
        "reply_missing": missing,
        "reply_duplicated": duplicated,
        "upstream_low_calls": low_calls,
        "exactly_once": counted.exactly_once and missing == 0 and duplicated == 0,
        "enqueue_s": round(marks["settle"] - marks["enqueue"], 2),
        "settle_s": round(marks["held"] - marks["settle"], 2),
        "drain_s": round(marks["after"] - marks["draining"], 2),
        "rss_before_mb": round(rss_before / 1024, 1),
        "rss_peak_mb": round(max(s[1] for s in probe.samples) / 1024, 1),
        "redis_conns_peak": max(s[2] for s in probe.samples),
    }
    row["rss_growth_mb"] = round(row["rss_peak_mb"] - row["rss_before_mb"], 1)
    for target in TARGETS:
        calls = [(phase, ms, status) for t, phase, ms, status in hp if t == target]
        row.update(latency_by_phase(calls, target, PHASES))
    vs_twin = ratio(row["ingress_held_p99_ms"], row["twin_held_p99_ms"])
    row["held_p99_ingress_vs_twin"] = None if vs_twin is None else round(vs_twin, 3)
    return row


def run_many(stack: Stack, cfg: ManyConfig, out: Path) -> dict[str, Any]:
    """Part 2 on `stack` (Redis and the simulator running)."""
    extra = {"PTU_MAX_CONCURRENCY": str(cfg.worker_concurrency), "PTU_ESTIMATE_WINDOW_S": "60"}
    prepare(stack, Policy("many-waiters", "ingress only", "none", extra))
    return asyncio.run(_many(stack, cfg, stack.base_env(**extra), out))

"""`ptu bench waiting`: waiting low-priority calls (`Prefer: wait=N`) behind a batch, and
many of them held by one ingress.

1. **Behind a batch.** On a fresh stack (the default simulated deployment, an ingress,
   the estimator and two workers, default settings), interactive calls keep the PTU at a
   steady share of its capacity all along. A few waiting calls (`x-priority: low`,
   `Prefer: wait=N`, staggered) are sent (a) with an empty queue, then (b) after a Batch
   API batch of `batch_lines` lines of the same size (files upload + batches create
   through the ingress, every line queued: the batch's `expanded` mark) under the same
   tenant. A call's latency runs from its submission to its answer: the 200 it waited
   for, or, when the wait ran out (202), its result read at `Location`. A call still
   without an answer after `bound_s` counts as `bound_s` and its arm's figures are lower
   bounds. Target: arm (b) ≤ 2 x arm (a). The batch is cancelled at the end.
2. **Many waiters on one ingress** (`bench.scenarios.waiting_many`).

Every figure is what the run measured; results.md states each target met or missed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Any

import httpx2
import redis.asyncio as aioredis

from bench.harness.runner import Policy, prepare
from bench.harness.stack import DEPLOYMENT, SimulatorOptions, Stack, sigterm_as_interrupt
from bench.harness.traffic import Clock, HpRecord, chat_url, run_interactive
from bench.harness.workload import CallShape, PlannedCall, chat_body
from bench.scenarios import waiting_many, waiting_probe, waiting_report
from bench.scenarios.mixed import capacity_of
from bench.scenarios.waiting_measures import (
    WaitRecord,
    many_targets,
    ratio,
    summarise,
    target_row,
)
from ingress.batch.store import BatchStore
from orchestrator.core import logs

HP_SHAPE = CallShape(prompt_tokens=300, max_tokens=200)
LINE_SHAPE = CallShape(prompt_tokens=200, max_tokens=60)
"""A batch line and a waiting call are the same request."""
ENDED = frozenset({"cancelled", "completed", "failed", "expired"})


@dataclasses.dataclass(frozen=True, slots=True)
class BehindConfig:
    """Sizes of part 1."""

    batch_lines: int = 5000
    waiting_calls: int = 5
    stagger_s: float = 1.0
    wait_s: int = 120
    hp_share: float = 0.4
    warmup_s: float = 10.0
    bound_s: float = 240.0
    workers: int = 2


@dataclasses.dataclass(frozen=True, slots=True)
class WaitingConfig:
    """Both parts."""

    behind: BehindConfig = dataclasses.field(default_factory=BehindConfig)
    many: waiting_many.ManyConfig = dataclasses.field(default_factory=waiting_many.ManyConfig)


QUICK = WaitingConfig(
    BehindConfig(batch_lines=300, waiting_calls=3, warmup_s=6.0, bound_s=90.0),
    waiting_many.QUICK,
)


def line_body(seed: int) -> dict[str, Any]:
    """The one request every batch line and waiting call sends."""
    return chat_body(random.Random(f"line:{seed}"), LINE_SHAPE, f"line-{seed}", DEPLOYMENT, 0.0)


def batch_file(body: dict[str, Any], lines: int) -> bytes:
    """A Batch API input file of `lines` copies of `body`."""
    return b"".join(
        json.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
        ).encode()
        + b"\n"
        for i in range(lines)
    )


async def submit_batch(http: httpx2.AsyncClient, content: bytes) -> str:
    """Upload a file and create a (low-priority) batch from it; the batch id."""
    up = await http.post(
        "/v1/files",
        data={"purpose": "batch"},
        files={"file": ("waiting.jsonl", content, "application/jsonl")},
    )
    up.raise_for_status()
    body = {
        "input_file_id": up.json()["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    created = await http.post("/v1/batches", json=body)
    created.raise_for_status()
    return str(created.json()["id"])


async def until_expanded(redis: aioredis.Redis, batch_id: str, timeout_s: float) -> None:
    """Until every line of the batch is queued."""
    deadline = time.monotonic() + timeout_s
    while (await BatchStore(redis).fields(batch_id)).get("expanded") != "1":
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id}: lines not queued within {timeout_s:g} s")
        await asyncio.sleep(0.2)


async def until_status(
    redis: aioredis.Redis, batch_id: str, wanted: frozenset[str], timeout_s: float
) -> str:
    """The batch's status once it is one of `wanted`, or whatever it is after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = (await BatchStore(redis).fields(batch_id)).get("status", "")
        if status in wanted or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.5)


async def lines_done(redis: aioredis.Redis, batch_id: str | None) -> int:
    """Lines of the batch with a result (completed or failed)."""
    if batch_id is None:
        return 0
    fields = await BatchStore(redis).fields(batch_id)
    return int(fields.get("completed", "0")) + int(fields.get("failed", "0"))


async def one_waiting_call(
    http: httpx2.AsyncClient, body: dict[str, Any], wait_s: int, bound_s: float
) -> WaitRecord:
    """Send one waiting call; follow its Location when the wait runs out, until `bound_s`."""
    started = time.monotonic()
    headers = {"x-priority": "low", "prefer": f"wait={wait_s}"}
    url = chat_url("", DEPLOYMENT)
    response = await http.post(url, json=body, headers=headers, timeout=wait_s + 30.0)
    first = response.status_code
    if first == 200 and response.json().get("object") == "chat.completion":
        rid = response.headers.get("x-ptu-request-id")
        return WaitRecord(time.monotonic() - started, True, first, rid)
    if first != 202:
        raise RuntimeError(f"waiting call answered {first}: {response.text[:300]}")
    location = response.headers["location"]
    rid = location.rsplit("/", 1)[-1]
    while (left := bound_s - (time.monotonic() - started)) > 0:
        poll = await http.get(location, params={"wait": int(min(30, max(1, left)))}, timeout=60)
        if poll.status_code == 200:
            return WaitRecord(time.monotonic() - started, True, first, rid)
    return WaitRecord(time.monotonic() - started, False, first, rid)


async def waiting_calls(
    http: httpx2.AsyncClient, cfg: BehindConfig, body: dict[str, Any]
) -> list[WaitRecord]:
    """`waiting_calls` calls, `stagger_s` apart, each followed to its answer."""

    async def staggered(i: int) -> WaitRecord:
        await asyncio.sleep(i * cfg.stagger_s)
        return await one_waiting_call(http, body, cfg.wait_s, cfg.bound_s)

    return list(await asyncio.gather(*(staggered(i) for i in range(cfg.waiting_calls))))


def arm_row(
    arm: str,
    queued: int,
    calls: list[WaitRecord],
    hp: list[HpRecord],
    window: tuple[float, float],
    done: int,
) -> dict[str, Any]:
    """What one arm measured."""
    summary = summarise(calls)
    during = [r for r in hp if window[0] <= r.at < window[1]]
    return {
        "arm": arm,
        "batch_lines_queued": queued,
        "waiting_calls": len(calls),
        "answered": sum(1 for c in calls if c.answered),
        "fell_back_202": sum(1 for c in calls if c.first_status == 202),
        "p50_s": None if summary.p50_s is None else round(summary.p50_s, 3),
        "max_s": None if summary.max_s is None else round(summary.max_s, 3),
        "lower_bound": summary.censored,
        "interactive_calls": len(during),
        "interactive_429": sum(1 for r in during if r.status == 429),
        "batch_lines_done_during": done,
    }


async def behind_a_batch(stack: Stack, cfg: BehindConfig, seed: int) -> dict[str, Any]:
    """Arms (a) empty queue and (b) behind the batch, interactive traffic all along."""
    rate = capacity_of(stack.sim).rate_for_share(cfg.hp_share, HP_SHAPE)
    horizon = cfg.warmup_s + 2 * cfg.bound_s + 300.0  # more than the run; cancelled at its end
    rng = random.Random(f"hp:{seed}")
    hp_calls = [
        PlannedCall(i / rate, f"hp-{i}", chat_body(rng, HP_SHAPE, f"hp-{seed}-{i}", DEPLOYMENT))
        for i in range(int(horizon * rate))
    ]
    body = line_body(seed)
    clock = Clock()
    hp: list[HpRecord] = []
    redis = aioredis.Redis.from_url(stack.redis_url)
    limits = httpx2.Limits(max_connections=400)
    async with httpx2.AsyncClient(base_url=stack.ingress_url, timeout=120.0, limits=limits) as http:
        url = chat_url(stack.ingress_url, DEPLOYMENT)
        traffic = asyncio.create_task(
            run_interactive(http, url, hp_calls, clock, {"x-priority": "high"}, hp)
        )
        batch_id: str | None = None
        ended = ""
        try:
            await asyncio.sleep(cfg.warmup_s)
            start = clock.offset()
            empty = await waiting_calls(http, cfg, body)
            row_a = arm_row("a: empty queue", 0, empty, hp, (start, clock.offset()), 0)
            batch_id = await submit_batch(http, batch_file(body, cfg.batch_lines))
            await until_expanded(redis, batch_id, 300.0)
            done_before, start = await lines_done(redis, batch_id), clock.offset()
            behind = await waiting_calls(http, cfg, body)
            done = await lines_done(redis, batch_id) - done_before
            row_b = arm_row(
                f"b: behind a {cfg.batch_lines}-line batch",
                cfg.batch_lines,
                behind,
                hp,
                (start, clock.offset()),
                done,
            )
        finally:
            if batch_id is not None:  # the run stops by itself: nothing left to serve
                await http.post(f"/v1/batches/{batch_id}/cancel")
                ended = await until_status(redis, batch_id, ENDED, 60.0)
            traffic.cancel()
            await asyncio.gather(traffic, return_exceptions=True)
            await redis.aclose()
    row_b["batch_status_at_end"] = ended
    return {"arms": [row_a, row_b], "latencies": {"a": empty, "b": behind}, "hp_per_s": rate}


def targets_behind(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The target rows of part 1: (b) / (a) at p50 and at max, ≤ 2."""
    a, b = rows
    return [
        target_row(
            f"waiting call behind a {b['batch_lines_queued']}-line batch / empty queue, {q}",
            ratio(b[f"{q}_s"], a[f"{q}_s"]),
            2.0,
            "x",
            lower_bound=bool(b["lower_bound"]),
        )
        for q in ("p50", "max")
    ]


def run_waiting(cfg: WaitingConfig, out: Path, seed: int) -> dict[str, Any]:
    """Both parts on fresh stacks; writes results.json, results.md and the plots."""
    out.mkdir(parents=True, exist_ok=True)
    waiting_probe.raise_open_files(cfg.many.waiters)
    env = {"PTU_LOG_LEVEL": "warning"}
    with sigterm_as_interrupt(), Stack(out / "run-behind", SimulatorOptions(seed=seed)) as stack:
        stack.start_redis()
        stack.start_simulator()
        prepare(stack, Policy("waiting", "defaults", "queued", env), workers=cfg.behind.workers)
        behind = asyncio.run(behind_a_batch(stack, cfg.behind, seed))
    with sigterm_as_interrupt(), Stack(out / "run-many", waiting_many.SIM) as stack:
        stack.start_redis()
        stack.start_simulator()
        many = waiting_many.run_many(stack, cfg.many, out)
    targets = targets_behind(behind["arms"]) + many_targets(many["row"])
    result = {
        "config": dataclasses.asdict(cfg),
        "behind_a_batch": behind["arms"],
        "interactive_per_s": round(behind["hp_per_s"], 3),
        "many_waiters": many["row"],
        "targets": targets,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    waiting_report.plot_latencies(behind["latencies"], out / "waiting_latency.png")
    waiting_report.plot_many(many, out)
    waiting_report.write_markdown(cfg, result, out)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sizes: `--batch-lines`, `--waiting-calls`, `--bound-s`, `--waiters`."""
    parser.add_argument("--batch-lines", type=int, default=None, help="lines of the batch")
    parser.add_argument("--waiting-calls", type=int, default=None, help="waiting calls per arm")
    parser.add_argument(
        "--bound-s", type=float, default=None, help="longest a waiting call is followed"
    )
    parser.add_argument("--waiters", type=int, default=None, help="calls held by one ingress")


def config_of(args: argparse.Namespace) -> WaitingConfig:
    """The sizes `--quick` and the flags ask for."""
    cfg = QUICK if args.quick else WaitingConfig()
    behind = {
        "batch_lines": args.batch_lines,
        "waiting_calls": args.waiting_calls,
        "bound_s": args.bound_s,
    }
    for name, value in behind.items():
        if value is not None and value <= 0:
            raise SystemExit(f"ptu bench waiting: --{name.replace('_', '-')} must be positive")
    if args.waiters is not None and args.waiters <= 0:
        raise SystemExit("ptu bench waiting: --waiters must be positive")
    return WaitingConfig(
        dataclasses.replace(cfg.behind, **{k: v for k, v in behind.items() if v is not None}),
        cfg.many if args.waiters is None else dataclasses.replace(cfg.many, waiters=args.waiters),
    )


def run(args: argparse.Namespace) -> int:
    """Run both parts and print results.md."""
    logs.configure("warning", "console")
    run_waiting(config_of(args), Path(args.out), args.seed)
    print(Path(args.out, "results.md").read_text())
    return 0

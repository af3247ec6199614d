"""`ptu bench fairness`: one tenant's big batch beside another's small one, by weight.

For each weight of tenant B (1, then 3; A has 1), on a fresh stack (Redis flushed,
simulator reset, ingress and two workers started with `PTU_TENANTS`):

1. B alone: B submits `small` lines as a batch; its makespan is the time from the
   batch create to its last line's result.
2. B beside A: A submits a `big`-line batch, `delay_s` later B submits its `small`
   lines again. B's makespan is measured the same way. The token shares are those of
   the window in which both had lines waiting: from B's first line reaching its
   queue (the stream entry's id; B's lines are stamped when the batch is built and
   queued a moment later) to the start of B's last call. After that B has nothing
   left to start, so the slots its last calls free go to A whatever the weights. A
   window from B's submission to its last result (reported too,
   `share_b_to_b_done`) measures those edges, not the share: even a B given every
   slot from its arrival cannot reach 0.75 in it with 20 lines on 10 slots (A's
   calls in flight hold the slots for the first call duration).
3. A's batch is cancelled, the workers drain, and `ptu usage` (run as the CLI)
   must equal the simulator's own prompt and completion counters exactly.

Every line is the same request, so a share in tokens is a share of the work; a
call's tokens are counted evenly over its run (`started_at` to `completed_at` of
its result), so a share is of the capacity used inside the window. Every call of
the run beside A is written to `timeline-b<weight>.json`. A note on the bound: a
tenant that arrives while another holds every slot gets its slots only as they
free up; the scheduler makes up for that (see `orchestrator.tenants.fair`), so with
equal weights and more lines than `max_concurrency` its makespan is near twice
its makespan alone, as with an ideal fluid share.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import redis.asyncio as aioredis

from bench.harness.runner import Policy, prepare
from bench.harness.stack import DEPLOYMENT, SimulatorOptions, Stack, sigterm_as_interrupt
from bench.report import tables as report
from bench.scenarios.fairness_shares import makespan, runs_of, shares
from ingress.batch.store import BatchStore, line_request_id
from orchestrator.core import keys, logs
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import ResultDocument

PROMPT = [
    {"role": "user", "content": "Summarise this ticket in one sentence for the weekly digest."}
]


@dataclasses.dataclass(frozen=True, slots=True)
class FairnessConfig:
    """Sizes of the run."""

    big: int = 2000
    small: int = 20
    delay_s: float = 10.0
    max_tokens: int = 40
    max_concurrency: int = 10
    timeout_s: float = 600.0


QUICK = FairnessConfig(big=400, small=20, delay_s=3.0, timeout_s=240.0)


def _line(tenant: str, i: int, max_tokens: int) -> dict[str, Any]:
    return {
        "custom_id": f"{tenant}-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": DEPLOYMENT, "messages": PROMPT, "max_tokens": max_tokens},
    }


async def submit(http: httpx2.AsyncClient, key: str, tenant: str, n: int, max_tokens: int) -> str:
    """Upload `n` lines and create a low-priority batch; returns the batch id."""
    content = "\n".join(json.dumps(_line(tenant, i, max_tokens)) for i in range(n)) + "\n"
    headers = {"api-key": key}
    up = await http.post(
        "/v1/files",
        headers=headers,
        data={"purpose": "batch"},
        files={"file": (f"{tenant}.jsonl", content.encode(), "application/jsonl")},
    )
    up.raise_for_status()
    body = {"input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}  # fmt: skip
    created = await http.post("/v1/batches", headers=headers, json=body)
    created.raise_for_status()
    return str(created.json()["id"])


async def results(redis: aioredis.Redis, batch_id: str) -> list[ResultDocument]:
    """The results written so far for a batch's lines."""
    total = int((await BatchStore(redis).fields(batch_id)).get("total", "0"))
    store = ResultStore(redis, 3600)
    out = []
    for index in range(total):
        state = await store.get(line_request_id(batch_id, index))
        if state is not None and state.result is not None:
            out.append(state.result)
    return out


async def wait_all(
    redis: aioredis.Redis, batch_id: str, n: int, timeout_s: float
) -> list[ResultDocument]:
    """Every line's result (raises after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = await results(redis, batch_id)
        if len(got) >= n:
            return got
        await asyncio.sleep(0.1)
    raise TimeoutError(f"batch {batch_id}: not finished within {timeout_s:g} s")


async def first_queued(redis: aioredis.Redis, tenant: str, since: float) -> float | None:
    """When the first of `tenant`'s lines queued after `since` reached its stream (the
    entry id is the Redis server's clock in ms); None when none is left to see."""
    stream = keys.tenant_queue(DEPLOYMENT, tenant, "batch")
    entries = await redis.xrange(stream, min=f"{int(since * 1000)}-0", count=1)
    if not entries:
        return None
    entry_id = entries[0][0]
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(text.split("-")[0]) / 1000.0


async def one_weight(
    stack: Stack, cfg: FairnessConfig, weight_b: float, out: Path
) -> dict[str, Any]:
    """B alone, then B beside A, on a stack prepared with B's weight."""
    redis = aioredis.Redis.from_url(stack.redis_url)
    async with httpx2.AsyncClient(base_url=stack.ingress_url, timeout=60.0) as http:
        try:
            # warm up (connections, the first utilisation reading) outside the measurement
            warm = await submit(http, "key-a", "a", cfg.small, cfg.max_tokens)
            await wait_all(redis, warm, cfg.small, cfg.timeout_s)
            created = time.time()
            alone_id = await submit(http, "key-b", "b", cfg.small, cfg.max_tokens)
            alone = await wait_all(redis, alone_id, cfg.small, cfg.timeout_s)
            alone_s = makespan(created, alone)

            big_id = await submit(http, "key-a", "a", cfg.big, cfg.max_tokens)
            await asyncio.sleep(cfg.delay_s)
            created = time.time()
            beside_id = await submit(http, "key-b", "b", cfg.small, cfg.max_tokens)
            queued = await first_queued(redis, "b", created)
            beside = await wait_all(redis, beside_id, cfg.small, cfg.timeout_s)
            beside_s = makespan(created, beside)
            a_docs = await results(redis, big_id)
            split, to_done = shares(a_docs, beside, created, queued)
            first_start = min(d.started_at or d.completed_at for d in beside)
            _timeline(out, weight_b, created, queued, a_docs, beside)
            cancel = await http.post(f"/v1/batches/{big_id}/cancel", headers={"api-key": "key-a"})
            cancel.raise_for_status()
            await wait_all(redis, big_id, cfg.big, cfg.timeout_s)
            await _drained(stack)
        finally:
            await redis.aclose()
    expected_b = weight_b / (1.0 + weight_b)
    usage = _usage_cli(stack)
    sim = httpx2.get(f"{stack.sim_url}/sim/state", timeout=5.0).json()["deployments"][DEPLOYMENT]
    return {
        "weight_b": weight_b,
        "b_alone_s": round(alone_s, 2),
        "b_beside_a_s": round(beside_s, 2),
        "ratio": round(beside_s / alone_s, 2),
        "a_lines_done_when_b_done": sum(1 for d in a_docs if d.status == "completed"),
        "share_a": round(split.get("a", 0.0), 3),
        "share_b": round(split.get("b", 0.0), 3),
        "share_b_expected": round(expected_b, 3),
        "share_error": round(abs(split.get("b", 0.0) - expected_b) / expected_b, 3),
        "share_b_to_b_done": round(to_done.get("b", 0.0), 3),
        # from B's first line queued to its first call: how soon the scheduler served B
        "b_first_wait_s": None if queued is None else round(first_start - queued, 3),
        "usage_prompt": usage["prompt_tokens"],
        "sim_prompt": sim["prompt_tokens"],
        "usage_completion": usage["completion_tokens"],
        "sim_completion": sim["completion_tokens"],
        "usage_matches": usage["prompt_tokens"] == sim["prompt_tokens"]
        and usage["completion_tokens"] == sim["completion_tokens"],
    }


def _timeline(
    out: Path,
    weight_b: float,
    created: float,
    queued: float | None,
    a: list[ResultDocument],
    b: list[ResultDocument],
) -> None:
    """Every call of the run beside A (tenant, start, end, tokens; seconds from B's
    submission) and when B's first line was queued, in `timeline-b<weight>.json`, so the
    shares can be checked by hand."""
    runs = sorted(runs_of("a", a) + runs_of("b", b), key=lambda r: r.started)
    calls = [
        [r.tenant, round(r.started - created, 4), round(r.ended - created, 4), r.tokens]
        for r in runs
    ]
    doc = {
        "b_first_queued_s": None if queued is None else round(queued - created, 4),
        "calls": calls,
    }
    (out / f"timeline-b{weight_b:g}.json").write_text(json.dumps(doc) + "\n")


async def _drained(stack: Stack, timeout_s: float = 60.0) -> None:
    """Until the simulator has no call in flight (cancelled lines' calls finish first)."""
    deadline = time.monotonic() + timeout_s
    async with httpx2.AsyncClient(timeout=5.0) as sim:
        while time.monotonic() < deadline:
            state = (await sim.get(f"{stack.sim_url}/sim/state")).json()
            if state["deployments"][DEPLOYMENT]["in_flight"] == 0:
                await asyncio.sleep(1.0)  # the last usage writes land
                return
            await asyncio.sleep(0.2)


def _usage_cli(stack: Stack) -> dict[str, int]:
    """`ptu usage --by tenant --format json` over the last day, summed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTU_")}
    env.update(_env(stack, 1.0))
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator", "usage", "--since", "1d", "--format", "json"],
        env=env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    rows = json.loads(out.stdout)["rows"]
    return {
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
    }


def _env(stack: Stack, weight_b: float) -> dict[str, str]:
    tenants = [{"name": "a", "weight": 1}, {"name": "b", "weight": weight_b}]
    return stack.base_env(
        PTU_TENANTS=json.dumps(tenants),
        PTU_API_KEYS=json.dumps({"key-a": "a", "key-b": "b"}),
    )


def run_fairness(cfg: FairnessConfig, out: Path) -> list[dict[str, Any]]:
    """Both weights; writes results.json and results.md."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    sim = SimulatorOptions(ptus=30, window_s=60.0)
    with sigterm_as_interrupt(), Stack(out / "run", sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        for weight_b in (1.0, 3.0):
            env = _env(stack, weight_b)
            env["PTU_MAX_CONCURRENCY"] = str(cfg.max_concurrency)
            prepare(stack, Policy(f"b-weight-{weight_b:g}", "fair share", "queued", env), workers=2)
            rows.append(asyncio.run(one_weight(stack, cfg, weight_b, out)))
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "# ptu bench fairness",
        "",
        f"A: {cfg.big} lines, B: {cfg.small} lines {cfg.delay_s:g} s later, "
        f"max_concurrency {cfg.max_concurrency}, 2 workers.",
        "",
        report.markdown_table(rows, list(rows[0])),
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--big`, `--small`, `--delay-s`, `--max-concurrency` override the sizes."""
    parser.add_argument("--big", type=int, default=None, help="lines of A's batch")
    parser.add_argument("--small", type=int, default=None, help="lines of B's batch")
    parser.add_argument("--delay-s", type=float, default=None, help="B submits this long after A")
    parser.add_argument("--max-concurrency", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    """Run and print the table."""
    logs.configure("warning", "console")
    cfg = QUICK if args.quick else FairnessConfig()
    overrides = {
        "big": args.big, "small": args.small, "delay_s": args.delay_s,
        "max_concurrency": args.max_concurrency,
    }  # fmt: skip
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v})
    rows = run_fairness(cfg, Path(args.out))
    print(report.markdown_table(rows, list(rows[0])))
    return 0

"""`ptu bench deadline`: a batch that needs about twice the idle PTU before its deadline,
under an interactive day, run four ways: PTU only, pay-as-you-go only, a Batch deployment
only, and planned (the PTU first, the rest to Flex, then standard, by `batch/deadline`).

Every policy gets a fresh stack (Redis flushed, ingress and worker restarted) and the same
seeded interactive calls (high priority, through the ingress, to the PTU) over the span
from the batch's creation to its deadline. The batch is created with `metadata.deadline`:

- `ptu-only`: the lines queued on the PTU, no overflow configured; at the deadline the
  lines left get `batch_expired`.
- `payg-only`: the same lines on the standard deployment, high priority (called at once).
- `batch-only`: the lines submitted whole to the simulator's Global Batch deployment
  through the `openai` SDK (its turnaround is `--batch-turnaround-s`, the 24 h target
  scaled to the benchmark's span).
- `planned`: the PTU deployment with `overflow` Flex (refused under contention) then
  standard.

Per policy: met the deadline (every line answered by then), completion time, tokens and
cost per target (the PTU's tokens cost nothing more; Flex and Batch at `discount` of the
pay-as-you-go price), interactive 429s, and for the queued policies the forecast's error
(its first measured rate times the time to the deadline, against the PTU tokens then done).
A second scenario, `fits`, runs a batch the PTU can finish under the planned policy: it
must send nothing to overflow. Report: `deadline_report`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import openai
import redis.asyncio as aioredis

from bench.harness.runner import Policy, prepare
from bench.harness.stack import SimulatorOptions, Stack, sigterm_as_interrupt
from bench.harness.traffic import Clock, HpRecord, chat_url, run_interactive
from bench.scenarios.deadline_measures import (
    QUICK,
    DeadlineConfig,
    batch_line,
    forecast_error,
    interactive_calls,
)
from bench.scenarios.deadline_report import write_report
from bench.scenarios.fairness import results
from ingress.batch.deadline.cost import Tally
from ingress.batch.store import BatchStore
from orchestrator.core import logs
from orchestrator.core.deployments import OverflowEntry
from orchestrator.core.schemas import ResultDocument

PTU, STD, GB = "ptu", "std", "gb"
API_VERSION = "2025-03-01-preview"
TERMINAL = ("completed", "failed", "cancelled", "expired")


def _entries(cfg: DeadlineConfig) -> dict[str, OverflowEntry]:
    d = cfg.discount
    return {
        "flex": OverflowEntry(name=STD, kind="flex", price_in=cfg.payg_in * d,
                              price_out=cfg.payg_out * d),
        "standard": OverflowEntry(name=STD, kind="standard", price_in=cfg.payg_in,
                                  price_out=cfg.payg_out),
        "batch": OverflowEntry(name=GB, kind="batch", price_in=cfg.payg_in * d,
                               price_out=cfg.payg_out * d, turnaround_s=cfg.batch_turnaround_s),
    }  # fmt: skip


def _deployments(cfg: DeadlineConfig, overflow: bool) -> str:
    e = _entries(cfg)
    ptu: dict[str, Any] = {"name": PTU, "model": "gpt-4o-mini", "ptus": cfg.ptus}
    if overflow:
        ptu["overflow"] = [e["flex"].model_dump(), e["standard"].model_dump()]
    std = {"name": STD, "model": "gpt-4o-mini", "kind": "standard", "tpm": 100_000_000}
    return json.dumps([ptu, std])


async def _ingress_batch(
    http: httpx2.AsyncClient, lines: list[dict[str, Any]], deadline_at: float, high: bool
) -> str:
    content = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    up = await http.post("/v1/files", data={"purpose": "batch"},
                         files={"file": ("in.jsonl", content, "application/jsonl")})  # fmt: skip
    up.raise_for_status()
    iso = datetime.fromtimestamp(deadline_at, UTC).isoformat()
    body = {"input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": {"deadline": iso}}  # fmt: skip
    headers = {"x-priority": "high"} if high else {}
    created = await http.post("/v1/batches", json=body, headers=headers)
    created.raise_for_status()
    return str(created.json()["id"])


async def _wait_ingress(http: httpx2.AsyncClient, batch_id: str, until: float) -> dict[str, Any]:
    while True:
        batch: dict[str, Any] = (await http.get(f"/v1/batches/{batch_id}")).json()
        if batch["status"] in TERMINAL or time.time() > until:
            return batch
        await asyncio.sleep(1.0)


def _global_batch(
    stack: Stack, lines: list[dict[str, Any]], until: float
) -> tuple[Any, list[dict[str, Any]]]:
    """Submit the whole batch to the Global Batch deployment; its end state and answers."""
    client = openai.AzureOpenAI(
        azure_endpoint=stack.sim_url, api_key=stack.sim.api_key, api_version=API_VERSION
    )
    try:
        content = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
        up = client.files.create(file=("in.jsonl", content), purpose="batch")
        batch = client.batches.create(
            input_file_id=up.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        while batch.status not in TERMINAL and time.time() < until:
            time.sleep(1.0)
            batch = client.batches.retrieve(batch.id)
        rows = []
        if batch.output_file_id:
            text = client.files.content(batch.output_file_id).text
            rows = [json.loads(x) for x in text.splitlines() if x]
        return batch, rows
    finally:
        client.close()


def _docs_of_rows(rows: list[dict[str, Any]], ended: float) -> list[ResultDocument]:
    """The Global Batch's answers as result documents (for one tally of every policy)."""
    return [
        ResultDocument(
            id=r["custom_id"], custom_id=r["custom_id"], status="completed", status_code=200,
            response=r["response"]["body"], usage=r["response"]["body"]["usage"],
            deployment=GB, enqueued_at=ended, completed_at=ended,
        )
        for r in rows
    ]  # fmt: skip


async def _batch_run(
    stack: Stack, cfg: DeadlineConfig, policy: str, n: int, deadline_at: float
) -> tuple[list[ResultDocument], dict[str, Any]]:
    """Run the batch under `policy`; its result documents and the batch's own fields."""
    until = deadline_at + cfg.grace_s
    if policy == "batch-only":
        lines = [batch_line(i, GB, cfg.line_max_tokens) for i in range(n)]
        batch, rows = await asyncio.to_thread(_global_batch, stack, lines, until)
        ended = float(batch.completed_at or batch.expired_at or time.time())
        return _docs_of_rows(rows, ended), {}
    model = STD if policy == "payg-only" else PTU
    lines = [batch_line(i, model, cfg.line_max_tokens) for i in range(n)]
    redis = aioredis.Redis.from_url(stack.redis_url)
    try:
        async with httpx2.AsyncClient(base_url=stack.ingress_url, timeout=60.0) as http:
            batch_id = await _ingress_batch(http, lines, deadline_at, policy == "payg-only")
            await _wait_ingress(http, batch_id, until)
        fields = await BatchStore(redis).fields(batch_id)
        return await results(redis, batch_id), fields
    finally:
        await redis.aclose()


async def one_policy(
    stack: Stack, cfg: DeadlineConfig, policy: str, n: int, seed: int
) -> dict[str, Any]:
    """Interactive traffic over the span and the batch beside it; the policy's row."""
    clock = Clock()
    deadline_at = clock.t0 + cfg.deadline_s
    hp: list[HpRecord] = []
    limits = httpx2.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx2.AsyncClient(timeout=120.0, limits=limits) as client:
        interactive = asyncio.create_task(run_interactive(
            client, chat_url(stack.ingress_url, PTU), interactive_calls(cfg, seed), clock,
            {"x-priority": "high"}, hp,
        ))  # fmt: skip
        docs, fields = await _batch_run(stack, cfg, policy, n, deadline_at)
        await interactive
    return row(cfg, policy, n, docs, fields, clock.t0, deadline_at, hp)


def row(
    cfg: DeadlineConfig, policy: str, n: int, docs: list[ResultDocument], fields: dict[str, str],
    t0: float, deadline_at: float, hp: list[HpRecord],
) -> dict[str, Any]:  # fmt: skip
    """What one policy's run measured."""
    entries = _entries(cfg)
    tally = Tally([entries["flex"], entries["standard"], entries["batch"]]
                  if policy != "payg-only" else [entries["standard"]])  # fmt: skip
    done = [d for d in docs if d.status == "completed"]
    for d in done:
        tally.add(d)
    summary = tally.as_dict()
    tokens = {
        k: int(v["prompt_tokens"] + v["completion_tokens"]) for k, v in summary["targets"].items()
    }
    total = sum(tokens.values()) or 1
    last = max((d.completed_at for d in done), default=None)
    met = len(done) == n and last is not None and last <= deadline_at
    first = json.loads(fields.get("forecast_first") or "null")
    predicted = actual = None
    if first is not None:
        line_tokens = (
            float(fields["line_tokens_in"]) + float(fields["line_tokens_out"]) * cfg.output_weight
        )
        predicted = first["rate"] * (deadline_at - first["at"])
        on_ptu = [
            d for d in done if d.deployment == PTU and first["at"] < d.completed_at <= deadline_at
        ]
        actual = len(on_ptu) * line_tokens
    return {
        "policy": policy,
        "met_deadline": met,
        "cost": summary["total_cost"],
        "hp_429": sum(1 for r in hp if r.status == 429),
        "hp_calls": len(hp),
        "lines": n,
        "lines_done": len(done),
        "completion_s": None if last is None else round(last - t0, 1),
        "deadline_s": cfg.deadline_s,
        "token_share": {k: round(v / total, 3) for k, v in sorted(tokens.items())},
        "tokens": tokens,
        "forecast_tokens": None if predicted is None else round(predicted),
        "ptu_tokens_after_forecast": None if actual is None else round(actual),
        "forecast_error": forecast_error(predicted, actual or 0.0),
    }


def _stack_options(cfg: DeadlineConfig) -> SimulatorOptions:
    return SimulatorOptions(
        deployment=PTU, ptus=int(cfg.ptus), window_s=60.0, tbt_ms=5.0, ttft_ms=100.0,
        flex_contention=cfg.flex_contention, batch_turnaround_s=cfg.batch_turnaround_s,
        specs=(f"{PTU}=gpt-4o-mini:{cfg.ptus:g}", f"{STD}=gpt-4o-mini:100000000:standard",
               f"{GB}=gpt-4o-mini:100000000:globalbatch"),
    )  # fmt: skip


def run_deadline(
    cfg: DeadlineConfig, out: Path, seed: int, policies: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Every policy, then the `fits` scenario; writes results.json, fits.json, results.md."""
    out.mkdir(parents=True, exist_ok=True)
    n = cfg.lines(cfg.factor)
    rows: list[dict[str, Any]] = []
    with sigterm_as_interrupt(), Stack(out / "run", _stack_options(cfg)) as stack:
        stack.start_redis()
        stack.start_simulator()
        for policy in (*policies, "fits"):
            overflow = policy in ("planned", "fits")
            env = {"PTU_DEPLOYMENTS": _deployments(cfg, overflow),
                   "PTU_MAX_CONCURRENCY": str(cfg.max_concurrency)}  # fmt: skip
            prepare(stack, Policy(policy, policy, "queued", env), workers=1)
            if policy == "fits":
                fits = asyncio.run(
                    one_policy(stack, cfg, "planned", cfg.lines(cfg.fits_factor), seed)
                )
            else:
                rows.append(asyncio.run(one_policy(stack, cfg, policy, n, seed)))
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "fits.json").write_text(json.dumps(fits, indent=2) + "\n")
    write_report(out, cfg, rows, fits)
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--deadline-s`, `--factor`, `--policies` override the sizes."""
    parser.add_argument("--deadline-s", type=float, default=None, help="span to the deadline")
    parser.add_argument(
        "--factor", type=float, default=None, help="the batch needs this many times the idle PTU"
    )
    parser.add_argument("--policies", default="ptu-only,payg-only,batch-only,planned")


def run(args: argparse.Namespace) -> int:
    """Run and print the report."""
    logs.configure("warning", "console")
    cfg = QUICK if args.quick else DeadlineConfig()
    overrides = {"deadline_s": args.deadline_s, "factor": args.factor}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v})
    policies = tuple(p for p in args.policies.split(",") if p)
    run_deadline(cfg, Path(args.out), args.seed, policies)
    print((Path(args.out) / "results.md").read_text())
    return 0

"""Overflow to a Batch deployment, through the unchanged `openai` SDK, the ingress and the
simulator's Global Batch deployment over loopback (no worker: the PTU absorbs nothing, so
every line leaves): the lines go out as one remote batch, come back merged into our batch's
output line by line with their `custom_id`, and the lines the remote batch failed run again
on the standard deployment; each line has exactly one result."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
import redis.asyncio as aioredis

from ingress.server import IngressThread
from orchestrator.cli.batch_costs import batch_rows
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests.integration.test_ingress_batch import _jsonl, _line
from tests.support.stacks import flush, ingress_on

OVERFLOW = [
    {"name": "gb", "kind": "batch", "price_in": 0.075, "price_out": 0.3, "turnaround_s": 2},
    {"name": "std", "kind": "standard", "price_in": 0.15, "price_out": 0.6},
]
DEPLOYMENTS: list[dict[str, Any]] = [
    {"name": "ptu", "model": "gpt-4o-mini", "ptus": 15, "overflow": OVERFLOW},
    {"name": "std", "model": "gpt-4o-mini", "kind": "standard", "tpm": 10_000_000},
]
LINES = 40


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs(
        ["ptu=gpt-4o-mini:15", "std=gpt-4o-mini:10000000:standard",
         "gb=gpt-4o-mini:10000000:globalbatch"],
        tbt_ms=0.0, ttft_ms=0.0, api_key="k", batch_turnaround_s=2.0, batch_failure_rate=0.25,
    )  # fmt: skip
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture(scope="module")
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    flush(redis_url)
    with ingress_on(redis_url, sim, "k", deployments=DEPLOYMENTS) as server:
        yield server


async def test_lines_go_to_the_batch_deployment_and_come_back_once(
    sim: SimulatorThread, ingress: IngressThread, redis: aioredis.Redis
) -> None:
    client = openai.AsyncOpenAI(base_url=ingress.url + "/v1", api_key="unused", max_retries=0)
    lines = [_line(i, max_tokens=20) for i in range(LINES)]
    uploaded = await client.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="1m",  # type: ignore[arg-type]  # the SDK's type knows OpenAI's 24h only
    )
    end = time.monotonic() + 90
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        assert time.monotonic() < end, f"batch did not finish: {batch}"
        await asyncio.sleep(0.3)
        batch = await client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert batch.output_file_id is not None and batch.error_file_id is None
    out = [
        json.loads(x) for x in (await client.files.content(batch.output_file_id)).text.splitlines()
    ]
    await client.close()
    assert sorted(o["custom_id"] for o in out) == sorted(f"q-{i}" for i in range(LINES))
    targets = (batch.model_extra or {})["usage_by_target"]["targets"]
    on_gb, on_std = targets["gb"]["lines"], targets.get("std", {}).get("lines", 0)
    assert on_gb + on_std == LINES and "ptu" not in targets
    assert 0 < on_std < LINES  # the remote failures (a quarter, drawn) ran again, synchronously
    state = httpx2.get(f"{sim.url}/sim/state").json()
    assert state["global_batch"]["tokens"]["lines"] == on_gb
    # `ptu usage --by batch`: the batch, where its lines ran, what it cost
    (row,) = [r for r in await batch_rows(redis, ["default"], 0, time.time() + 1)
              if r["batch"] == batch.id]  # fmt: skip
    assert row["ptu_tokens"] == 0 and row["overflow_tokens"] > 0
    assert row["cost"] == (batch.model_extra or {})["usage_by_target"]["total_cost"] > 0
    assert row["targets"] == f"gb:{on_gb} std:{on_std}"
    assert state["deployments"]["std"]["requests"] == on_std

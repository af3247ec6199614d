"""A batch with a deadline the PTU cannot meet alone, through the unchanged `openai` SDK,
the ingress, a `ptu worker` process and the simulator over loopback: the planner moves the
tail of the batch to Flex on a standard deployment, and every line gets exactly one
result, from exactly one place, with its `custom_id`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from ingress.server import IngressThread
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests.integration.test_ingress_batch import _jsonl, _line, worker_process
from tests.support.stacks import flush, ingress_on

OVERFLOW = [{"name": "std", "kind": "flex", "price_in": 0.075, "price_out": 0.3},
            {"name": "std", "kind": "standard", "price_in": 0.15, "price_out": 0.6}]  # fmt: skip
DEPLOYMENTS: list[dict[str, Any]] = [
    {"name": "ptu", "model": "gpt-4o-mini", "ptus": 15, "max_concurrency": 1,
     "overflow": OVERFLOW},
    {"name": "std", "model": "gpt-4o-mini", "kind": "standard", "tpm": 10_000_000},
]  # fmt: skip
LINES = 60


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    # one line at a time on the PTU, a second each: about 45 of 60 fit before a 60 s deadline
    # less its guard; Flex refuses a fifth of its calls (they move on to standard)
    config = SimConfig.from_specs(
        ["ptu=gpt-4o-mini:15", "std=gpt-4o-mini:10000000:standard"],
        tbt_ms=0.0, ttft_ms=1000.0, api_key="k", flex_contention=0.2,
    )  # fmt: skip
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture(scope="module")
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    flush(redis_url)
    with ingress_on(redis_url, sim, "k", deployments=DEPLOYMENTS) as server:
        yield server


async def _wait(client: openai.AsyncOpenAI, batch_id: str, timeout_s: float) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        await asyncio.sleep(0.2)
    raise AssertionError(f"batch {batch_id} did not finish: {batch}")


async def test_a_short_deadline_overflows_the_tail_and_every_line_has_one_result(
    sim: SimulatorThread, ingress: IngressThread, redis_url: str
) -> None:
    client = openai.AsyncOpenAI(base_url=ingress.url + "/v1", api_key="unused", max_retries=0)
    lines = [_line(i, max_tokens=20) for i in range(LINES)]
    with worker_process(redis_url, sim.url, DEPLOYMENTS, "ptu"):
        uploaded = await client.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="1m",  # type: ignore[arg-type]  # the SDK's type knows OpenAI's 24h only
        )
        assert batch.expires_at is not None and batch.expires_at - batch.created_at == 60
        assert (
            batch.model_extra is not None and batch.model_extra["deadline_at"] == batch.expires_at
        )
        done = await _wait(client, batch.id, 90)
    out: list[dict[str, Any]] = []
    for file_id in (done.output_file_id, done.error_file_id):
        if file_id:
            out += [json.loads(x) for x in (await client.files.content(file_id)).text.splitlines()]
    await client.close()
    assert done.status == "completed"
    assert done.completed_at <= done.expires_at
    ids = [o["custom_id"] for o in out]
    assert sorted(ids) == sorted(f"q-{i}" for i in range(LINES))  # each once
    assert all(o["error"] is None for o in out)
    extra = done.model_extra or {}
    forecast, usage = extra["forecast"], extra["usage_by_target"]
    assert forecast["overflow_lines"] > 0
    # where each line ran, from the answers: the PTU's, or std's (flex or default tier)
    on_std = forecast["overflow_lines"]
    assert 0 < on_std < LINES
    targets = usage["targets"]
    assert targets["ptu"]["lines"] == LINES - on_std
    assert (
        targets.get("std:flex", {}).get("lines", 0) + targets.get("std", {}).get("lines", 0)
        == on_std
    )
    assert usage["total_cost"] > 0 and targets["ptu"]["cost"] == 0
    # each moved line was called once at std (refused Flex calls are not served calls), and
    # the PTU served the others
    state = httpx2.get(f"{sim.url}/sim/state").json()
    assert state["deployments"]["std"]["requests"] == on_std
    assert state["deployments"]["ptu"]["requests"] >= LINES - on_std
    flex = [o for o in out if o["response"]["body"].get("service_tier") == "flex"]
    assert len(flex) == targets.get("std:flex", {}).get("lines", 0)

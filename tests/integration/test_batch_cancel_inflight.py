"""Cancelling a batch while a worker runs its lines: every line is counted once, and the
lines already at the deployment when the cancel came (their tokens are spent) have their
results in the output file. A real ingress and a real `ptu worker` on a slow simulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx2
import openai
import pytest

from ingress.server import IngressThread
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode
from tests.integration.test_ingress_batch import (
    DEPLOYMENTS,
    _jsonl,
    _line,
    _settings,
    _wait_terminal,
    worker_process,
)

LINES = 30


@pytest.fixture(scope="module", autouse=True)
def _fresh_redis(redis_url: str) -> None:
    with redis_mode.connect_sync(redis_url) as client:
        client.flushdb()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    # every call takes ~1.5 s: a cancel 2 s after creation finds lines at the deployment
    config = SimConfig.from_specs(["ptu=gpt-4o-mini:15"], tbt_ms=50.0, ttft_ms=0.0)
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture(scope="module")
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    with IngressThread(_settings(redis_url, sim)) as server:
        yield server


def _sim_state(sim: SimulatorThread) -> dict[str, int]:
    return httpx2.get(sim.url + "/sim/state").json()["deployments"]["ptu"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("when", ["in_flight", "at_once"])
async def test_a_cancel_counts_every_line_once_and_keeps_in_flight_results(
    ingress: IngressThread, sim: SimulatorThread, redis_url: str, when: str
) -> None:
    before = _sim_state(sim)["requests"]
    lines = [_line(i, max_tokens=30) for i in range(LINES)]
    async with openai.AsyncOpenAI(
        base_url=ingress.url + "/v1", api_key="unused", max_retries=0
    ) as client:
        uploaded = await client.files.create(file=("c.jsonl", _jsonl(lines)), purpose="batch")
        with worker_process(redis_url, sim.url, DEPLOYMENTS, "ptu", PTU_MAX_CONCURRENCY="8"):
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            for _ in range(400 if when == "in_flight" else 0):  # lines at the deployment
                if _sim_state(sim)["in_flight"] > 0:
                    break
                await asyncio.sleep(0.025)
            assert when == "at_once" or _sim_state(sim)["in_flight"] > 0
            await client.batches.cancel(batch.id)
            done = await _wait_terminal(client, batch.id)
            started = _sim_state(sim)["requests"] - before
        counts = done.request_counts
        assert done.status == "cancelled"
        assert (counts.total, counts.completed + counts.failed) == (LINES, LINES), counts
        output = (
            (await client.files.content(done.output_file_id)).text.splitlines()
            if done.output_file_id
            else []
        )
        errors = (
            (await client.files.content(done.error_file_id)).text.splitlines()
            if done.error_file_id
            else []
        )
    ok = [json.loads(x) for x in output]
    failed = [json.loads(x) for x in errors]
    custom_ids = sorted(x["custom_id"] for x in ok + failed)
    assert custom_ids == sorted(f"q-{i}" for i in range(LINES))  # every line once
    # every call the deployment ran (tokens spent) is in the output, none reported cancelled
    assert started > 0 or when == "at_once"
    assert len(ok) == counts.completed == started
    assert all(x["response"]["status_code"] == 200 for x in ok)
    assert {x["error"]["code"] for x in failed} <= {"batch_cancelled"}

"""Acceptance: a batch on a PTU with deployment-level spillover (the simulator's
`spill=STD`, as ARM's `spilloverDeploymentName`), through the unchanged `openai` SDK, the
ingress, a `ptu worker` process and the simulator over loopback. The spilled low-priority
calls are counted (`ptu_worker_spilled_total`), charged to the standard
deployment (`ptu usage --by deployment`, with its pay-as-you-go cost); with
`low_priority_spill: fail` no result of the batch comes from the standard deployment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from ingress.server import IngressThread
from orchestrator.core.serving import free_port
from orchestrator.core.settings import load_settings
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode
from tests.integration.test_ingress_batch import _jsonl, _line, _wait_terminal, worker_process

PAYGO = {
    "name": "paygo", "model": "gpt-4o-mini", "kind": "standard", "tpm": 10_000_000,
    "input_price_per_mtok": 0.15, "output_price_per_mtok": 0.6,
}  # fmt: skip
DEPLOYMENTS = [
    {"name": "keep", "model": "gpt-4o-mini", "ptus": 15},
    {"name": "fail", "model": "gpt-4o-mini", "ptus": 15, "low_priority_spill": "fail"},
    PAYGO,
]
LINES = 4


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs(
        [
            "keep=gpt-4o-mini:15:spill=paygo",
            "fail=gpt-4o-mini:15:spill=paygo",
            "paygo=gpt-4o-mini:10000000:standard",
        ],
        tbt_ms=0.0, ttft_ms=2000.0,
    )  # fmt: skip
    # Each spill pauses the lane and the estimate then reads the PTU as full, as it is: the
    # worker takes no more lines until it empties. A 2 s first token keeps every line's call
    # in flight before the first spill is known, so all of them go out and spill.
    with SimulatorThread(config) as server:
        for name in ("keep", "fail"):  # one admitted call keeps 0.001 PTU full for hours
            httpx2.patch(f"{server.url}/sim/deployments/{name}", json={"ptus": 0.001})
            httpx2.post(
                f"{server.url}/openai/deployments/{name}/chat/completions?api-version=2024-10-21",
                json={"messages": [{"role": "user", "content": "fill"}], "max_tokens": 2000},
                headers={"api-key": "k", "x-sim-completion-tokens": "2000"},
            ).raise_for_status()
        yield server


@pytest.fixture(scope="module")
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    # nothing an earlier module left: `ptu usage` below must see this module's calls only
    with redis_mode.connect_sync(redis_url) as client:
        client.flushdb()
    settings = load_settings(
        redis_url=redis_url,
        redis_cluster=redis_mode.CLUSTER,
        azure_openai_endpoint=sim.url,
        azure_openai_api_key="k",
        deployments=DEPLOYMENTS,
    )
    with IngressThread(settings) as server:
        yield server


async def _batch(ingress: IngressThread, model: str) -> tuple[Any, list[dict[str, Any]]]:
    client = openai.AsyncOpenAI(base_url=ingress.url + "/v1", api_key="unused", max_retries=0)
    lines = [_line(i, model=model, max_tokens=20) for i in range(LINES)]
    uploaded = await client.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await _wait_terminal(client, batch.id)
    out: list[dict[str, Any]] = []
    for file_id in (done.output_file_id, done.error_file_id):
        if file_id:
            text = (await client.files.content(file_id)).text
            out += [json.loads(x) for x in text.splitlines()]
    await client.close()
    return done, out


def _spilled_total(metrics: str, deployment: str) -> float:
    labels = f'deployment="{deployment}",tenant="default",to="paygo"'
    found = re.findall(rf"ptu_worker_spilled_total\{{{labels}\}} (\S+)", metrics)
    return float(found[0]) if found else 0.0


def _state(sim: SimulatorThread) -> dict[str, Any]:
    state: dict[str, Any] = httpx2.get(f"{sim.url}/sim/state").json()["deployments"]
    return state


async def test_spilled_batch_lines_are_counted_paused_on_and_charged_at_payg(
    sim: SimulatorThread, ingress: IngressThread, redis_url: str
) -> None:
    port = free_port()
    with worker_process(
        redis_url, sim.url, DEPLOYMENTS, "keep", "fail", PTU_METRICS_PORT=str(port)
    ):
        kept, kept_lines = await _batch(ingress, "keep")
        failed, failed_lines = await _batch(ingress, "fail")
        metrics = httpx2.get(f"http://127.0.0.1:{port}/metrics").text
    state = _state(sim)
    # keep: every line answered, by the standard deployment, each spill counted
    assert kept.status == "completed" and kept.request_counts.completed == LINES
    assert all(o["response"]["status_code"] == 200 for o in kept_lines)
    assert state["keep"]["spilled"] == LINES and _spilled_total(metrics, "keep") == LINES
    # fail: no result came from the standard deployment, though each call was served there
    assert failed.request_counts.completed == 0 and failed.request_counts.failed == LINES
    for line in failed_lines:
        assert line["response"]["status_code"] == 409
        assert line["error"]["code"] == "spillover_discarded"
    assert state["fail"]["spilled"] == LINES and _spilled_total(metrics, "fail") == LINES
    assert state["paygo"]["spillover_served"] == 2 * LINES
    assert 'ptu_worker_results_total{deployment="keep",status="completed"} 4.0' in metrics
    usage = subprocess.run(  # noqa: ASYNC221 (the verb as a user runs it, once, at the end)
        [sys.executable, "-m", "orchestrator", "usage", "--by", "deployment", "--format", "json",
         "--since", "2h"],
        env=_env(redis_url), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = {r["deployment"]: r for r in json.loads(usage.stdout)["rows"]}
    assert set(rows) == {"paygo"}  # nothing charged to the PTUs
    assert rows["paygo"]["requests"] == 2 * LINES and rows["paygo"]["payg_cost"] > 0


def _env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTU_")}
    env.update(**redis_mode.env(redis_url), PTU_DEPLOYMENTS=json.dumps(DEPLOYMENTS))
    return env

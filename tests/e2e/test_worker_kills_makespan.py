"""A 600-line batch with 3 worker SIGKILLs: every line once, and the makespans side by side.

One stack (Redis with AOF, the simulator, the ingress, the estimator) runs the same batch
twice through the Batch API with two workers at the default settings: once untouched,
then with a worker SIGKILLed at a quarter, half and three quarters of the lines (each
replaced at once). A dead worker's leased slots and in-flight entries must move within
seconds (slot lease, consumer liveness), or the survivors idle and the ratio grows.
The target (3 kills within 1.5 x the untouched makespan) is a timing goal: the test
prints both makespans and their ratio (`pytest -s`) and asserts only correctness, so a
loaded machine cannot fail it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from devstack.stack import API_KEY, SimulatorOptions, Stack
from orchestrator.core import keys
from tests.e2e.worker_helpers import MESSAGES, sigkill, wait_for

DEPLOYMENT = "kill-ptu"
N = 600
MAX_RATIO = 1.5


def _submit(http: httpx2.Client, tag: str) -> str:
    lines = [
        {"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": DEPLOYMENT, "messages": MESSAGES, "max_tokens": 10}}
        for i in range(N)
    ]  # fmt: skip
    content = "\n".join(json.dumps(line) for line in lines) + "\n"
    up = http.post(
        "/v1/files",
        data={"purpose": "batch"},
        files={"file": (f"{tag}.jsonl", content.encode(), "application/jsonl")},
    )
    up.raise_for_status()
    body = {"input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}  # fmt: skip
    created = http.post("/v1/batches", json=body)
    created.raise_for_status()
    return str(created.json()["id"])


def _batch(http: httpx2.Client, batch_id: str) -> dict[str, Any]:
    resp = http.get(f"/v1/batches/{batch_id}")
    resp.raise_for_status()
    doc: dict[str, Any] = resp.json()
    return doc


def _done(http: httpx2.Client, batch_id: str) -> int:
    counts = _batch(http, batch_id)["request_counts"]
    return int(counts["completed"]) + int(counts["failed"])


def _run(
    stack: Stack, http: httpx2.Client, env: dict[str, str], tag: str, kill_at: list[int]
) -> tuple[float, dict[str, Any]]:
    """Makespan (batch created to completed) and the final batch, killing at `kill_at`."""
    started = time.monotonic()
    batch_id = _submit(http, tag)
    for n, threshold in enumerate(kill_at):
        wait_for(lambda t=threshold: _done(http, batch_id) >= t, stack, 120, interval_s=0.1)
        victim = sorted(name for name in stack.children if name.startswith("worker"))[n % 2]
        sigkill(stack, victim)
        stack.start_worker(env, name=f"{victim}-{tag}{n}")
    wait_for(lambda: _batch(http, batch_id)["status"] == "completed", stack, 180, interval_s=0.1)
    return time.monotonic() - started, _batch(http, batch_id)


@pytest.mark.timeout(600)
def test_three_sigkills_cost_at_most_half_the_makespan(tmp_path: Path) -> None:
    sim = SimulatorOptions(deployment=DEPLOYMENT, ptus=100, window_s=10, tbt_ms=0, ttft_ms=250)
    with Stack(tmp_path, sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        client = redis.Redis.from_url(stack.redis_url)
        env = stack.base_env()  # the defaults: slot lease, liveness, claim idle
        stack.start_ingress(env)
        stack.start_estimator(env)
        for name in ("worker-a", "worker-b"):
            stack.start_worker(env, name=name)
        with httpx2.Client(
            base_url=stack.ingress_url, headers={"api-key": API_KEY}, timeout=30
        ) as http:
            calm_s, calm = _run(stack, http, env, "calm", [])
            kills = [N // 4, N // 2, 3 * N // 4]
            killed_s, killed = _run(stack, http, env, "kill", kills)
            # a batch line's result is stored once; its output file has one line per custom_id
            outputs = [
                http.get(f"/v1/files/{b['output_file_id']}/content").text.splitlines()
                for b in (calm, killed)
            ]
        replies = [len({json.loads(x)["custom_id"] for x in out}) for out in outputs]
        assert [len(out) for out in outputs] == [N, N]
        print(
            f"\n{N}-line batch, 2 workers: no kill {calm_s:.1f} s, 3 SIGKILLs {killed_s:.1f} s "
            f"(ratio {killed_s / calm_s:.2f}, target <= {MAX_RATIO}); counts "
            f"{calm['request_counts']} / {killed['request_counts']}; replies {replies}"
        )
        for batch in (calm, killed):
            assert batch["request_counts"] == {"total": N, "completed": N, "failed": 0}
        assert replies == [N, N]  # every line one result: none lost, none twice
        assert client.xlen(keys.dead_letter(DEPLOYMENT)) == 0
        client.close()

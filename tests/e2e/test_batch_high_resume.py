"""A high-priority batch whose ingress is SIGKILLed mid-run is resumed by the next ingress."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest
import redis

from devstack.stack import SimulatorOptions, Stack
from orchestrator.core import keys
from tests.e2e.worker_helpers import batch_input, sigkill, wait_for

DEPLOYMENT = "resume-ptu"
N = 40


@pytest.mark.timeout(300)
def test_a_high_priority_batch_survives_its_ingress(tmp_path: Path) -> None:
    # two lines at a time, 250 ms each: the run takes ~5 s, killed a quarter of the way
    sim = SimulatorOptions(
        deployment=DEPLOYMENT, model="gpt-4o-mini", ptus=500, window_s=10, tbt_ms=0, ttft_ms=250
    )
    with Stack(tmp_path, sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        env = stack.base_env(PTU_FILES_DIR=str(tmp_path / "files"), PTU_MAX_CONCURRENCY="2")
        url = stack.start_ingress(env)
        body = batch_input(DEPLOYMENT, N, 5)
        up = httpx2.post(f"{url}/v1/files", files={"file": ("in.jsonl", body)},
                         data={"purpose": "batch"}, timeout=60)  # fmt: skip
        assert up.status_code == 200, up.text
        created = httpx2.post(
            f"{url}/v1/batches", timeout=30, headers={"x-priority": "high"},
            json={"input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions",
                  "completion_window": "24h"},
        )  # fmt: skip
        assert created.status_code == 200, created.text
        batch_id = created.json()["id"]

        def field(name: str) -> str | None:
            value = client.hget(keys.batch(batch_id), name)
            return None if value is None else str(value)

        wait_for(lambda: int(field("completed") or 0) >= N // 4, stack, 60, interval_s=0.01)
        sigkill(stack, "ingress")
        done_at_kill = int(field("completed") or 0)
        assert done_at_kill < N and field("status") == "in_progress"
        url = stack.start_ingress(env)  # a restart: its sweeper finds the run gone
        wait_for(lambda: field("status") == "completed", stack, 90)

        batch = httpx2.get(f"{url}/v1/batches/{batch_id}", timeout=30).json()
        assert batch["request_counts"] == {"total": N, "completed": N, "failed": 0}
        out = httpx2.get(f"{url}/v1/files/{batch['output_file_id']}/content", timeout=60)
        ids = [json.loads(line)["custom_id"] for line in out.text.splitlines()]
        assert ids == [f"c-{i}" for i in range(N)]  # one line per custom_id: none lost, none twice
        client.close()
    print(f"\nhigh-priority batch: {done_at_kill}/{N} lines done at the SIGKILL, resumed to {N}")

"""A batch completes with exactly one output line per custom_id when the ingress is
SIGKILLed while it expands the batch and the worker is SIGKILLed while it runs it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx2
import pytest
import redis

from devstack.stack import SimulatorOptions, Stack
from orchestrator.core import keys
from tests.e2e.worker_helpers import batch_input, sigkill, wait_for

DEPLOYMENT = "kill-ptu"
N = 4_000


@pytest.mark.timeout(400)
def test_ingress_and_worker_sigkilled_once_each(tmp_path: Path) -> None:
    sim = SimulatorOptions(
        deployment=DEPLOYMENT, model="gpt-4o-mini", ptus=2000, window_s=10, tbt_ms=0, ttft_ms=0
    )
    with Stack(tmp_path, sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        env = stack.base_env(
            PTU_FILES_DIR=str(tmp_path / "files"),
            PTU_MAX_CONCURRENCY="32",
            PTU_QUEUE_CLAIM_IDLE_S="1",  # a restarted worker reclaims the dead one's entries
            PTU_QUEUE_LIVENESS_S="2",
            PTU_SLOT_LEASE_S="2",
        )
        url = stack.start_ingress(env)
        body = batch_input(DEPLOYMENT, N, 5)
        up = httpx2.post(f"{url}/v1/files", files={"file": ("in.jsonl", body)},
                         data={"purpose": "batch"}, timeout=60)  # fmt: skip
        assert up.status_code == 200, up.text
        created = httpx2.post(f"{url}/v1/batches", timeout=30, json={
            "input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        })  # fmt: skip
        assert created.status_code == 200 and created.json()["status"] == "validating"
        batch_id = created.json()["id"]

        def field(name: str) -> str | None:
            value = client.hget(keys.batch(batch_id), name)
            return None if value is None else str(value)

        # 1. the ingress dies (with its job process) half-way through the expansion
        wait_for(lambda: int(field("cursor") or 0) > 0, stack, 60, interval_s=0.005)
        sigkill(stack, "ingress")
        cursor_at_kill = int(field("cursor") or 0)
        assert 0 < cursor_at_kill < N and field("expanded") is None
        time.sleep(1.0)
        assert int(field("cursor") or 0) == cursor_at_kill  # nothing expands without it
        # the job lease of the dead process runs out; a new ingress resumes from the cursor
        url = stack.start_ingress(env)
        wait_for(lambda: field("expanded") == "1", stack, 120)
        assert (
            client.xlen(keys.tenant_queue(DEPLOYMENT, "default", "batch")) == N
        )  # every line queued, none twice

        # 2. the worker dies mid-run; a new one takes over its entries
        stack.start_worker(env, name="worker-1")
        wait_for(lambda: int(field("completed") or 0) >= N // 4, stack, 120)
        sigkill(stack, "worker-1")
        done_at_kill = int(field("completed") or 0)
        assert done_at_kill < N
        stack.start_worker(env, name="worker-2")
        wait_for(lambda: field("status") == "completed", stack, 180)

        batch = httpx2.get(f"{url}/v1/batches/{batch_id}", timeout=30).json()
        assert batch["request_counts"] == {"total": N, "completed": N, "failed": 0}
        assert batch["error_file_id"] is None
        out = httpx2.get(f"{url}/v1/files/{batch['output_file_id']}/content", timeout=60)
        ids = [json.loads(line)["custom_id"] for line in out.text.splitlines()]
        assert ids == [f"c-{i}" for i in range(N)]  # exactly one line per custom_id, in order
        client.close()

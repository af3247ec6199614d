"""Exactly once through kills during overflow: a batch whose deadline the PTU cannot meet
alone is overflowing its tail to a standard deployment when the ingress and the worker are
both SIGKILLed; restarted, they finish it, and every line has exactly one result, from one
place (the new ingress takes the dead one's claims over after their lease)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from time import time

import httpx2
import pytest
import redis

from devstack.stack import SimulatorOptions, Stack
from orchestrator.core import keys
from tests.e2e.worker_helpers import batch_input, sigkill, wait_for

PTU, STD = "kptu", "kstd"
N = 150
DEADLINE_S = 110.0
DEPLOYMENTS = [
    {"name": PTU, "model": "gpt-4o-mini", "ptus": 1, "max_concurrency": 1,
     "overflow": [{"name": STD, "kind": "standard", "price_in": 0.15, "price_out": 0.6}]},
    {"name": STD, "model": "gpt-4o-mini", "kind": "standard", "tpm": 100_000_000},
]  # fmt: skip


@pytest.mark.timeout(400)
def test_ingress_and_worker_sigkilled_mid_overflow(tmp_path: Path) -> None:
    sim = SimulatorOptions(
        deployment=PTU, ptus=1, window_s=60, tbt_ms=20, ttft_ms=600,
        specs=(f"{PTU}=gpt-4o-mini:1", f"{STD}=gpt-4o-mini:100000000:standard"),
    )  # fmt: skip
    with Stack(tmp_path, sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        env = stack.base_env(
            PTU_DEPLOYMENTS=json.dumps(DEPLOYMENTS), PTU_FILES_DIR=str(tmp_path / "files"),
            PTU_QUEUE_CLAIM_IDLE_S="1", PTU_QUEUE_LIVENESS_S="2", PTU_SLOT_LEASE_S="2",
            # a dead claimant's lines are taken over after 2 x (3 + 1) + 10 = 18 s
            PTU_MAX_ATTEMPTS="2", PTU_REQUEST_TIMEOUT_S="3", PTU_BACKOFF_MAX_S="1",
        )  # fmt: skip
        url = stack.start_ingress(env)
        stack.start_worker(env, name="worker-1")
        up = httpx2.post(f"{url}/v1/files", files={"file": ("in.jsonl", batch_input(PTU, N, 20))},
                         data={"purpose": "batch"}, timeout=60)  # fmt: skip
        assert up.status_code == 200, up.text
        deadline = datetime.fromtimestamp(time() + DEADLINE_S, UTC).isoformat()
        created = httpx2.post(f"{url}/v1/batches", timeout=30, json={
            "input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": {"deadline": deadline},
        })  # fmt: skip
        assert created.status_code == 200, created.text
        batch_id = created.json()["id"]

        def count(name: str) -> int:
            return int(client.hget(keys.batch(batch_id), name) or 0)

        # overflow calls in flight: both processes die at once
        wait_for(lambda: count("overflow_sent") > count("overflow_done"), stack, 90, 0.005)
        sigkill(stack, "ingress")
        sigkill(stack, "worker-1")
        sent, done = count("overflow_sent"), count("overflow_done")
        assert sent > done
        url = stack.start_ingress(env)
        stack.start_worker(env, name="worker-2")
        wait_for(lambda: client.hget(keys.batch(batch_id), "status") == "completed", stack, 240)

        batch = httpx2.get(f"{url}/v1/batches/{batch_id}", timeout=30).json()
        assert batch["request_counts"] == {"total": N, "completed": N, "failed": 0}
        assert batch["error_file_id"] is None
        out = httpx2.get(f"{url}/v1/files/{batch['output_file_id']}/content", timeout=60)
        ids = [json.loads(line)["custom_id"] for line in out.text.splitlines()]
        assert ids == [f"c-{i}" for i in range(N)]  # exactly one line per custom_id
        targets = batch["usage_by_target"]["targets"]
        on_ptu, on_std = targets[PTU]["lines"], targets[STD]["lines"]
        assert on_ptu + on_std == N and on_std >= sent
        state = httpx2.get(f"{stack.sim_url}/sim/state", timeout=10).json()["deployments"]
        served_ptu = state[PTU]["requests"] - state[PTU]["throttled"] - state[PTU]["errors"]
        # the PTU served its own lines, plus at most the one call cut by the worker's kill
        # (max_concurrency 1), which the new worker ran again: no moved line ran there
        assert on_ptu <= served_ptu <= on_ptu + 1
        assert state[STD]["requests"] >= on_std
        client.close()

"""Exactly-once results when `python -m orchestrator worker` is SIGKILLed mid-run, twice."""

from __future__ import annotations

from pathlib import Path

import httpx2
import redis

from devstack.stack import API_KEY, SimulatorOptions, Stack
from orchestrator.core import keys
from tests.e2e.worker_helpers import enqueue, reply_counts, results_written, sigkill, wait_for

DEPLOYMENT = "crash-ptu"
N = 1_000


def test_two_sigkills_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    sim = SimulatorOptions(
        deployment=DEPLOYMENT, model="gpt-4o-mini", ptus=100, window_s=10, tbt_ms=0, ttft_ms=20
    )
    with Stack(tmp_path, sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        client = redis.Redis.from_url(stack.redis_url)
        ids = enqueue(stack.redis_url, DEPLOYMENT, N)
        env = stack.base_env(
            PTU_MAX_CONCURRENCY="16",
            PTU_QUEUE_CLAIM_IDLE_S="1",  # a restarted worker reclaims the dead one's entries
            PTU_SLOT_LEASE_S="2",  # and the dead one's slots expire quickly
        )
        stack.start_estimator(env)

        kills_at = []
        for n, kill_after in ((1, 200), (2, 550)):
            stack.start_worker(env, name=f"worker-{n}")
            wait_for(lambda k=kill_after: results_written(client, ids) >= k, stack, 40)
            sigkill(stack, f"worker-{n}")
            kills_at.append(results_written(client, ids))
        stack.start_worker(env, name="worker-3")
        wait_for(lambda: results_written(client, ids) == N, stack, 40)

        counts = reply_counts(client, ids)
        state = httpx2.get(f"{stack.sim_url}/sim/state", headers={"api-key": API_KEY}).json()
        low = state["deployments"][DEPLOYMENT]["by_priority"]["low"]
        assert all(200 <= k < N for k in kills_at), kills_at  # both kills happened mid-run
        assert counts == [1] * N  # every id exactly one result: none lost, none duplicated
        assert low["requests"] >= N  # calls in flight at a kill may have run twice
        assert client.xlen(keys.queue(DEPLOYMENT)) == 0
        assert client.xlen(keys.dead_letter(DEPLOYMENT)) == 0
        client.close()

"""A worker SIGKILLed with calls in flight and restarted under the same name (what a
container restarted in its pod gets: same hostname, same pid, same `--worker-id`): its
in-flight messages move at its first receive, not after `PTU_QUEUE_CLAIM_IDLE_S`."""

from __future__ import annotations

from pathlib import Path

import httpx2
import redis

from devstack.stack import API_KEY, SimulatorOptions, Stack
from orchestrator.core import keys
from tests.e2e.worker_helpers import enqueue, reply_counts, results_written, sigkill, wait_for

DEPLOYMENT = "restart-ptu"
N = 8
NAME = ["--worker-id", "pod-0"]


def _in_flight(stack: Stack) -> int:
    state = httpx2.get(f"{stack.sim_url}/sim/state", headers={"api-key": API_KEY}).json()
    return int(state["deployments"][DEPLOYMENT]["in_flight"])


def test_a_restart_under_the_same_name_runs_its_in_flight_messages(tmp_path: Path) -> None:
    # every call takes ~3 s: the kill finds them all at the deployment
    sim = SimulatorOptions(
        deployment=DEPLOYMENT, model="gpt-4o-mini", ptus=100, window_s=10, tbt_ms=150, ttft_ms=0
    )
    with Stack(tmp_path, sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        client = redis.Redis.from_url(stack.redis_url)
        ids = enqueue(stack.redis_url, DEPLOYMENT, N, max_tokens=20)
        env = stack.base_env(
            PTU_MAX_CONCURRENCY=str(N),
            # the safety net far away: only the restart itself can move the messages in time
            PTU_QUEUE_CLAIM_IDLE_S="600",
            PTU_SLOT_LEASE_S="2",
            PTU_LOG_LEVEL="info",
        )
        stack.start_estimator(env)
        stack.start_worker(env, name="worker-1", args=NAME)
        wait_for(lambda: _in_flight(stack) == N, stack, 30)
        assert results_written(client, ids) == 0
        sigkill(stack, "worker-1")
        client.hdel(keys.WORKERS, "pod-0")  # its heartbeat, so the restart is seen as ready
        stack.start_worker(env, name="worker-2", args=NAME)
        wait_for(lambda: results_written(client, ids) == N, stack, 60)
        assert reply_counts(client, ids) == [1] * N
        assert client.xlen(keys.queue(DEPLOYMENT)) == 0
        client.close()
    assert "queue_entries_inherited" in (tmp_path / "logs" / "worker-2.log").read_text()

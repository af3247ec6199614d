"""SIGTERM: the worker process stops pulling, drains in-flight calls, leaves the rest queued."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2
import redis

from devstack.stack import SimulatorOptions, Stack
from orchestrator.core import keys
from tests.e2e.worker_helpers import enqueue, reply_counts, results_written, wait_for

DEPLOYMENT = "drain-ptu"


def low_in_flight(sim_url: str) -> int:
    state = httpx2.get(f"{sim_url}/sim/state", timeout=5).json()
    return int(state["deployments"][DEPLOYMENT]["in_flight_by_priority"].get("low", 0))


def test_sigterm_drains_then_a_drain_timeout_leaves_calls_for_redelivery(tmp_path: Path) -> None:
    sim = SimulatorOptions(
        deployment=DEPLOYMENT, model="gpt-4o-mini", ptus=100, window_s=10, tbt_ms=0, ttft_ms=1500
    )
    with Stack(tmp_path, sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        client = redis.Redis.from_url(stack.redis_url)
        ids = enqueue(stack.redis_url, DEPLOYMENT, 10, max_tokens=1)
        env = stack.base_env(
            PTU_MAX_CONCURRENCY="3",
            PTU_DRAIN_TIMEOUT_S="5",
            PTU_QUEUE_CLAIM_IDLE_S="1",
            PTU_SLOT_LEASE_S="3",
        )
        stack.start_estimator(env)

        # 1. SIGTERM with three 1.5 s calls in flight: they finish, nothing new starts
        stack.start_worker(env, name="worker-1")
        wait_for(lambda: low_in_flight(stack.sim_url) == 3, stack, 20)
        done_before = results_written(client, ids)
        child = stack.children["worker-1"].proc
        stack.stop("worker-1")
        assert child.returncode == 0
        drained = results_written(client, ids)
        assert drained == done_before + 3
        assert client.xlen(keys.queue(DEPLOYMENT)) == 10 - drained  # the rest still queued
        assert client.zcard(keys.slots(DEPLOYMENT)) == 0  # slots handed back
        assert client.hlen(keys.WORKERS) == 0  # heartbeat removed

        # 2. calls longer than the drain timeout are cancelled and left unacknowledged
        httpx2.patch(f"{stack.sim_url}/sim/deployments/{DEPLOYMENT}", json={"ttft_ms": 20_000})
        env2 = {**env, "PTU_DRAIN_TIMEOUT_S": "1"}
        stack.start_worker(env2, name="worker-2")
        wait_for(lambda: low_in_flight(stack.sim_url) == 3, stack, 20)
        child = stack.children["worker-2"].proc
        started = time.monotonic()
        stack.stop("worker-2")
        assert child.returncode == 0 and time.monotonic() - started < 6
        assert results_written(client, ids) == drained
        pending = client.xpending(keys.queue(DEPLOYMENT), "ptu-workers")
        assert pending["pending"] == 3  # owned by the stopped consumer, not acknowledged

        # 3. a new worker reclaims them: every request ends with exactly one result
        httpx2.patch(f"{stack.sim_url}/sim/deployments/{DEPLOYMENT}", json={"ttft_ms": 10})
        stack.start_worker(env, name="worker-3")
        wait_for(lambda: results_written(client, ids) == 10, stack, 30)
        assert reply_counts(client, ids) == [1] * 10
        client.close()

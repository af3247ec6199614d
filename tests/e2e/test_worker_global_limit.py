"""Several worker processes on one queue share one global low-priority limit."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2
import redis

from devstack.stack import SimulatorOptions, Stack
from orchestrator.throttle.policy import concurrency_limit
from tests.e2e.worker_helpers import enqueue, results_written, wait_for

DEPLOYMENT = "shared-ptu"
LIMIT = 6


def sample_peaks(sim_url: str, seconds: float) -> tuple[int, float]:
    """Highest low-priority in-flight count at the simulator, and the highest utilisation."""
    peak, util = 0, 0.0
    end = time.monotonic() + seconds
    with httpx2.Client(timeout=5) as http:
        while time.monotonic() < end:
            state = http.get(f"{sim_url}/sim/state", params={"reset_peaks": "1"}).json()
            d = state["deployments"][DEPLOYMENT]
            peak = max(peak, int(d["peak_in_flight_by_priority"].get("low", 0)))
            util = max(util, float(d["utilization"]))
            time.sleep(0.03)
    return peak, util


def test_two_then_four_workers_never_exceed_the_global_limit(tmp_path: Path) -> None:
    # calls last ~300 ms so every worker keeps wanting more slots than the limit allows
    sim = SimulatorOptions(
        deployment=DEPLOYMENT, model="gpt-4o-mini", ptus=100, window_s=10, tbt_ms=0, ttft_ms=300
    )
    with Stack(tmp_path, sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        client = redis.Redis.from_url(stack.redis_url)
        ids = enqueue(stack.redis_url, DEPLOYMENT, 600, max_tokens=1)
        env = stack.base_env(PTU_MAX_CONCURRENCY=str(LIMIT), PTU_LOWER_THRESHOLD="0.2")
        stack.start_estimator(env)

        observed, started = {}, 0
        for total in (2, 4):
            while started < total:
                started += 1
                stack.start_worker(env, name=f"worker-{started}")
            observed[total] = sample_peaks(stack.sim_url, 4.0)
            stack.check_alive()
        wait_for(lambda: results_written(client, ids) > 0, stack, 5)
        client.close()

    for total, (peak, util) in observed.items():
        assert concurrency_limit(util, 0.2, 0.9, LIMIT) == LIMIT, (total, util)
        assert peak == LIMIT, (total, peak)  # saturated, and never above the global limit

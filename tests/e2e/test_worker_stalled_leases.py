"""A stalled worker's calls count against the global limit until they end.

A worker frozen by SIGSTOP cannot renew its slot leases, but the calls it started are still
running at the deployment. Its leases must outlive its renewals (they cover each call's own
deadline), or the healthy worker beside it takes their slots and the deployment sees more
low-priority calls than the global limit allows.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx2
import redis

from devstack.stack import SimulatorOptions, Stack
from orchestrator.core import keys
from tests.e2e.worker_helpers import enqueue, results_written, wait_for

DEPLOYMENT = "stall-ptu"
LIMIT = 6
STALLED = "stalled-worker"


def peak_low(http: httpx2.Client, sim_url: str) -> int:
    """Highest low-priority in-flight count at the simulator since the last reading."""
    state = http.get(f"{sim_url}/sim/state", params={"reset_peaks": "1"}).json()
    return int(state["deployments"][DEPLOYMENT]["peak_in_flight_by_priority"].get("low", 0))


def sample(sim_url: str, seconds: float) -> int:
    """The highest low-priority in-flight count seen over `seconds`."""
    peak = 0
    end = time.monotonic() + seconds
    with httpx2.Client(timeout=5) as http:
        while time.monotonic() < end:
            peak = max(peak, peak_low(http, sim_url))
            time.sleep(0.05)
    return peak


def test_a_stalled_workers_calls_keep_their_slots(tmp_path: Path) -> None:
    # each call lasts ~4 s: longer than the 2 s lease, so a stall outlives the leases
    sim = SimulatorOptions(
        deployment=DEPLOYMENT, model="gpt-4o-mini", ptus=500, window_s=10, tbt_ms=0, ttft_ms=4000
    )
    with Stack(tmp_path, sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        client = redis.Redis.from_url(stack.redis_url)
        ids = enqueue(stack.redis_url, DEPLOYMENT, 200, max_tokens=1)
        env = stack.base_env(
            PTU_MAX_CONCURRENCY=str(LIMIT),
            PTU_LOWER_THRESHOLD="0.5",
            PTU_SLOT_LEASE_S="2",
            PTU_REQUEST_TIMEOUT_S="20",
        )
        stack.start_estimator(env)
        stack.start_worker(env, name="stalled", args=["--worker-id", STALLED])

        def stalled_holds() -> bool:
            members: list[bytes] = client.zrange(keys.slots(DEPLOYMENT), 0, -1)  # type: ignore[assignment]
            return sum(m.decode().startswith(f"{STALLED}:") for m in members) >= LIMIT // 2

        # the first worker alone fills the limit; then the healthy one waits beside it
        wait_for(lambda: sample(stack.sim_url, 0.3) == LIMIT and stalled_holds(), stack, 30)
        stack.start_worker(env, name="healthy", args=["--worker-id", "healthy-worker"])
        wait_for(stalled_holds, stack, 10)
        pid = stack.children["stalled"].proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            # its leases were renewed at most 2 s ago; its calls end ~4 s after they started
            stalled_peak = sample(stack.sim_url, 8.0)
        finally:
            os.kill(pid, signal.SIGCONT)
        after_peak = sample(stack.sim_url, 5.0)
        done_before = results_written(client, ids)
        wait_for(lambda: results_written(client, ids) > done_before, stack, 30)
        stack.check_alive()
        client.close()

    print(f"\nlow-priority in flight: peak {stalled_peak} while stalled, {after_peak} after")
    assert stalled_peak <= LIMIT, stalled_peak
    assert after_peak <= LIMIT, after_peak
    assert after_peak >= 1  # the pair goes on working once the worker resumes

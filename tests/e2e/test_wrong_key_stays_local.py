"""One process with a wrong key, as real processes: it pauses itself, never the others.

A simulator that requires its key, one Redis, a healthy ingress and a healthy worker, and
a worker started with a wrong key. The wrong key's 401s open that worker's own breaker
(`circuit_opened_locally`), never the shared one: the shared hash is never open, the
healthy ingress answers every high-priority call and shows its circuit closed, the healthy
worker serves low priority throughout. (Before, the first 401 wrote
`circuit_opened reason=unreachable` into Redis for every process.)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx2
import pytest
import redis

from devstack.stack import SimulatorOptions, Stack
from orchestrator.core import keys
from tests.e2e.worker_helpers import MESSAGES, enqueue, results_written, wait_for

PTU = "keyed-ptu"
N = 40
RUN_S = 8.0


def _high_calls(ingress: str, stop: threading.Event, statuses: list[int]) -> None:
    with httpx2.Client(base_url=ingress, timeout=30) as client:
        while not stop.is_set():
            resp = client.post(
                "/v1/chat/completions",
                json={"model": PTU, "messages": MESSAGES, "max_tokens": 10},
                headers={"x-priority": "high"},
            )
            statuses.append(resp.status_code)
            time.sleep(0.05)


@pytest.mark.timeout(180)
def test_a_worker_with_a_wrong_key_never_opens_the_shared_breaker(tmp_path: Path) -> None:
    sim = SimulatorOptions(deployment=PTU, ptus=100, window_s=10, tbt_ms=0, ttft_ms=20)
    with Stack(tmp_path, sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        client = redis.Redis.from_url(stack.redis_url)
        env = stack.base_env()
        stack.start_ingress(env)  # it feeds the estimate the workers' throttle reads
        stack.start_worker(stack.base_env(PTU_AZURE_OPENAI_API_KEY="wrong-key"), "worker-bad")
        ids = enqueue(stack.redis_url, PTU, N)
        bad_log = stack.children["worker-bad"].log_path
        wait_for(lambda: b"circuit_opened_locally" in bad_log.read_bytes(), stack, 30)
        shared_states = {client.hget(keys.breaker(PTU), "state") or b"closed"}
        stack.start_worker(env)

        stop, statuses = threading.Event(), []
        caller = threading.Thread(target=_high_calls, args=(stack.ingress_url, stop, statuses))
        caller.start()
        ends = time.monotonic() + RUN_S
        try:
            while time.monotonic() < ends:
                shared_states.add(client.hget(keys.breaker(PTU), "state") or b"closed")
                time.sleep(0.1)
        finally:
            stop.set()
            caller.join(30)
        done = results_written(client, ids)
        metrics = httpx2.get(f"{stack.ingress_url}/metrics").text
        logs = {name: child.log_path.read_text() for name, child in stack.children.items()}

    assert shared_states == {b"closed"}  # the shared breaker never opened
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    circuit = [
        line for line in metrics.splitlines() if line.startswith("ptu_ingress_circuit_state")
    ]
    assert all(line.endswith(" 0.0") for line in circuit), circuit  # never set, or closed
    assert "circuit_opened" not in logs["ingress"] and "circuit_opened" not in logs["worker"]
    assert "circuit_opened_locally" in logs["worker-bad"]
    # the healthy worker served what the paused one did not hold
    assert done >= N // 2, (done, N)

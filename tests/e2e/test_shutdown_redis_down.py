"""SIGTERM with Redis dead: the ingress and the worker exit within Kubernetes' 30 s grace.

Real processes (ingress, worker, simulator) on an embedded server the test SIGKILLs after
some traffic (high priority through the ingress, low priority through the worker); then
both processes get SIGTERM. Each must exit within `GRACE_S` whatever Redis does: stopping
waits for no Redis call longer than its own bounded time. The exit times are printed.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx2
import pytest

from devstack.stack import SimulatorOptions, Stack
from tests.e2e.worker_helpers import MESSAGES, enqueue, wait_for

PTU = "stop-ptu"
GRACE_S = 30.0


def _exit_s(proc: subprocess.Popen[bytes], started: float) -> float:
    try:
        proc.wait(timeout=GRACE_S + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return time.monotonic() - started


@pytest.mark.timeout(240)
def test_sigterm_with_redis_killed_exits_within_the_grace(tmp_path: Path) -> None:
    sim = SimulatorOptions(deployment=PTU, ptus=100, window_s=10, tbt_ms=0, ttft_ms=20)
    with Stack(tmp_path, sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        env = stack.base_env()
        ingress = stack.start_ingress(env)
        stack.start_worker(env)
        ids = enqueue(stack.redis_url, PTU, 20)
        with httpx2.Client(base_url=ingress, timeout=30) as http:
            for _ in range(10):
                resp = http.post(
                    "/v1/chat/completions",
                    json={"model": PTU, "messages": MESSAGES, "max_tokens": 5},
                    headers={"x-priority": "high"},
                )
                assert resp.status_code == 200
        wait_for(lambda: len(ids) > 0, stack, 1)
        assert stack.redis is not None
        stack.redis.kill(signal.SIGKILL)
        time.sleep(2.0)  # every process is now meeting the dead server
        procs = {name: stack.children[name].proc for name in ("ingress", "worker")}
        started = time.monotonic()
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        took = {name: _exit_s(proc, started) for name, proc in procs.items()}
        codes = {name: proc.returncode for name, proc in procs.items()}
        tails = {name: stack.children[name].tail(1500) for name in procs}
    print(f"\nSIGTERM with Redis killed: exit after {took} s, codes {codes}")
    for name, seconds in took.items():
        assert seconds < GRACE_S, (name, seconds, tails[name])

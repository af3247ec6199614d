"""`ptu ingress --workers 2`: two processes serve one port, /metrics answers their sum, a
SIGTERM to the supervisor stops them all, and a bad count is one clear error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx2
import pytest

from orchestrator.core.serving import free_port
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode

DEP = "ptu"
BODY = {"model": DEP, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def _env(redis_url: str, sim_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTU_")}
    env.update(
        PTU_REDIS_URL=redis_url,
        PTU_REDIS_CLUSTER="true" if redis_mode.CLUSTER else "false",
        PTU_AZURE_OPENAI_ENDPOINT=sim_url,
        PTU_AZURE_OPENAI_API_KEY="k",
        PTU_DEPLOYMENTS=json.dumps([{"name": DEP, "model": "gpt-4o-mini", "ptus": 15}]),
        PTU_LOG_LEVEL="warning",
        PTU_DRAIN_TIMEOUT_S="2",
        PTU_INGRESS_WORKERS="2",
    )
    return env


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs([f"{DEP}=gpt-4o-mini:15"], window_s=10.0, tbt_ms=0, ttft_ms=0)
    with SimulatorThread(config) as server:
        yield server


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(p) for p in f.read().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux /proc")
def test_two_processes_serve_one_port_and_stop_together(
    redis_url: str, sim: SimulatorThread
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "ingress", "--port", str(port)],
        env=_env(redis_url, sim.url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while len(_children(proc.pid)) < 2 or not _ready(url):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        serving = _children(proc.pid)
        assert len(serving) == 2
        with httpx2.Client(timeout=30) as client:
            for _ in range(30):  # a new connection each: the kernel spreads them
                resp = httpx2.post(
                    f"{url}/v1/chat/completions", json=BODY, headers={"x-priority": "high"},
                    timeout=30,
                )  # fmt: skip
                assert resp.status_code == 200, resp.text
            text = client.get(f"{url}/metrics").text
        assert 'ptu_ingress_chat_requests_total{priority="high"} 30.0' in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not any(_alive(pid) for pid in serving)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ready(url: str) -> bool:
    try:
        return httpx2.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx2.TransportError:
        return False


def test_a_bad_process_count_is_one_clear_error(redis_url: str, sim: SimulatorThread) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "ingress", "--workers", "0"],
        env=_env(redis_url, sim.url), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "ptu ingress: --workers must be 1 or more"

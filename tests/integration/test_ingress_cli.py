"""`ptu ingress` as a process: loopback-only without keys, serves, stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx2

from orchestrator.core.serving import free_port
from tests import redis_mode


def _env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTU_")}
    env.update(
        **redis_mode.env(redis_url),
        PTU_AZURE_OPENAI_ENDPOINT="http://127.0.0.1:9",
        PTU_AZURE_OPENAI_API_KEY="k",
        PTU_DEPLOYMENTS=json.dumps([{"name": "ptu", "model": "gpt-4o-mini", "ptus": 15}]),
        PTU_LOG_LEVEL="warning",
        **extra,
    )
    return env


def test_without_keys_only_loopback_is_allowed(redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "ingress", "--host", "0.0.0.0"],
        env=_env(redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "refusing to bind 0.0.0.0" in lines[0] and "PTU_API_KEYS" in lines[0]


def test_serves_and_stops_on_sigterm(redis_url: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "ingress", "--port", str(port)],
        env=_env(redis_url, PTU_API_KEYS=json.dumps({"key-1": "team"})),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx2.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert health.json()["status"] == "ok"
        denied = httpx2.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "ptu", "messages": [{"role": "user", "content": "x"}]},
        )
        assert denied.status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_a_taken_port_is_a_one_line_error(redis_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", "ingress", "--port", str(port)],
            env=_env(redis_url),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"ptu ingress: configuration error: --port: cannot listen on 127.0.0.1:{port}: "
        "already in use"
    ]

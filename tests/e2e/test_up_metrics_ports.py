"""`ptu up --workers 2` with `PTU_METRICS_PORT` set: each worker serves its metrics on its
own port (`PTU_METRICS_PORT` + i), says where, and the stack stays up (both workers once
bound the one port and the second's exit stopped everything)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from orchestrator.core.serving import free_port

READY_TIMEOUT_S = 120.0


def _free_pair() -> int:
    """A port p with p and p + 1 free."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and _free(port + 1):
            return port
    raise AssertionError("no two adjacent free ports")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.timeout(READY_TIMEOUT_S + 90)
def test_two_workers_serve_metrics_on_their_own_ports(tmp_path: Path) -> None:
    metrics = _free_pair()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTU_")}
    env.update(
        PTU_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        PTU_AZURE_OPENAI_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        PTU_AZURE_OPENAI_API_KEY="k",
        PTU_INGRESS_URL=f"http://127.0.0.1:{free_port()}",
        PTU_DEPLOYMENTS=json.dumps([{"name": "ptu", "model": "gpt-4o-mini", "ptus": 15}]),
        PTU_METRICS_PORT=str(metrics),
    )
    out = tmp_path / "up.out"
    with out.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "up", "--workers", "2", "--quiet",
             "--logs", str(tmp_path / "stack")],
            env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "ptu up: ready" not in out.read_text():
            assert proc.poll() is None, f"ptu up exited:\n{out.read_text()[-3000:]}"
            assert time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.2)
        text = out.read_text()
        for i in range(2):
            assert f"worker-{i} metrics: http://127.0.0.1:{metrics + i}/metrics" in text, text
            page = httpx2.get(f"http://127.0.0.1:{metrics + i}/metrics", timeout=10)
            assert page.status_code == 200 and "ptu_worker" in page.text
        time.sleep(1.0)  # a worker that failed to bind would have stopped the stack by now
        assert proc.poll() is None, out.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid in re.findall(r"pid (\d+)", out.read_text()):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                continue
    assert proc.returncode == 0, out.read_text()[-3000:]
    assert "ptu up: stopped" in out.read_text()

"""`ptu demo` as a user runs it: a short run to the end, and an interrupted one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_bench_mixed import children


def _demo(out: Path, duration_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "demo", "--duration-s", str(duration_s),
         "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def test_short_demo_runs_to_the_end(tmp_path: Path) -> None:
    proc = _demo(tmp_path, 8)
    output, _ = proc.communicate(timeout=110)
    assert proc.returncode == 0, output
    assert "timeline:" in output and "high-priority calls" in output
    assert (tmp_path / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    (row,) = json.loads((tmp_path / "results.json").read_text())
    assert row["policy"] == "demo" and row["hp_calls"] > 0 and row["lp_requests"] >= 3


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_demo_stops_every_process(tmp_path: Path, sig: signal.Signals) -> None:
    proc = _demo(tmp_path, 60)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if line.startswith("driving"):
            break
        assert time.monotonic() < deadline, "demo did not start"
    started = children(proc.pid)
    assert len(started) >= 4  # redis, simulator, ingress, estimator, worker
    time.sleep(1.0)
    proc.send_signal(sig)
    proc.communicate(timeout=120)  # a drain of in-flight calls may take its 30 s; no speed asserted
    assert proc.returncode == 130
    alive = {pid for pid in started if Path(f"/proc/{pid}").exists()}
    assert not alive

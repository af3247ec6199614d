"""`ptu simulator` as a real process: flags, HTTPS with its CA, clean shutdown on SIGTERM."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from orchestrator.core.serving import free_port


def test_https_process_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "orchestrator", "simulator",
            "--port", str(port),
            "--deployment", "a=gpt-4o:15:spill=b",
            "--deployment", "b=gpt-4o-mini:50000:standard",
            "--window-s", "10", "--tbt-ms", "0", "--ttft-ms", "0", "--seed", "4",
            "--utilisation-model", "sliding", "--utilisation-header", "absent",
            "--header-lag-s", "2.5", "--header-smoothing-s", "7",
            "--background-profile", "square:0.1,0.2,30",
            "--api-key", "k", "--https", "--tls-dir", str(tmp_path), "--log-level", "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"simulator listening on https://127.0.0.1:{port}"), line
        assert (tmp_path / "ca.pem").exists()
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with httpx2.Client(base_url=f"https://127.0.0.1:{port}", verify=context) as http:
            reply = http.post(
                "/openai/deployments/a/chat/completions?api-version=2024-10-21",
                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
                headers={"api-key": "k"},
            )
            assert reply.status_code == 200
            assert reply.json()["usage"]["completion_tokens"] <= 5
            assert "azure-openai-deployment-utilization" not in reply.headers
            denied = http.post(
                "/openai/v1/chat/completions",
                json={"model": "a", "messages": [{"role": "user", "content": "hi"}]},
                headers={"api-key": "other"},
            )
            assert denied.status_code == 401
            state = http.get("/sim/state").json()["deployments"]
        assert state["a"]["capacity_tpm"] == 37_500 and state["a"]["window_s"] == 10.0
        assert state["a"]["utilisation_model"] == "sliding"
        assert (state["a"]["header_lag_s"], state["a"]["header_smoothing_s"]) == (2.5, 7.0)
        assert state["a"]["background"]["share"] == 0.1  # the LOW half first
        assert state["a"]["background"]["profile"] == "square:0.1,0.2,30"
        assert state["b"]["kind"] == "standard" and state["a"]["spillover"] == "b"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--deployment", "x=nope:15"], ["--deployment", "nope"]),
        (["--background-share", "1.5"], ["--background-share"]),
        (["--header-lag-s", "-1"], ["--header-lag-s"]),
        (["--deployment", "a=gpt-4o:15:spill=zz"], ["--deployment", "spill=zz"]),
        (["--background-profile", "wave:1"], ["--background-profile", "square:LOW,HIGH"]),
        (["--header-smoothing-s", "-2"], ["--header-smoothing-s"]),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(flags: list[str], named: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "simulator", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert all(word in done.stderr for word in named), done.stderr
    assert "Traceback" not in done.stderr

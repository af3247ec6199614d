"""A tiny `bench foreign` run against an upstream the scenario does not start.

The upstream here is our own simulator serving a standard deployment (a minute-window
limiter that sends `x-ratelimit-remaining-*`), started beforehand as a user would start
Microsoft's `aoai-api-simulator`; CI exercises the scenario without that simulator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.scenarios.foreign import TABLE_KEYS, ForeignConfig, run_foreign, workload
from devstack.stack import SimulatorOptions, Stack
from orchestrator.core.serving import free_port
from tests.integration.test_bench_mixed import children

DEPLOYMENT = "std-60k"
KEY = "upstream-key"
UPSTREAM = SimulatorOptions(
    deployment=DEPLOYMENT, specs=(f"{DEPLOYMENT}=gpt-4o-mini:60000:standard",), api_key=KEY
)


def test_tiny_foreign_run_measures_every_arm_against_a_running_upstream(tmp_path: Path) -> None:
    before = children(os.getpid())
    drains: list[float] = []
    with Stack(tmp_path / "upstream", UPSTREAM) as upstream:
        url = upstream.start_simulator()
        cfg = ForeignConfig(
            url,
            workload(duration_s=120.0, lp_requests=4),  # planned long: arms end after the batch
            api_key=KEY,
            deployment=DEPLOYMENT,
            grace_s=30.0,
            end_after_batch_s=2.0,
        )
        rows = run_foreign(cfg, tmp_path / "out", sleep=drains.append)
        assert upstream.simulated  # the scenario's own stack never touched it
    assert children(os.getpid()) <= before

    out = tmp_path / "out"
    assert json.loads((out / "results.json").read_text()) == rows
    assert [r["policy"] for r in rows] == ["direct", "off", "auto"]
    assert drains == [cfg.drain_s, cfg.drain_s]  # between arms only
    planned = round(cfg.capacity.rate_for_share(0.3, cfg.workload.hp) * 120.0)
    for row in rows:
        assert set(TABLE_KEYS) <= set(row)
        assert row["lp_requests"] == 4 and row["lp_completed"] == 4 and row["lp_failed"] == 0
        assert row["lp_makespan_s"] is not None
        assert 0 < row["window_calls"] <= row["hp_calls"] < planned
        assert row["window_429"] == f"{row['window_429_count']} / {row['window_calls']}"
        assert row["hp_errors"] == 0
        # the probe read the headroom the standard deployment reports
        assert 0 < row["remaining_tokens_at_start"] < 60_000
    told = json.loads(rows[2]["settings"]["PTU_DEPLOYMENTS"])
    assert told == [
        {
            "name": DEPLOYMENT,
            "model": DEPLOYMENT,
            "ptus": 1,
            "input_tpm_per_ptu": 60_000,
            "output_weight": 1.0,
        }
    ]
    assert rows[1]["settings"]["PTU_CALIBRATION"] == "off"
    assert "PTU_CALIBRATION" not in rows[2]["settings"]
    assert rows[0]["settings"] == {}  # direct: no orchestrator on the batch's path
    table = (out / "results.md").read_text()
    assert all(f"\n| {arm} |" in table for arm in ("direct", "off", "auto"))
    assert (out / "latency_cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_upstream_that_cannot_serve_the_run_gets_one_clear_line(tmp_path: Path) -> None:
    # as a user runs it, in a process of its own: the verb configures logging for its process
    nobody = f"http://127.0.0.1:{free_port()}"
    args = ["bench", "foreign", "--upstream", nobody, "--out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    printed = proc.stdout.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith(
        f"ptu bench foreign: no answer from {nobody}"
    )

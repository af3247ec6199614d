"""A CI-sized `bench robustness` run: the outputs' shape, and no process left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.harness.workload import MixedWorkload
from bench.scenarios.realities import parse_realities
from bench.scenarios.robustness import TABLE_KEYS, RobustnessConfig, run_robustness
from devstack.stack import SimulatorOptions
from tests.integration.test_bench_mixed import children


def test_tiny_robustness_run_writes_results_and_cleans_up(tmp_path: Path) -> None:
    before = children(os.getpid())
    cfg = RobustnessConfig(
        MixedWorkload(duration_s=6.0, hp_share=0.3, burst_share=0.6, lp_requests=4, batch_at_s=1.0),
        SimulatorOptions(https=True, monitor_lag_s=2.0),
        parse_realities("bypass=0.2+header=noisy"),
        grace_s=6.0,
    )
    rows = run_robustness(cfg, tmp_path)

    assert children(os.getpid()) <= before
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == rows
    assert [(r["reality"], r["calibration"]) for r in rows] == [
        ("bypass=0.2+header=noisy", "off"),
        ("bypass=0.2+header=noisy", "auto"),
    ]
    for row in rows:
        assert set(TABLE_KEYS) <= set(row)
        assert row["hp_calls"] > 0 and row["hp_errors"] == 0
        assert row["lp_requests"] == 4
        assert row["bypass_requests"] > 0  # the other app ran, counted apart
        assert row["bypass_429"] == f"{row['bypass_429_count']} / {row['bypass_requests']}"
        assert row["hp_429"] == f"{row['hp_429_count']} / {row['hp_calls']}"
    assert rows[0]["settings"]["PTU_CALIBRATION"] == "off"
    assert "PTU_CALIBRATION" not in rows[1]["settings"]  # the default configuration
    assert rows[1]["settings"]["PTU_AZURE_RESOURCE_ID"].startswith("/subscriptions/")
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n| bypass=0.2+header=noisy |") == 2
    png = tmp_path / "reality_bypass_0.2_header_noisy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    series = (tmp_path / "timeseries_bypass_0.2_header_noisy_auto.csv").read_text().splitlines()
    assert series[0].startswith("t_s,utilization,worker_view") and len(series) > 10

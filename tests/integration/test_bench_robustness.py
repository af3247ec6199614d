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
        parse_realities("bypass=0.2+lagged=2+overask"),
        grace_s=6.0,
    )
    rows = run_robustness(cfg, tmp_path)

    assert children(os.getpid()) <= before
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == rows
    assert [(r["reality"], r["calibration"]) for r in rows] == [
        ("bypass=0.2+lagged=2+overask", "off"),
        ("bypass=0.2+lagged=2+overask", "auto"),
        ("bypass=0.2+lagged=2+overask", "oracle"),
    ]
    for row in rows:
        assert set(TABLE_KEYS) <= set(row)
        assert row["hp_calls"] > 0 and row["hp_errors"] == 0
        assert row["lp_requests"] == 4
        assert row["bypass_requests"] > 0  # the other app ran, counted apart
        assert row["bypass_429"] == f"{row['bypass_429_count']} / {row['bypass_requests']}"
        assert row["hp_429"] == f"{row['hp_429_count']} / {row['hp_calls']}"
        # through the proxy: the lines asked for 2000 (4000, capped) and used 100 each
        assert row["lp_completion_tokens_mean"] == 100.0
        assert row["settings"]["PTU_AZURE_OPENAI_ENDPOINT"].startswith("http://127.0.0.1:")
    assert rows[0]["settings"]["PTU_CALIBRATION"] == "off"
    assert "PTU_CALIBRATION" not in rows[1]["settings"]  # the default configuration
    assert rows[1]["settings"]["PTU_AZURE_RESOURCE_ID"].startswith("/subscriptions/")
    # the oracle's worker steered by the truth, and its reading was the truth, 10 Hz apart
    oracle = rows[2]
    assert oracle["description"] == "oracle (true level)" and oracle["lp_completed"] > 0
    oracle_series = (tmp_path / "timeseries_bypass_0.2_lagged_2_overask_oracle.csv").read_text()
    points = [line.split(",") for line in oracle_series.splitlines()[1:]]
    assert all(p[2] for p in points)  # a reading beside every sample of the truth
    assert sum(abs(float(p[2]) - float(p[1])) for p in points) / len(points) < 0.05
    assert oracle["util_x_oracle"] == 1.0
    for row in rows[:2]:
        ratio = (
            None if row["util_mean"] is None else round(row["util_mean"] / oracle["util_mean"], 3)
        )
        assert row["util_x_oracle"] == ratio
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n| bypass=0.2+lagged=2+overask |") == 3
    png = tmp_path / "reality_bypass_0.2_lagged_2_overask.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    series = (tmp_path / "timeseries_bypass_0.2_lagged_2_overask_auto.csv").read_text().splitlines()
    assert series[0].startswith("t_s,utilization,worker_view") and len(series) > 10

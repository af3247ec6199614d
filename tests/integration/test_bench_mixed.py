"""A CI-sized `bench mixed` run: the outputs' shape, and no process left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.harness.workload import MixedWorkload
from bench.report.metrics import RESULT_KEYS
from bench.scenarios.mixed import MixedConfig, run_mixed
from devstack.stack import SimulatorOptions


def children(pid: int) -> set[int]:
    """Live child process ids of `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def test_tiny_mixed_run_writes_results_and_cleans_up(tmp_path: Path) -> None:
    before = children(os.getpid())
    cfg = MixedConfig(
        MixedWorkload(duration_s=6.0, lp_requests=4, batch_at_s=1.0),
        SimulatorOptions(https=True),
        policies=("baseline", "direct", "linear-estimate"),
        grace_s=6.0,
    )
    rows = run_mixed(cfg, tmp_path)

    assert children(os.getpid()) <= before
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == rows
    assert [r["policy"] for r in rows] == ["baseline", "direct", "linear-estimate"]
    for row in rows:
        assert set(RESULT_KEYS) <= set(row)
        assert row["hp_calls"] > 0 and row["hp_errors"] == 0
    assert rows[0]["hp_p99_ratio"] == 1.0 and rows[0]["lp_makespan_s"] is None
    for row in rows[1:]:
        assert row["lp_requests"] == 4
        assert row["lp_completed"] + row["lp_unfinished"] >= 1
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n| ") >= 3 and "linear-estimate" in table
    series = (tmp_path / "timeseries_linear-estimate.csv").read_text().splitlines()
    assert series[0].startswith("t_s,utilization,worker_view") and len(series) > 20
    for png in ("policies.png", "latency_cdf.png", "timeline_linear-estimate.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

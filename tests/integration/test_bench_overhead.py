"""A CI-sized `bench overhead` run: every measurement present, no process left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.scenarios.overhead import OverheadConfig, run_overhead
from tests.integration.test_bench_mixed import children


def test_tiny_overhead_run(tmp_path: Path) -> None:
    before = children(os.getpid())
    cfg = OverheadConfig(
        latency_pairs=20, enqueue_requests=30, enqueue_concurrency=4, worker_timeout_s=30.0
    )
    row = run_overhead(cfg, tmp_path)

    assert children(os.getpid()) <= before
    assert json.loads((tmp_path / "results.json").read_text()) == [row]
    assert row["calls_each"] == 20
    for key in ("direct_p50_ms", "ingress_p50_ms", "ingress_p99_ms", "ratio_p50"):
        assert row[key] > 0
    # the tenant-with-a-limit arm, side by side in the same run
    added = row["tenant_p50_ms"] - row["direct_p50_ms"]
    assert row["tenant_p50_ms"] > 0 and abs(row["tenant_added_p50_ms"] - added) <= 0.011
    assert "tenant / plain added p50" in (tmp_path / "results.md").read_text()
    assert row["enqueue_accepted"] == 30 and row["enqueue_per_s"] > 0
    assert row["worker_results"] == 30 and row["worker_results_per_s"] > 0
    assert "results/s (1 worker)" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "latency_cdf.png").read_bytes()[:4] == b"\x89PNG"

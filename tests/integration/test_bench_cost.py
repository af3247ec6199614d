"""A CI-sized `bench cost` run: every phase measured, the queue drained, no process left."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.scenarios.cost import CostConfig, run_cost
from tests.integration.test_bench_mixed import children


def test_tiny_cost_run(tmp_path: Path) -> None:
    before = children(os.getpid())
    cfg = CostConfig(
        concurrencies=(1, 4), step_s=0.5, enqueue_requests=30, enqueue_concurrency=4,
        worker_timeout_s=30.0, scale_calls=20, worker_counts=(1, 2),
    )  # fmt: skip
    result = run_cost(cfg, tmp_path)

    assert children(os.getpid()) <= before
    assert json.loads((tmp_path / "results.json").read_text()) == result
    high, enqueue, low = result["rows"][:2], result["rows"][2], result["rows"][3]
    assert [row["concurrency"] for row in high] == [1, 4]
    for row in high:
        assert row["requests"] > 0 and row["errors"] == 0
        assert row["per_s"] > 0 and row["direct_per_s"] > 0
        # every high-priority request reads or writes Redis (token events, usage)
        assert row["redis_commands"] > 0 and row["commands"]
        assert row["process"] == "ingress" and row["process_cpu_ms"] > 0
    assert enqueue["requests"] == 30 and enqueue["errors"] == 0
    assert enqueue["commands"].get("xadd", 0) >= 1  # the put on the queue's stream
    assert low["queued"] == low["results_written"] == 30
    assert 0 < low["requests"] <= 30 and low["process"] == "worker"
    assert low["redis_commands"] > 0 and low["per_s"] > 0
    assert len(result["targets"]) == 7
    assert {t["result"] for t in result["targets"]} <= {"met", "missed"}
    scale = result["ingress_scale"]
    assert scale["concurrency"] == 4 and scale["one"]["per_s"] > 0 and scale["two"]["per_s"] > 0
    assert scale["two"]["processes"] > scale["one"]["processes"]  # the supervisor and its two
    assert [row["workers"] for row in result["worker_scale"]] == [1, 2]
    assert all(row["per_s"] and row["per_s"] > 0 for row in result["worker_scale"])
    text = (tmp_path / "results.md").read_text()
    assert "## Targets" in text and "one worker process: low-priority calls/s" in text
    assert "| ptu ingress --workers 2 | 4 |" in text
    assert (tmp_path / "cost.png").read_bytes()[:4] == b"\x89PNG"

"""A few seconds of `ptu bench saturation` against a real simulator process."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.cli.main import main


def test_saturation_smoke(tmp_path: Path) -> None:
    out = tmp_path / "sat"
    code = main(
        [
            "bench", "saturation", "--out", str(out), "--duration-s", "6", "--settle-s", "1.5",
            "--window-s", "2", "--concurrency", "24", "--probes", "3", "--seed", "1",
        ]
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert (out / "results.md").exists() and (out / "saturation.png").exists()
    assert results["throttled"] > 0 and results["admitted"] > 0
    assert results["throttled_below_100pct"] == 0
    assert results["throttled_without_retry_after_ms"] == 0
    assert results["simulator_throttled_during_load"] == results["throttled"]
    assert results["probe_retries_admitted_fraction"] == 1.0
    refused, sent = map(int, results["probe_early_retries_refused"].split("/"))
    assert (
        refused == sent
    )  # every early retry refused (one sent late on a busy machine: not counted)
    assert 0.8 < results["admitted_vs_capacity"] < 1.2  # a few seconds only: loose bound
    assert code == (0 if all(results["checks"].values()) else 1)

"""Pure pieces of the benchmark harness: workloads, metrics, tables, dashboard rendering."""

from __future__ import annotations

import random

import pytest
from rich.console import Console

from bench.harness.sampler import Sample, parse_state
from bench.harness.traffic import HpRecord, LpRecord
from bench.harness.workload import (
    CallShape,
    Capacity,
    MixedWorkload,
    arrivals,
    batch_calls,
    filler_text,
    interactive_calls,
    static_concurrency,
)
from bench.report.dashboard import Snapshot, render, status_line, utilisation_bar
from bench.report.metrics import RESULT_KEYS, PolicyRun, percentile, summarise, utilisation_stats
from bench.report.tables import markdown_table
from orchestrator.utilisation.base import Calibration

CAP = Capacity(capacity_tpm=555_000, output_weight=3.0, window_s=10.0)


def _sample(t: float, u: float, low: int = 0) -> Sample:
    return Sample(t, u, low, 0, low, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 50, None), ([5.0], 99, 5.0), ([1.0, 2.0, 3.0], 50, 2.0), ([0.0, 10.0], 95, 9.5)],
)
def test_percentile_interpolates(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


def test_call_shape_costs_follow_the_bucket_charge() -> None:
    shape = CallShape(prompt_tokens=300, max_tokens=200)
    assert shape.admission_cost(3.0) == 300 + 600
    assert shape.mean_cost(3.0) == pytest.approx(300 + 0.6 * 200 * 3)


def test_interactive_rate_matches_the_share_of_capacity() -> None:
    wl = MixedWorkload(duration_s=400.0, burst_share=0.35)  # no burst: one steady rate
    calls = interactive_calls(wl, CAP, "d", seed=1)
    expected = CAP.rate_for_share(0.35, wl.hp) * wl.duration_s
    assert abs(len(calls) - expected) <= 2
    assert all(0 <= c.at_s < wl.duration_s for c in calls)
    assert [c.at_s for c in calls] == sorted(c.at_s for c in calls)


def test_burst_offers_its_nominal_load() -> None:
    wl = MixedWorkload(duration_s=100.0, hp_share=0.3, burst_share=0.6)
    start, end = wl.burst_window
    calls = interactive_calls(wl, CAP, "d", seed=3)
    inside = sum(1 for c in calls if start <= c.at_s < end)
    assert inside == round(CAP.rate_for_share(0.6, wl.hp) * (end - start))
    assert len(calls) - inside == round(CAP.rate_for_share(0.3, wl.hp) * start) + round(
        CAP.rate_for_share(0.3, wl.hp) * (wl.duration_s - end)
    )


def test_arrivals_cluster_inside_their_phase() -> None:
    times = arrivals(random.Random(0), [(0.0, 10.0, 2.0), (10.0, 12.0, 0.0), (12.0, 14.0, 5.0)])
    assert len(times) == 30 and times == sorted(times)
    assert not any(10.0 <= t < 12.0 for t in times)


def test_workloads_are_reproducible_from_the_seed() -> None:
    wl = MixedWorkload(duration_s=20.0, lp_requests=5)
    assert interactive_calls(wl, CAP, "d", 9) == interactive_calls(wl, CAP, "d", 9)
    assert interactive_calls(wl, CAP, "d", 9) != interactive_calls(wl, CAP, "d", 10)
    batch = batch_calls(wl, "d", 9)
    assert len(batch) == 5 and all(c.at_s == wl.batch_at_s for c in batch)
    assert batch[0].body["max_tokens"] == wl.lp.max_tokens


def test_filler_text_has_the_asked_size_and_tag() -> None:
    text = filler_text(random.Random(0), 500, "tag-1")
    assert len(text) == 2000 and text.startswith("[tag-1]")


def test_static_concurrency_is_what_fits_beside_the_burst() -> None:
    wl = MixedWorkload(burst_share=0.7)
    assert static_concurrency(wl, CAP, upper=0.9) == 1
    roomy = MixedWorkload(hp_share=0.1, burst_share=0.1, lp=CallShape(1000, 100))
    assert static_concurrency(roomy, CAP, upper=0.9) > 1


def test_utilisation_stats_counts_time_above_upper() -> None:
    samples = [_sample(t, u) for t, u in [(0, 0.5), (1, 0.95), (2, 0.95), (3, 0.5), (9, 1.0)]]
    mean, p95, above, peak = utilisation_stats(samples, 0.0, 3.0, upper=0.9)
    assert mean == pytest.approx(0.725) and peak == 0.95
    assert above == pytest.approx(2.0)
    assert p95 is not None and p95 > 0.9


def test_summarise_has_the_contract_keys_and_values() -> None:
    run = PolicyRun("p", "desc", batch_start=2.0, hp_end=10.0, run_end=12.0, lp_429=3)
    run.hp = [HpRecord(0.1 * i, 1.0 + i / 100, 200) for i in range(99)] + [HpRecord(5, 0.01, 429)]
    run.lp = [
        LpRecord("a", 2.0, "id-a", 6.0, "completed", 1000, 100),
        LpRecord("b", 2.0, "id-b", 8.0, "completed", 3000, 100),
    ]
    run.samples = [_sample(t, 0.8, low=2) for t in range(13)]
    row = summarise(run, upper=0.9, baseline_p99_ms=1000.0)
    assert list(row)[: len(RESULT_KEYS)] == list(RESULT_KEYS)
    assert row["hp_429_rate"] == 0.01
    assert row["hp_p50_ms"] == pytest.approx(1490.0)
    assert row["hp_p99_ratio"] == pytest.approx(row["hp_p99_ms"] / 1000.0, abs=1e-3)
    assert row["lp_makespan_s"] == 6.0
    assert row["lp_tokens_per_s"] == pytest.approx(4000 / 6.0, abs=0.1)
    assert row["util_mean"] == 0.8 and row["time_above_upper_s"] == 0.0
    assert row["lp_429"] == 3 and row["low_peak_concurrency"] == 2


def test_unfinished_batch_has_no_makespan_but_a_rate_over_the_run() -> None:
    run = PolicyRun("p", "d", batch_start=0.0, hp_end=10.0, run_end=10.0)
    run.lp = [LpRecord("a", 0.0, "id", 5.0, "completed", 500), LpRecord("b", 0.0, "id2")]
    row = summarise(run, upper=0.9, baseline_p99_ms=None)
    assert row["lp_makespan_s"] is None and row["lp_tokens_per_s"] == 50.0
    assert row["lp_unfinished"] == 1 and row["hp_p99_ratio"] is None and row["lp_failed"] == 0


def test_baseline_has_no_batch_figures() -> None:
    run = PolicyRun("baseline", "d", hp_end=5.0, run_end=5.0, hp=[HpRecord(0, 0.5, 200)])
    row = summarise(run, 0.9, None)
    assert row["lp_makespan_s"] is None and row["lp_tokens_per_s"] is None and row["lp_429"] == 0


def test_markdown_table_shape() -> None:
    rows = [{"policy": "a", "hp_p50_ms": 1.5, "lp_429": None}]
    lines = markdown_table(rows, ["policy", "hp_p50_ms", "lp_429"]).splitlines()
    assert lines[0] == "| policy | HP p50 ms | LP 429s |"
    assert lines[1] == "|---|---:|---:|"
    assert lines[2] == "| a | 1.5 | - |"


def test_parse_state_reads_the_contract_document() -> None:
    body = {
        "time": 1.0,
        "deployments": {
            "d": {
                "utilization": 0.42,
                "in_flight_by_priority": {"low": 2, "high": 1},
                "peak_in_flight_by_priority": {"low": 4},
                "by_priority": {"low": {"requests": 9, "throttled": 2}},
            }
        },
    }
    s = parse_state(body, "d", t=3.0)
    assert (s.t, s.utilization, s.low_in_flight, s.high_in_flight, s.low_peak) == (
        3.0,
        0.42,
        2,
        1,
        4,
    )
    assert (s.low_requests, s.low_throttled, s.high_requests) == (9, 2, 0)


def test_utilisation_bar_marks_the_thresholds() -> None:
    bar = utilisation_bar(0.5, 0.2, 0.9, width=10).plain
    assert len(bar) == 10 and bar[2] == "|" and bar[9] == "|"
    assert bar[:2] == "██" and bar[5:9] == "░░░░"


def test_dashboard_renders_and_status_line_is_plain() -> None:
    snap = Snapshot(12.0, 60.0, 0.85, 3, 10, 4, 20, 100, 0, 1200.0, 1500.0, True)
    console = Console(width=120, record=True)
    console.print(render(snap, "title", 0.2, 0.9))
    text = console.export_text()
    assert "interactive burst" in text and "4/20 completed" in text and "0.85" in text
    line = status_line(snap)
    assert "util=0.85" in line and "completed=4/20" in line and line.endswith("burst")


def test_dashboard_shows_the_calibration() -> None:
    cal = Calibration(
        model=0.42, correction=0.25, correction_age_s=0.3, observed=0.7, observed_age_s=0.3,
        model_kind="lag 3s", unseen=0.25,
    )  # fmt: skip
    snap = Snapshot(
        12.0, 60.0, 0.7, 3, 10, 4, 20, 100, 0, 1200.0, 1500.0, False, estimate=0.67,
        calibration=cal,
    )  # fmt: skip
    console = Console(width=120, record=True)
    console.print(render(snap, "title", 0.2, 0.9))
    text = console.export_text()
    assert "estimate" in text and "0.67" in text
    assert "model 0.42" in text and "observed 0.70" in text and "correction +0.25" in text
    assert "unseen traffic 25%" in text and "(lag 3s)" in text
    assert "unseen traffic 25%" in status_line(snap)

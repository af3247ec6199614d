"""`ptu bench pool`'s pure parts: the weighted round robin and the measures of a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.harness.sampler import Sample
from bench.harness.traffic import HpRecord, LpRecord
from bench.scenarios.pool import split_by_weight
from bench.scenarios.pool_measures import (
    MemberRun,
    PoolRun,
    compare,
    makespan,
    mean_utilisation,
    pending,
    row_of,
    verdicts,
)
from bench.scenarios.pool_report import write_report


def sample(t: float, u: float, low: int = 0) -> Sample:
    return Sample(t, u, 0, 0, 0, low, 0, 0, 0)


def test_weighted_round_robin_interleaves_by_weight() -> None:
    parts = split_by_weight(list(range(10)), {"east": 3, "west": 2})
    assert parts == {"east": [0, 2, 4, 5, 7, 9], "west": [1, 3, 6, 8]}
    assert sum(len(p) for p in split_by_weight(list(range(25)), {"a": 15, "b": 10}).values()) == 25
    assert len(split_by_weight(list(range(25)), {"a": 15, "b": 10})["a"]) == 15


def test_makespan_needs_every_result() -> None:
    done = [LpRecord("a", 3.0, "r", 10.0, "completed"), LpRecord("b", 3.0, "r", 13.5, "failed")]
    assert makespan(done, 3.0) == 10.5
    assert makespan([*done, LpRecord("c", 3.0, "r")], 3.0) is None
    assert makespan([], 3.0) is None and makespan(done, None) is None


def test_utilisation_while_pending_and_the_row() -> None:
    east = MemberRun("east", [HpRecord(1, 0.1, 200), HpRecord(2, 0.1, 429)])
    west = MemberRun("west", [HpRecord(1, 0.1, 200)])
    east.samples = [sample(t, 0.5 if t < 3 else 0.9, low=4) for t in range(0, 20)]
    west.samples = [sample(t, 0.1 if t < 3 else 0.45, low=6) for t in range(0, 20)]
    lp = [LpRecord(str(i), 3.0, "r", 3.0 + i, "completed") for i in range(1, 11)]
    run = PoolRun("pool", "d", {"east": east, "west": west}, lp, 3.0, hp_end=18.0, run_end=20.0)
    assert pending(run) == (3.0, 13.0)
    assert mean_utilisation(east.samples, pending(run)) == pytest.approx(0.9)
    assert mean_utilisation(east.samples, (30.0, 40.0)) is None
    row = row_of(run, {"east": 0.9, "west": 0.9}, {"east": 4, "west": 6})
    assert row["hp_429_east"] == 1 and row["hp_429_west"] == 0
    assert row["util_x_upper_east"] == 1.0 and row["util_x_upper_west"] == 0.5
    assert row["makespan_s"] == 10.0 and row["lp_completed"] == 10 and row["lp_served_west"] == 6
    static = {**row, "policy": "static", "makespan_s": 20.0}
    rows = [static, row]
    compare(rows)
    assert row["makespan_x_static"] == 0.5 and static["makespan_x_static"] == 1.0
    met = verdicts(row, ["east", "west"])
    assert met == {
        "0 interactive 429s on every member": False,
        "makespan <= 0.6 x static": True,
        "each member's utilisation while pending >= 0.8 x its upper threshold": False,
    }


def test_an_unfinished_batch_is_pending_until_the_interactive_end() -> None:
    lp = [LpRecord("a", 3.0, "r")]
    run = PoolRun("static", "d", {}, lp, 3.0, hp_end=50.0, run_end=70.0)
    assert pending(run) == (3.0, 50.0)
    row = row_of(run, {}, {})
    compare([row])
    assert row["makespan_s"] is None and row["makespan_x_static"] is None


def test_the_report_says_which_targets_the_pool_met(tmp_path: Path) -> None:
    east = MemberRun("east", [HpRecord(1, 0.1, 200)], [sample(t, 0.85) for t in range(20)])
    west = MemberRun("west", [HpRecord(1, 0.1, 200)], [sample(t, 0.8) for t in range(20)])
    lp = [LpRecord(str(i), 3.0, "r", 3.0 + i, "completed") for i in range(1, 11)]
    run = PoolRun("pool", "one pool", {"east": east, "west": west}, lp, 3.0, 18.0, 20.0)
    rows = [{**row_of(run, {"east": 0.9, "west": 0.9}, {}), "makespan_x_static": 0.5}]
    write_report(tmp_path, rows, [run], ["a note"], ["east", "west"], 0.9)
    text = (tmp_path / "results.md").read_text()
    assert "| pool | 0 | 0 | 0.944 | 0.889 |" in text
    assert "- target met: 0 interactive 429s on every member" in text
    assert "- target met: makespan <= 0.6 x static" in text
    assert (tmp_path / "pool.png").stat().st_size > 0
    csv_lines = (tmp_path / "timeseries_pool.csv").read_text().splitlines()
    assert csv_lines[0] == "member,t,utilisation,low_in_flight,high_in_flight"
    assert len(csv_lines) == 41

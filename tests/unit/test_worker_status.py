"""`ptu status`: folding heartbeats and rendering the table."""

from __future__ import annotations

import dataclasses
import json

from rich.console import Console

from orchestrator.cli.status import Row, WorkerSummary, summarise
from orchestrator.cli.status_view import (
    calibration_cells,
    document,
    queued,
    render,
    render_compact,
)
from orchestrator.core.incarnation import Marker
from orchestrator.utilisation.base import Calibration

NOW = 1_000.0


def beat(at: float, **lanes: dict[str, float]) -> dict[str, object]:
    return {"worker_id": "w", "at": at, "ttl_s": 15, "deployments": lanes}


def test_summarise_adds_fresh_workers_and_skips_dead_ones() -> None:
    beats = [
        beat(NOW - 1, a={"in_flight": 3, "throughput_per_s": 1.5, "completed": 10, "failed": 1}),
        beat(NOW - 2, a={"in_flight": 2, "throughput_per_s": 0.5, "completed": 5, "expired": 2}),
        beat(NOW - 2, b={"in_flight": 1, "throughput_per_s": None}),
        beat(NOW - 16, a={"in_flight": 99}),  # stale: a dead worker
        {"at": "junk", "deployments": {"a": {"in_flight": 50}}},
    ]
    out = summarise(beats, NOW)
    assert out["a"] == WorkerSummary(2, 5, 2.0, 15, 1, 2)
    assert out["b"] == WorkerSummary(1, 1, 0.0, 0, 0, 0)
    assert summarise([], NOW) == {}


def test_render_shows_every_column_and_marks_stale_readings() -> None:
    rows = [
        Row(
            "ptu-a",
            0.5512,
            0.4,
            False,
            5,
            10,
            4,
            120,
            WorkerSummary(2, 4, 3.2, 40, 1, 0),
            class_depth={"low": 3, "batch": 117},
        ),
        Row("ptu-b", None, None, True, 0, 10, None, None, WorkerSummary()),
    ]
    console = Console(record=True, width=240)
    console.print(render(rows, "estimate"))
    text = console.export_text()
    assert "utilisation source: estimate" in text
    line_a = next(line for line in text.splitlines() if "ptu-a" in line)
    for cell in ("55.1%", "0.4s", "5/10", "120", "3/117", "3.2", "40"):
        assert cell in line_a
    line_b = next(line for line in text.splitlines() if "ptu-b" in line)
    assert "- (stale)" in line_b and "0/10" in line_b


def test_render_shows_what_the_calibrated_estimate_is_made_of() -> None:
    cal = Calibration(
        model=0.31, correction=0.24, correction_age_s=0.2, observed=0.56, observed_age_s=0.2,
        throttled_s=1.5, unseen=0.24,
    )  # fmt: skip
    row = Row("ptu-a", 0.55, 0.1, False, 5, 10, 4, 0, WorkerSummary(), calibration=cal)
    console = Console(record=True, width=260)
    console.print(render([row], "estimate"))
    line = next(line for line in console.export_text().splitlines() if "ptu-a" in line)
    for cell in ("31.0%", "56.0% (0.2s)", "+24.0% (0.2s) 429 1.5s", "24.0%"):
        assert cell in line
    assert calibration_cells(None) == ("-", "-", "-", "-")
    lagged = Calibration(0.4, 0.05, 0.1, 0.45, 0.1, model_kind="lag 3s", uncertainty=0.021)
    assert calibration_cells(lagged)[1] == "45.0% (0.1s) lag 3s ±2.1% (raise only)"
    trusted = Calibration(0.4, 0.05, 0.1, 0.45, 0.1, model_kind="avg 5s", trusted=True)
    assert calibration_cells(trusted)[1] == "45.0% (0.1s) avg 5s"


def test_waiting_lanes_and_in_flight_requests_are_apart_and_queued_excludes_in_flight() -> None:
    beats = [
        beat(NOW, a={"in_flight": 3, "waiting": 1, "requests_in_flight": 2}),
        beat(NOW, a={"in_flight": 1, "waiting": 1, "requests_in_flight": 0}),
    ]
    w = summarise(beats, NOW)["a"]
    assert (w.in_flight, w.waiting, w.requests) == (4, 2, 2)
    row = Row("ptu-a", 0.1, 0.2, False, 10, 10, 4, 9, w)
    console = Console(record=True, width=260)
    console.print(render([row], "estimate"))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "deployment" in line)
    cells = [c.strip() for c in next(x for x in text.splitlines() if "ptu-a" in x).split("│")]
    names = [c.strip() for c in header.split("┃")]
    values = dict(zip(names, cells, strict=True))
    # 9 messages in the stream, 2 of them taken by workers: 7 still queued
    assert (values["in flight"], values["waiting"], values["queued"]) == ("2", "2", "7")
    assert "waiting:   worker lanes holding a slot" in text
    assert "queued:    requests no worker has taken yet" in text


def test_queued_is_never_negative_and_unknown_stays_unknown() -> None:
    assert queued(3, 5) == 0 and queued(None, 1) is None and queued(12, 5) == 7


def test_render_shows_the_deployments_spilled_low_priority_calls() -> None:
    counts = {"completed": 12, "spilled": 3}
    row = Row("ptu-a", 0.1, 0.2, False, 10, 10, 4, 0, WorkerSummary(), counts=counts)
    console = Console(record=True, width=260)
    console.print(render([row], "estimate"))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "deployment" in line)
    cells = [c.strip() for c in next(x for x in text.splitlines() if "ptu-a" in x).split("│")]
    values = dict(zip([c.strip() for c in header.split("┃")], cells, strict=True))
    assert (values["completed"], values["spilled"]) == ("12", "3")
    assert "spilled:" in text  # the legend says what it counts


BUSY = Row(
    "gpt-4o-mini-ptu-east", 0.5512, 0.4, False, 5, 10, 4, 12_000,
    WorkerSummary(2, 4, 13.2, 40, 1, 0, 2, 4), circuit="open", circuit_left_s=212,
    dead_letters=1234, counts={"completed": 99_999, "failed": 12, "spilled": 3},
    class_depth={"low": 3, "batch": 11_997},
    calibration=Calibration(0.31, 0.24, 0.2, 0.56, 0.2, throttled_s=1.5, unseen=0.24),
)  # fmt: skip
STALE = Row("ptu-b", None, None, True, 0, 10, None, None, WorkerSummary(), circuit="half_open")


def test_the_compact_view_fits_100_columns_one_line_per_deployment() -> None:
    console = Console(record=True, width=100)
    console.print(render_compact([BUSY, STALE], "azure_monitor"))
    lines = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 100
    header = next(line for line in lines if line.startswith("deployment"))
    assert header.split() == [
        "deployment", "utilisation", "limit", "in", "flight", "queued", "low/batch",
        "results/s", "circuit", "dlq",
    ]  # fmt: skip
    busy = next(line for line in lines if line.startswith("gpt-4o-mini-ptu-east "))
    assert busy.split() == [
        "gpt-4o-mini-ptu-east", "55.1%", "0.4s", "5/10", "4", "11996", "3/11997", "13.2",
        "open", "212s", "1234",
    ]  # fmt: skip
    stale = next(line for line in lines if line.startswith("ptu-b "))
    assert stale.split() == [
        "ptu-b",
        "-",
        "(stale)",
        "0/10",
        "0",
        "-",
        "-",
        "0.0",
        "half_open",
        "0",
    ]
    assert any(line.startswith("--wide: every column") for line in lines)


def test_a_long_deployment_name_folds_and_is_never_cut_short() -> None:
    row = Row("d" * 40, 0.1, 0.2, False, 10, 10, 0, 0, WorkerSummary())
    console = Console(record=True, width=100)
    console.print(render_compact([row], "estimate"))
    text = console.export_text()
    assert "…" not in text and sum(line.count("d") for line in text.splitlines()) >= 40


def test_the_json_document_carries_every_field_of_every_row() -> None:
    doc = json.loads(document([BUSY, STALE], "estimate", 1_000.0))
    assert (doc["at"], doc["source"], doc["redis_data_lost"]) == (1_000.0, "estimate", None)
    busy, stale = doc["deployments"]
    assert set(busy) == {f.name for f in dataclasses.fields(Row)} | {"queued"}
    assert busy["class_depth"] == {"low": 3, "batch": 11_997} and busy["queued"] == 11_996
    assert busy["workers"] == dataclasses.asdict(BUSY.workers)
    assert busy["calibration"]["observed"] == 0.56 and busy["counts"]["completed"] == 99_999
    assert (busy["circuit"], busy["circuit_left_s"], busy["dead_letters"]) == ("open", 212, 1234)
    assert stale["utilisation"] is None and stale["stale"] is True and stale["class_depth"] is None
    lost = Marker("new", 1.0, lost_from="old", lost_at=2.0)
    assert json.loads(document([], "estimate", 3.0, lost))["redis_data_lost"]["lost_from"] == "old"

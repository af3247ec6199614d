"""Table tests for the simulator's per-minute metrics recorder."""

from __future__ import annotations

import pytest

from simulator.monitor.recorder import (
    MAX_POINTS,
    MetricQueryError,
    MetricsRecorder,
    MinutePoint,
    minute_floor,
)

UTIL = "AzureOpenAIProvisionedManagedUtilizationV2"
T0 = 1_800_000_000.0 - (1_800_000_000.0 % 60)  # a minute boundary
DEP = "ModelDeploymentName"


def _long_after(lag_s: float = 0.0) -> float:
    """A `now` at which every minute of the first hour is visible."""
    return T0 + 3600 + lag_s


@pytest.mark.parametrize(
    ("samples", "average", "maximum", "minimum"),
    [
        ([10.0], 10.0, 10.0, 10.0),
        ([10.0, 20.0, 30.0], 20.0, 30.0, 10.0),
        ([0.0, 0.0, 150.0, 0.0], 37.5, 150.0, 0.0),
        ([99.5] * 60, 99.5, 99.5, 99.5),
    ],
)
def test_utilisation_average_and_extremes_per_minute(
    samples: list[float], average: float, maximum: float, minimum: float
) -> None:
    rec = MetricsRecorder(lag_s=0)
    for i, value in enumerate(samples):
        rec.sample(T0 + i * (59 / len(samples)), "d", value)
    [series] = rec.query(_long_after(), UTIL, T0, T0 + 60, {DEP: ["d"]})
    [point] = series.points
    assert series.dimensions == ((DEP, "d"),)
    assert point.time_stamp == T0
    assert point.average == pytest.approx(average)
    assert (point.maximum, point.minimum, point.count) == (maximum, minimum, len(samples))


def test_samples_land_in_their_own_minute() -> None:
    rec = MetricsRecorder(lag_s=0)
    for second, value in [(0, 10.0), (59.999, 30.0), (60, 50.0), (119, 70.0), (185, 90.0)]:
        rec.sample(T0 + second, "d", value)
    [series] = rec.query(_long_after(), UTIL, T0, T0 + 240, {DEP: ["d"]})
    assert [(p.time_stamp - T0, p.average, p.maximum) for p in series.points] == [
        (0, 20.0, 30.0),
        (60, 60.0, 70.0),
        (120, None, None),
        (180, 90.0, 90.0),
    ]


@pytest.mark.parametrize(
    ("lag_s", "now_offset", "visible"),
    [
        (0, 59.9, False),
        (0, 60, True),
        (90, 149.9, False),
        (90, 150, True),
        (90, 400, True),
        (600, 659, False),
        (600, 660, True),
    ],
)
def test_minute_visible_only_after_its_end_plus_lag(
    lag_s: float, now_offset: float, visible: bool
) -> None:
    rec = MetricsRecorder(lag_s=lag_s)
    rec.sample(T0 + 5, "d", 42.0)
    [series] = rec.query(T0 + now_offset, UTIL, T0, T0 + 60, {DEP: ["d"]})
    expected = MinutePoint(T0, 42.0, 42.0, 42.0, 42.0, 1.0) if visible else MinutePoint(T0)
    assert series.points == (expected,)
    assert rec.visible(T0 + now_offset, T0) is visible


def test_tokens_are_totals_per_deployment() -> None:
    rec = MetricsRecorder(lag_s=0)
    rec.add_tokens(T0 + 1, "a", 100, 10)
    rec.add_tokens(T0 + 2, "a", 50, 5)
    rec.add_tokens(T0 + 3, "b", 7, 3)
    now = _long_after()
    prompt = rec.query(now, "ProcessedPromptTokens", T0, T0 + 60, {DEP: None})
    generated = rec.query(now, "GeneratedTokens", T0, T0 + 60, {DEP: None})
    assert [(s.dimensions, s.points[0].total) for s in prompt] == [
        (((DEP, "a"),), 150.0),
        (((DEP, "b"),), 7.0),
    ]
    assert [s.points[0].total for s in generated] == [15.0, 3.0]


def test_requests_split_by_status_code_and_filtered_by_deployment() -> None:
    rec = MetricsRecorder(lag_s=0)
    for code in [200, 200, 429, 200, 500]:
        rec.add_request(T0 + 1, "a", code)
    rec.add_request(T0 + 1, "b", 429)
    now = _long_after()
    by_code = rec.query(now, "AzureOpenAIRequests", T0, T0 + 60, {DEP: ["a"], "StatusCode": None})
    assert [(s.dimensions, s.points[0].total) for s in by_code] == [
        (((DEP, "a"), ("StatusCode", "200")), 3.0),
        (((DEP, "a"), ("StatusCode", "429")), 1.0),
        (((DEP, "a"), ("StatusCode", "500")), 1.0),
    ]
    [all_429] = rec.query(now, "AzureOpenAIRequests", T0, T0 + 60, {"StatusCode": ["429"]})
    assert all_429.points[0].total == 2.0


def test_no_filter_gives_one_series_aggregated_over_deployments() -> None:
    rec = MetricsRecorder(lag_s=0)
    rec.sample(T0 + 1, "a", 10.0)
    rec.sample(T0 + 2, "b", 30.0)
    [series] = rec.query(_long_after(), UTIL, T0, T0 + 60)
    assert series.dimensions == ()
    assert (series.points[0].average, series.points[0].maximum) == (20.0, 30.0)


def test_split_can_roll_up_a_filtered_dimension() -> None:
    rec = MetricsRecorder(lag_s=0)
    rec.sample(T0 + 1, "a", 10.0)
    rec.sample(T0 + 2, "b", 30.0)
    rec.sample(T0 + 3, "c", 90.0)
    [series] = rec.query(_long_after(), UTIL, T0, T0 + 60, {DEP: ["a", "b"]}, split=[])
    assert (series.points[0].average, series.points[0].maximum) == (20.0, 30.0)


def test_named_deployment_without_data_still_has_a_series() -> None:
    rec = MetricsRecorder(lag_s=0)
    [series] = rec.query(_long_after(), UTIL, T0, T0 + 120, {DEP: ["idle"]})
    assert series.dimensions == ((DEP, "idle"),)
    assert series.points == (MinutePoint(T0), MinutePoint(T0 + 60))
    assert rec.query(_long_after(), UTIL, T0, T0 + 60, {DEP: None}) == []


@pytest.mark.parametrize(
    ("now_offset", "expected_total"),
    [(30, None), (120, 0.0)],
)
def test_count_metrics_report_zero_for_visible_empty_minutes(
    now_offset: float, expected_total: float | None
) -> None:
    rec = MetricsRecorder(lag_s=0)
    [series] = rec.query(T0 + now_offset, "GeneratedTokens", T0, T0 + 60)
    assert series.points[0].total == expected_total
    assert series.points[0].average is None


@pytest.mark.parametrize(
    ("start", "end", "stamps"),
    [
        (T0, T0 + 60, [T0]),
        (T0 + 30, T0 + 90, [T0, T0 + 60]),
        (T0 + 59, T0 + 60.5, [T0, T0 + 60]),
        (T0, T0 + 180, [T0, T0 + 60, T0 + 120]),
    ],
)
def test_points_cover_the_minutes_overlapping_the_timespan(
    start: float, end: float, stamps: list[float]
) -> None:
    rec = MetricsRecorder(lag_s=0)
    [series] = rec.query(_long_after(), UTIL, start, end)
    assert [p.time_stamp for p in series.points] == stamps


@pytest.mark.parametrize(
    ("metric", "start", "end", "flt"),
    [
        ("NoSuchMetric", T0, T0 + 60, None),
        (UTIL, T0, T0 + 60, {"StatusCode": None}),
        (UTIL, T0 + 60, T0, None),
        (UTIL, T0, T0 + 60 * (MAX_POINTS + 1), None),
    ],
)
def test_invalid_queries_raise(
    metric: str, start: float, end: float, flt: dict[str, list[str] | None] | None
) -> None:
    with pytest.raises(MetricQueryError):
        MetricsRecorder(lag_s=0).query(_long_after(), metric, start, end, flt)


def test_memory_is_bounded_by_retention() -> None:
    rec = MetricsRecorder(lag_s=90, retention_s=3600)
    for second in range(0, 6 * 3600, 2):
        rec.sample(T0 + second, "d", 50.0)
        rec.add_request(T0 + second, "d", 200)
    assert repr(rec) == "<MetricsRecorder lag_s=90 minutes=61 deployments=1>"
    now = T0 + 6 * 3600
    [old] = rec.query(now, UTIL, T0, T0 + 60)
    assert old.points[0].average is None
    [recent] = rec.query(now, UTIL, now - 1800, now - 1740)
    assert recent.points[0].average == 50.0


def test_minute_floor_is_utc_aligned() -> None:
    assert minute_floor(T0 + 59.999) == T0
    assert minute_floor(T0 + 60) == T0 + 60
    assert minute_floor(T0) % 60 == 0

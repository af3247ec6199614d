"""Table tests for the pure parts of the simulator's metrics:getBatch route."""

from __future__ import annotations

import pytest

from simulator.monitor.recorder import MinutePoint, Series
from simulator.monitor.routes import MonitorError, iso, order_and_top, parse_filter, parse_time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, {}),
        ("  ", {}),
        ("ModelDeploymentName eq 'gpt-4o-mini-ptu'", {"ModelDeploymentName": ["gpt-4o-mini-ptu"]}),
        ("ModelDeploymentName eq '*'", {"ModelDeploymentName": None}),
        (
            "ModelDeploymentName eq 'a' or ModelDeploymentName eq 'b'",
            {"ModelDeploymentName": ["a", "b"]},
        ),
        (
            "(ModelDeploymentName eq 'a' or ModelDeploymentName eq 'b') and StatusCode eq '*'",
            {"ModelDeploymentName": ["a", "b"], "StatusCode": None},
        ),
        (
            "A eq 'a1' and B eq 'b1' or B eq 'b2' and C eq '*'",
            {"A": ["a1"], "B": ["b1", "b2"], "C": None},
        ),
        (
            "modeldeploymentname EQ 'x' AND statuscode eq '429'",
            {"modeldeploymentname": ["x"], "statuscode": ["429"]},
        ),
        ("ModelDeploymentName eq 'a' or ModelDeploymentName eq '*'", {"ModelDeploymentName": None}),
    ],
)
def test_parse_filter(text: str | None, expected: dict[str, list[str] | None]) -> None:
    assert parse_filter(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "ModelDeploymentName = 'x'",
        "ModelDeploymentName eq x",
        "A eq 'a1' or B eq 'b1'",
        "ModelDeploymentName ne 'x'",
    ],
)
def test_parse_filter_refuses_what_azure_refuses(text: str) -> None:
    with pytest.raises(MonitorError) as info:
        parse_filter(text)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "text",
    [
        "2027-01-15T08:00:00Z",
        "2027-01-15T08:00:00.000Z",
        "2027-01-15T08:00:00+00:00",
        "2027-01-15T08:00:00 00:00",
        "2027-01-15T08:00:00",
        "2027-01-15T09:00:00+01:00",
    ],
)
def test_parse_time_accepts_the_sdk_formats(text: str) -> None:
    assert iso(parse_time(text)) == "2027-01-15T08:00:00Z"
    assert parse_time(text) % 60 == 0


def test_parse_time_refuses_garbage() -> None:
    with pytest.raises(MonitorError):
        parse_time("yesterday")


def _series(name: str, *averages: float | None) -> Series:
    points = tuple(MinutePoint(60.0 * i, average=a, total=a) for i, a in enumerate(averages))
    return Series(dimensions=(("ModelDeploymentName", name),), points=points)


@pytest.mark.parametrize(
    ("order_by", "top", "expected"),
    [
        (None, 10, ["a", "b", "c", "d"]),
        (None, 2, ["a", "b"]),
        ("average desc", 10, ["c", "a", "b", "d"]),
        ("average asc", 2, ["b", "a"]),
        ("sum desc", 1, ["c"]),
        ("Average", 10, ["b", "a", "c", "d"]),
    ],
)
def test_order_and_top(order_by: str | None, top: int, expected: list[str]) -> None:
    series = [
        _series("a", 10.0, 30.0),
        _series("b", 5.0, None),
        _series("c", 90.0, 90.0),
        _series("d", None, None),
    ]
    ordered = order_and_top(series, order_by, top)
    assert [s.dimensions[0][1] for s in ordered] == expected


def test_order_by_refuses_unknown_aggregation() -> None:
    with pytest.raises(MonitorError):
        order_and_top([], "median desc", 10)

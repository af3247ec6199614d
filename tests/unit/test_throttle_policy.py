from __future__ import annotations

import itertools

import pytest

from orchestrator.throttle.policy import Curve, Limit, concurrency_limit, limit_for
from orchestrator.utilisation.base import Reading


@pytest.mark.parametrize(
    ("u", "expected"),
    [
        (0.0, 10),
        (0.20, 10),  # at the lower threshold: full speed
        (0.21, 9),  # just above: rounded down
        (0.55, 5),  # halfway: 10 - 9 * 0.5 = 5.5 -> 5
        (0.80, 2),  # 10 - 9 * (0.6/0.7) = 2.29 -> 2
        (0.899, 1),  # never below 1 under the upper threshold
        (0.90, 0),  # at the upper threshold: paused
        (1.30, 0),
    ],
)
def test_linear_curve(u: float, expected: int) -> None:
    assert concurrency_limit(u, 0.20, 0.90, 10) == expected


def test_monotone_non_increasing() -> None:
    values = [concurrency_limit(i / 1000, 0.2, 0.9, 25) for i in range(0, 1200)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert values[0] == 25 and values[-1] == 0


@pytest.mark.parametrize(("lo", "hi", "m"), [(0.5, 0.5, 10), (0.6, 0.4, 10), (0.2, 0.9, 0)])
def test_rejects_bad_arguments(lo: float, hi: float, m: int) -> None:
    with pytest.raises(ValueError):
        concurrency_limit(0.5, lo, hi, m)


CURVE = Curve(0.20, 0.90, 10)


@pytest.mark.parametrize(
    ("reading", "now", "expected"),
    [
        (None, 100.0, Limit(0, "missing")),
        (Reading(0.10, 100.0, "estimate"), 100.0, Limit(10, "ok")),
        (Reading(0.10, 95.0, "estimate"), 100.0, Limit(10, "ok")),  # exactly max age: fresh
        (Reading(0.10, 94.9, "estimate"), 100.0, Limit(0, "stale")),  # older: fail closed
        (Reading(0.55, 99.0, "estimate"), 100.0, Limit(5, "ok")),
        (Reading(0.95, 99.0, "estimate"), 100.0, Limit(0, "ok")),  # paused by the curve
        (Reading(0.10, 101.0, "estimate"), 100.0, Limit(10, "ok")),  # from the future: age 0
    ],
)
def test_limit_for_a_reading(reading: Reading | None, now: float, expected: Limit) -> None:
    assert limit_for(reading, now, 5.0, CURVE) == expected

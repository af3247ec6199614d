"""How the utilisation header is reported (exact, noisy, absent), from tables."""

from __future__ import annotations

import random

import pytest

from simulator.openai.header import (
    NOISY_POINTS,
    UtilisationHistory,
    header_value,
    reported,
)


def history(*samples: tuple[float, float]) -> UtilisationHistory:
    h = UtilisationHistory(keep_s=3.0)
    for t, u in samples:
        h.record(t, u)
    return h


@pytest.mark.parametrize(
    ("samples", "t", "expected"),
    [
        ([], 1.0, None),
        ([(1.0, 0.5)], 0.0, 0.5),  # before the first sample: the oldest known
        ([(1.0, 0.5)], 5.0, 0.5),  # after the last: the newest
        ([(0.0, 0.2), (1.0, 0.6)], 0.25, 0.3),  # interpolated
        ([(0.0, 0.2), (1.0, 0.6), (1.0, 0.9)], 0.75, 0.5),  # before a jump: no trace of it
        ([(0.0, 0.2), (1.0, 0.6), (1.0, 0.9)], 1.0, 0.9),  # at it: the level after
        ([(0.0, 0.2), (1.0, 0.6), (1.0, 0.9)], 1.5, 0.9),
    ],
)
def test_history_interpolates(
    samples: list[tuple[float, float]], t: float, expected: float | None
) -> None:
    assert history(*samples).at(t) == (None if expected is None else pytest.approx(expected))


def test_history_drops_old_samples_but_keeps_the_one_before() -> None:
    h = history(*[(i * 0.5, i / 100) for i in range(21)])  # 0 .. 10 s
    assert repr(h) == "<UtilisationHistory samples=7 keep_s=3>"
    assert h.at(7.0) == pytest.approx(0.14)
    assert h.at(6.0) == pytest.approx(0.14)  # older than kept: the oldest kept value
    h.record(9.0, 1.0)  # time never runs backwards
    assert h.at(10.0) == pytest.approx(0.2)


@pytest.mark.parametrize(("mode", "expected"), [("exact", 0.73), ("absent", None)])
def test_exact_and_absent(mode: str, expected: float | None) -> None:
    h = history((0.0, 0.1), (2.0, 0.73))
    assert reported(mode, 2.0, 0.73, h, random.Random(0)) == expected


def test_noisy_is_the_value_of_one_second_earlier_within_five_points() -> None:
    h = history((0.0, 0.2), (2.0, 0.6))  # at t=1: 0.4
    rng = random.Random(7)
    values = [reported("noisy", 2.0, 0.6, h, rng) for _ in range(2_000)]
    assert all(v is not None and abs(v - 0.4) <= NOISY_POINTS / 100 for v in values)
    spread = [v for v in values if v is not None]
    assert max(spread) - min(spread) > 0.09  # the noise spans the ± range
    assert sum(spread) / len(spread) == pytest.approx(0.4, abs=0.005)
    assert reported("noisy", 2.0, 0.6, h, random.Random(7)) == values[0]  # seeded


def test_noisy_never_reads_below_zero() -> None:
    h = history((0.0, 0.0), (2.0, 0.0))
    draws = [reported("noisy", 2.0, 0.0, h, random.Random(s)) for s in range(200)]
    assert min(v for v in draws if v is not None) == 0.0


@pytest.mark.parametrize(("fraction", "text"), [(0.425, "42.5%"), (1.0, "100.0%"), (0.0, "0.0%")])
def test_header_value(fraction: float, text: str) -> None:
    assert header_value(fraction) == text

"""How the utilisation header is reported (exact, noisy, absent, lagged, smoothed)."""

from __future__ import annotations

import math
import random

import pytest

from simulator.openai.header import (
    NOISY_POINTS,
    HeaderReporter,
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


def reporter(mode: str, *samples: tuple[float, float], **knobs: float) -> HeaderReporter:
    r = HeaderReporter(mode, rng=random.Random(0), **knobs)
    for t, u in samples:
        r.observe(t, u)
    return r


# a bucket filled to 0.9 at t=0 (a jump from 0), draining 0.1 a second, sampled every 0.5 s
DRAINING = [(0.0, 0.0), (0.0, 0.9), *((i * 0.5, 0.9 - 0.05 * i) for i in range(1, 19))]


@pytest.mark.parametrize(
    ("lag_s", "now", "expected"),
    [
        (3.0, 9.0, 0.9 - 0.1 * 6.0),  # the level of 3 s earlier
        (3.0, 2.0, 0.0),  # 3 s before t=2 the bucket was still empty (the oldest sample)
        (5.0, 9.0, 0.9 - 0.1 * 4.0),
        (0.0, 9.0, 0.0),  # no lag: the truth
        (2.25, 9.0, 0.9 - 0.1 * 6.75),  # between samples: interpolated
    ],
)
def test_lagged_reports_the_level_of_lag_seconds_earlier(
    lag_s: float, now: float, expected: float
) -> None:
    r = reporter("lagged", *[(t, u) for t, u in DRAINING if t <= now], lag_s=lag_s)
    assert r.report(now, 0.9 - 0.1 * now if now else 0.9) == pytest.approx(expected)


def test_the_history_keeps_at_least_the_lag() -> None:
    r = reporter("lagged", *((i * 0.1, i / 1000) for i in range(201)), lag_s=15.0)
    assert r.history.keep_s == 16.0 and r.report(20.0, 0.2) == pytest.approx(0.05)
    r.configure(lag_s=1.0)
    assert r.history.keep_s == 3.0  # never less than the noisy mode needs


def ema_reference(samples: list[tuple[float, float]], tau: float, step: float = 1e-4) -> float:
    """The average by brute force: Euler steps over the piecewise-linear input."""
    y, (t, x) = samples[0][1], samples[0]
    for t1, x1 in samples[1:]:
        n = round((t1 - t) / step)
        for k in range(n):
            u = x + (x1 - x) * (k + 0.5) / n
            y += (u - y) * step / tau
        t, x = t1, x1
    return y


@pytest.mark.parametrize(
    ("samples", "tau"),
    [
        ([(0.0, 0.0), (0.0, 1.0), (5.0, 1.0)], 5.0),  # a step: 1 - e^-1 after one constant
        ([(0.0, 0.0), (0.0, 1.0), (5.0, 1.0)], 1.0),
        ([(0.0, 0.8), (4.0, 0.0)], 2.0),  # a linear drain
        ([(0.0, 0.0), (1.0, 0.5), (1.0, 1.0), (3.0, 0.8), (6.0, 0.2)], 3.0),
    ],
)
def test_smoothed_is_the_exact_moving_average(
    samples: list[tuple[float, float]], tau: float
) -> None:
    r = reporter("smoothed", *samples, smoothing_s=tau)
    end, exact = samples[-1]
    assert r.report(end, exact) == pytest.approx(ema_reference(samples, tau), abs=1e-4)


def test_smoothed_does_not_depend_on_how_often_it_is_sampled() -> None:
    sparse = reporter("smoothed", (0.0, 0.0), (0.0, 1.0), (10.0, 0.0), smoothing_s=5.0)
    dense = reporter("smoothed", (0.0, 0.0), smoothing_s=5.0)
    for i in range(1001):  # the same input, a sample every 10 ms (many requests)
        dense.observe(i * 0.01, 1.0 - i * 0.001)
    assert sparse.report(10.0, 0.0) == pytest.approx(dense.report(10.0, 0.0), abs=1e-9)
    # y = x - s*tau + (y0 - x0 + s*tau) e^(-t/tau), s = -0.1/s, tau = 5 s, y0 = 0, x0 = 1
    assert sparse.report(10.0, 0.0) == pytest.approx(0.5 - 1.5 * math.exp(-2))


def test_smoothed_before_any_sample_and_with_no_time_constant() -> None:
    assert reporter("smoothed").report(1.0, 0.4) == 0.4  # nothing seen yet: the truth
    r = reporter("smoothed", (0.0, 0.1), (1.0, 0.7), smoothing_s=0.0)
    assert r.report(1.0, 0.7) == 0.7
    r.observe(0.5, 0.0)  # time never runs backwards
    assert r.smoother.value == 0.7
    assert repr(r.smoother) == "<Smoother time_constant_s=0 value=0.7000>"


def test_forget_starts_the_past_again_and_the_knobs_are_validated() -> None:
    r = reporter("smoothed", (0.0, 0.0), (0.0, 1.0), (5.0, 1.0), smoothing_s=5.0)
    r.forget()
    assert r.smoother.value is None and r.report(6.0, 0.3) == 0.3
    assert repr(r) == "<HeaderReporter mode=smoothed lag_s=3 smoothing_s=5>"
    with pytest.raises(ValueError, match="one of exact, noisy, absent, lagged, smoothed"):
        r.configure("late")
    with pytest.raises(ValueError, match="header_lag_s"):
        HeaderReporter("lagged", lag_s=-1.0)
    with pytest.raises(ValueError, match="header_smoothing_s"):
        r.configure(smoothing_s=float("nan"))

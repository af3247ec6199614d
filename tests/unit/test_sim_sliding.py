"""The sliding-window utilisation model and the meter switch, from tables, with explicit times."""

from __future__ import annotations

import pytest

from simulator.openai.bucket import LeakyBucket
from simulator.openai.meter import make_meter, switch
from simulator.openai.sliding import SlidingWindow

# 60,000 TPM over a 10 s window -> 100 % is a sum of 10,000 admitted in the last 10 s.
CAP, WINDOW = 60_000.0, 10.0


def window(*charges: tuple[float, float]) -> SlidingWindow:
    w = SlidingWindow(CAP, WINDOW)
    for at, cost in charges:
        assert w.try_admit(at, cost).admitted
    return w


@pytest.mark.parametrize(
    ("charges", "t", "expected"),
    [
        ([], 0.0, 0.0),
        ([(0.0, 4_000.0)], 0.0, 0.4),
        ([(0.0, 4_000.0)], 9.99, 0.4),  # no drain: a charge counts fully for one window
        ([(0.0, 4_000.0)], 10.0, 0.0),  # and not at all after it
        ([(0.0, 4_000.0), (5.0, 3_000.0)], 12.0, 0.3),
        ([(0.0, 9_000.0), (1.0, 9_000.0)], 1.0, 1.8),  # admitted below 100 %, may overshoot
    ],
)
def test_utilisation_is_charges_over_the_trailing_window(
    charges: list[tuple[float, float]], t: float, expected: float
) -> None:
    assert window(*charges).utilization(t) == pytest.approx(expected)


def test_steady_load_reads_its_share_of_capacity() -> None:
    # the property that separates it from the bucket: 40 % of capacity reads 40 %, not ~0
    w, b = SlidingWindow(CAP, WINDOW), LeakyBucket(CAP, WINDOW)
    for i in range(200):  # 400 every 0.1 s = 4,000/s... of a 1,000/s capacity: 40 %
        t = i * 0.1
        assert w.try_admit(t, 40.0).admitted and b.try_admit(t, 40.0).admitted
    assert w.utilization(19.9) == pytest.approx(0.4)
    assert b.utilization(19.9) < 0.01


@pytest.mark.parametrize(
    ("charges", "t", "wait"),
    [
        ([(0.0, 10_000.0)], 0.0, 10.0),  # exactly 100 %: refused until the charge ages out
        ([(0.0, 10_000.0)], 4.0, 6.0),
        ([(0.0, 6_000.0), (2.0, 6_000.0)], 3.0, 7.0),  # the first ageing out is enough
        ([(0.0, 1_000.0), (1.0, 9_500.0), (2.0, 3_000.0)], 2.0, 9.0),  # needs the second
        ([(0.0, 5_000.0)], 1.0, 0.0),
    ],
)
def test_refusal_and_honest_retry_after(
    charges: list[tuple[float, float]], t: float, wait: float
) -> None:
    w = SlidingWindow(CAP, WINDOW)
    for at, cost in charges:
        w.reconcile(at, cost, at)  # booked regardless of the level, to build the table
    assert w.time_until_below_full(t) == pytest.approx(wait)
    result = w.try_admit(t, 1.0)
    assert result.admitted is (wait == 0.0)
    if wait:
        assert result.retry_after_s == pytest.approx(wait)
        assert not w.try_admit(t + wait - 0.001, 1.0).admitted
        assert w.try_admit(t + wait, 1.0).admitted


@pytest.mark.parametrize(
    ("delta", "admitted_at", "t", "expected"),
    [
        (-3_000.0, 0.0, 2.0, 0.5),  # refund booked at admission time
        (1_000.0, 0.0, 2.0, 0.9),  # used more than admitted
        (-3_000.0, 0.0, 10.5, 0.0),  # leaves the window with the charge it corrects
        (-8_000.0, 0.0, 2.0, 0.0),  # never negative
    ],
)
def test_reconcile_is_booked_at_admission(
    delta: float, admitted_at: float, t: float, expected: float
) -> None:
    w = window((0.0, 8_000.0))
    w.reconcile(1.0, delta, admitted_at)
    assert w.utilization(t) == pytest.approx(expected)


def test_reconcile_of_an_aged_out_call_changes_nothing() -> None:
    w = window((0.0, 8_000.0), (9.0, 2_000.0))
    w.reconcile(11.0, 5_000.0, 0.0)
    assert w.utilization(11.0) == pytest.approx(0.2)


def test_capacity_moves_the_mark_reset_and_repr() -> None:
    w = window((0.0, 5_000.0))
    w.set_capacity(0.0, 120_000.0)
    assert w.full == 20_000.0 and w.utilization(0.0) == pytest.approx(0.25)
    assert repr(w) == (
        "<SlidingWindow capacity_tpm=120000 window_s=10 charges=1 total=5000.0 full=20000.0>"
    )
    w.reset(1.0)
    assert w.utilization(1.0) == 0.0
    with pytest.raises(ValueError):
        SlidingWindow(0.0, 10.0)
    with pytest.raises(ValueError):
        w.set_capacity(1.0, 0.0)


@pytest.mark.parametrize(("source", "target"), [("bucket", "sliding"), ("sliding", "bucket")])
def test_switch_carries_the_level_over(source: str, target: str) -> None:
    meter = make_meter(source, CAP, WINDOW, 0.0)
    assert meter.try_admit(0.0, 7_000.0).admitted
    fresh = switch(meter, target, 2.0)
    assert type(fresh).__name__ == {"bucket": "LeakyBucket", "sliding": "SlidingWindow"}[target]
    assert fresh.utilization(2.0) == pytest.approx(meter.utilization(2.0))
    assert (fresh.capacity_tpm, fresh.window_s) == (CAP, WINDOW)


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="bucket, sliding"):
        make_meter("rate", CAP, WINDOW, 0.0)

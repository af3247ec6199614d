"""The provisioned leaky bucket, from tables, with explicit times."""

from __future__ import annotations

import pytest

from simulator.openai.bucket import LeakyBucket, charge, retry_after_ms, retry_after_s

# 60,000 TPM -> drains 1,000 per second; window 10 s -> 100 % is a level of 10,000.
CAP, WINDOW = 60_000.0, 10.0


def bucket(level: float = 0.0) -> LeakyBucket:
    b = LeakyBucket(CAP, WINDOW, now=0.0)
    if level:
        b.reconcile(0.0, level)
    return b


def test_geometry() -> None:
    b = bucket()
    assert b.drain_per_s == 1_000.0
    assert b.full == 10_000.0


@pytest.mark.parametrize(
    ("prompt", "cached", "output", "weight", "expected"),
    [
        (100, 0, 50, 3.0, 250.0),
        (2048, 1024, 10, 3.0, 1054.0),  # cached tokens are deducted
        (10, 50, 10, 4.0, 40.0),  # never a negative prompt share
        (0, 0, 0, 8.0, 0.0),
    ],
)
def test_charge(prompt: int, cached: int, output: int, weight: float, expected: float) -> None:
    assert charge(prompt, cached, output, weight) == expected


@pytest.mark.parametrize(
    ("level", "cost", "admitted", "level_after"),
    [
        (0.0, 500.0, True, 500.0),
        (9_999.0, 5_000.0, True, 14_999.0),  # below 100 %: admitted, may overshoot
        (10_000.0, 1.0, False, 10_000.0),  # exactly 100 %: refused
        (12_000.0, 1.0, False, 12_000.0),  # above: refused, nothing charged
    ],
)
def test_admission(level: float, cost: float, admitted: bool, level_after: float) -> None:
    b = bucket(level)
    result = b.try_admit(0.0, cost)
    assert result.admitted is admitted
    assert b.level(0.0) == level_after
    assert result.utilization == pytest.approx(level_after / 10_000.0)


@pytest.mark.parametrize(
    ("level", "t", "expected"),
    [
        (5_000.0, 1.0, 4_000.0),
        (5_000.0, 2.5, 2_500.0),
        (5_000.0, 10.0, 0.0),  # never below empty
        (5_000.0, -3.0, 5_000.0),  # an earlier time does not refill
    ],
)
def test_continuous_drain(level: float, t: float, expected: float) -> None:
    assert bucket(level).level(t) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("level", "wait"),
    [(13_000.0, 3.0), (10_500.0, 0.5), (10_000.0, 0.0), (4_000.0, 0.0)],
)
def test_time_until_below_full(level: float, wait: float) -> None:
    assert bucket(level).time_until_below_full(0.0) == pytest.approx(wait)


def test_refusal_carries_retry_after_and_waiting_it_admits() -> None:
    b = bucket(12_345.0)
    refused = b.try_admit(0.0, 100.0)
    assert not refused.admitted
    assert refused.retry_after_s == pytest.approx(2.345)
    ms = retry_after_ms(refused.retry_after_s)
    assert ms == 2345
    assert not b.try_admit(ms / 1000.0 - 0.002, 100.0).admitted
    assert b.try_admit(ms / 1000.0 + 0.0001, 100.0).admitted


@pytest.mark.parametrize(
    ("start", "delta", "expected"),
    [
        (4_000.0, -1_000.0, 3_000.0),  # used less than admitted: refund
        (4_000.0, 600.0, 4_600.0),  # used more: charge the difference
        (400.0, -1_000.0, 0.0),  # a refund larger than the level empties it
    ],
)
def test_reconcile(start: float, delta: float, expected: float) -> None:
    b = bucket(start)
    b.reconcile(0.0, delta)
    assert b.level(0.0) == expected


def test_in_flight_cost_counts_until_reconciled() -> None:
    b = bucket()
    assert b.try_admit(0.0, 10_000.0).admitted  # one long call fills the window
    assert not b.try_admit(0.0, 1.0).admitted
    b.reconcile(0.0, -9_000.0)  # it finished far shorter than max_tokens
    assert b.try_admit(0.0, 1.0).admitted


def test_set_capacity_keeps_level_and_moves_the_mark() -> None:
    b = bucket(10_000.0)
    b.set_capacity(0.0, 120_000.0)
    assert b.full == 20_000.0
    assert b.utilization(0.0) == 0.5
    assert b.level(1.0) == pytest.approx(8_000.0)


def test_reset_and_repr() -> None:
    b = bucket(7_000.0)
    b.reset(5.0)
    assert b.level(5.0) == 0.0
    assert repr(b) == "<LeakyBucket capacity_tpm=60000 window_s=10 level=0.0 full=10000.0>"


@pytest.mark.parametrize(
    ("seconds", "ms", "s"),
    [
        (0.0, 1, 1),
        (0.0004, 1, 1),
        (0.0011, 2, 1),
        (1.0, 1000, 1),
        (1.2, 1200, 2),
        (130.5, 130500, 131),
    ],
)
def test_header_rounding(seconds: float, ms: int, s: int) -> None:
    assert retry_after_ms(seconds) == ms
    assert retry_after_s(seconds) == s


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        LeakyBucket(0.0, 60.0)
    with pytest.raises(ValueError):
        bucket().set_capacity(0.0, -1.0)

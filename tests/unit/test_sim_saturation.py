"""The saturation scenario's analysis, from hand-made call records."""

from __future__ import annotations

import pytest

from bench.scenarios.saturation import Attempt, Probe, analyse


def attempt(
    t: float,
    status: int,
    *,
    retry: bool = False,
    util: float | None = 100.0,
    ms: int | None = 10,
    cost: float = 0.0,
) -> Attempt:
    return Attempt(t, status, retry, util, ms, cost)


GOOD_PROBES = [Probe(300, 429, 200), Probe(280, 429, 200)]


def test_admitted_rate_is_measured_after_settling() -> None:
    # capacity 60,000 TPM = 1,000/s; first 429 at 1 s, settle 1 s -> steady from 2 s to 12 s
    calls = [attempt(0.5, 200, cost=50_000.0), attempt(1.0, 429)]
    calls += [attempt(2.0 + i, 200, util=40.0, ms=None, cost=1_000.0) for i in range(10)]
    figures = analyse(calls, GOOD_PROBES, 60_000.0, t_end=12.0, settle_s=1.0)
    assert figures["steady_state_s"] == 10.0
    assert figures["admitted_vs_capacity"] == pytest.approx(1.0)
    assert all(figures["checks"].values())


@pytest.mark.parametrize(
    ("extra", "failed"),
    [
        (attempt(5.0, 429, util=99.9), "no_429_below_100pct"),
        (attempt(5.0, 429, util=None), "no_429_below_100pct"),
        (attempt(5.0, 429, ms=None), "every_429_has_retry_after_ms"),
        (attempt(5.0, 200, cost=2_000.0), "admitted_within_5pct"),
    ],
)
def test_each_check_can_fail(extra: Attempt, failed: str) -> None:
    calls = [attempt(1.0, 429), *[attempt(2.0 + i, 200, cost=1_000.0) for i in range(10)], extra]
    checks = analyse(calls, GOOD_PROBES, 60_000.0, t_end=12.0, settle_s=1.0)["checks"]
    assert [k for k, ok in checks.items() if not ok] == [failed]


def test_probe_checks_and_retry_fraction() -> None:
    calls = [attempt(1.0, 429), attempt(1.1, 429, retry=True), attempt(1.2, 200, retry=True)]
    figures = analyse(calls, [Probe(300, 200, 200), Probe(300, 429, 429)], 60_000.0, 2.0, 0.0)
    assert figures["retries_under_load_admitted_fraction"] == 0.5
    assert figures["probe_retries_admitted_fraction"] == 0.5
    assert figures["probe_early_retries_refused"] == "1/2"
    assert not figures["checks"]["retry_after_ms_retries_admitted_90pct"]
    assert not figures["checks"]["early_retries_refused"]


def test_no_throttling_means_no_measurement() -> None:
    figures = analyse([attempt(1.0, 200, cost=10.0)], GOOD_PROBES, 60_000.0, 5.0, 1.0)
    assert figures["admitted_vs_capacity"] == 0.0
    assert not figures["checks"]["admitted_within_5pct"]
    assert not figures["checks"]["every_429_has_retry_after_ms"]

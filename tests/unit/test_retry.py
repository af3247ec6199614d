"""Table tests of the pure retry decisions."""

from __future__ import annotations

import pytest

from orchestrator.core.errors import UpstreamError, UpstreamThrottled, UpstreamTimeout
from orchestrator.core.retry import RetryPolicy, backoff_s, decide, outage_delay_s

POLICY = RetryPolicy(max_attempts=4, base_s=1.0, max_s=10.0)


@pytest.mark.parametrize(
    ("attempt", "draw", "expected"),
    [
        (1, 0.0, 0.5),
        (1, 1.0, 1.0),
        (2, 0.0, 1.0),
        (3, 0.5, 3.0),
        (4, 1.0, 8.0),
        (5, 0.0, 5.0),  # ceiling 16 capped at 10
        (5, 1.0, 10.0),
        (500, 0.25, 6.25),  # huge attempt numbers stay capped, no overflow
    ],
)
def test_backoff_doubles_with_equal_jitter_and_is_capped(
    attempt: int, draw: float, expected: float
) -> None:
    assert backoff_s(attempt, 1.0, 10.0, draw) == pytest.approx(expected)


@pytest.mark.parametrize(("attempt", "draw"), [(0, 0.5), (1, -0.1), (1, 1.5)])
def test_backoff_rejects_bad_input(attempt: int, draw: float) -> None:
    with pytest.raises(ValueError):
        backoff_s(attempt, 1.0, 10.0, draw)


def _err(status: int, retry_after: float | None = None) -> UpstreamError:
    if status == 429:
        return UpstreamThrottled("t", status_code=429, retry_after_s=retry_after)
    if status == 408:
        return UpstreamTimeout("t", status_code=408)
    return UpstreamError("e", status_code=status)


@pytest.mark.parametrize(
    ("status", "retry_after", "attempt", "action", "delay", "reason"),
    [
        (429, 2.5, 1, "retry", 2.5, "retry-after"),
        (429, 0.0, 1, "retry", 0.0, "retry-after"),
        (429, 999.0, 1, "retry", 10.0, "retry-after"),  # capped at max_s
        (429, None, 2, "retry", 1.0 + 1.0 * 0.5, "backoff"),
        (408, None, 1, "retry", 0.75, "backoff"),
        (500, None, 3, "retry", 3.0, "backoff"),
        (503, None, 1, "retry", 0.75, "backoff"),
        (429, 1.0, 4, "fail", 0.0, "gave up after 4 attempts"),
        (500, None, 4, "fail", 0.0, "gave up after 4 attempts"),
        (400, None, 1, "fail", 0.0, "status 400 is not retryable"),
        (401, None, 1, "fail", 0.0, "status 401 is not retryable"),
        (404, None, 1, "fail", 0.0, "status 404 is not retryable"),
    ],
)
def test_decide(
    status: int,
    retry_after: float | None,
    attempt: int,
    action: str,
    delay: float,
    reason: str,
) -> None:
    decision = decide(_err(status, retry_after), attempt, POLICY, lambda: 0.5)
    assert decision.action == action
    assert decision.delay_s == pytest.approx(delay)
    assert decision.reason == reason


def test_policy_validates() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0, base_s=1, max_s=1)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=1, base_s=0, max_s=1)


@pytest.mark.parametrize(
    ("failures", "draw", "expected"),
    [
        (1, 0.0, 0.25),
        (1, 1.0, 0.5),
        (3, 1.0, 2.0),
        (10, 0.0, 7.5),
        (10_000, 1.0, 15.0),
        (0, 1.0, 0.5),
    ],
)
def test_outage_delay_grows_to_its_cap_and_never_gives_up(
    failures: int, draw: float, expected: float
) -> None:
    assert outage_delay_s(failures, draw) == pytest.approx(expected)

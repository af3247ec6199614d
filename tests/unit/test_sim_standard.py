"""Standard deployment TPM/RPM windows, from tables."""

from __future__ import annotations

import pytest

from simulator.openai.standard import StandardLimiter


def test_requests_per_window_follow_tpm() -> None:
    assert StandardLimiter(10_000).requests_per_window == 10  # 60 RPM -> 10 per 10 s
    assert StandardLimiter(100).requests_per_window == 1  # never zero


def test_token_window_resets_each_minute() -> None:
    lim = StandardLimiter(100_000)
    assert lim.try_admit(120.0, 60_000).admitted
    refused = lim.try_admit(150.0, 50_000)
    assert not refused.admitted
    assert refused.retry_after_s == pytest.approx(30.0)  # until 180 s, the next minute
    assert refused.remaining_tokens == 40_000
    assert lim.try_admit(180.0, 50_000).admitted


def test_request_window_is_ten_seconds() -> None:
    lim = StandardLimiter(1_000)  # 6 RPM -> 1 request per 10 s
    assert lim.try_admit(100.0, 10).admitted
    refused = lim.try_admit(103.0, 10)
    assert not refused.admitted
    assert refused.retry_after_s == pytest.approx(7.0)
    assert refused.remaining_requests == 0
    assert lim.try_admit(110.0, 10).admitted


@pytest.mark.parametrize(
    ("calls", "remaining_tokens", "remaining_requests"),
    [([], 10_000, 10), ([1_000], 9_000, 9), ([1_000, 2_500], 6_500, 8)],
)
def test_remaining_headers(
    calls: list[int], remaining_tokens: int, remaining_requests: int
) -> None:
    lim = StandardLimiter(10_000)
    for tokens in calls:
        assert lim.try_admit(60.0, tokens).admitted
    assert lim.remaining(61.0) == (remaining_tokens, remaining_requests)


def test_refused_call_charges_nothing_and_reset_forgets() -> None:
    lim = StandardLimiter(10_000)
    assert not lim.try_admit(0.0, 20_000).admitted
    assert lim.utilization(0.0) == 0.0
    assert lim.try_admit(1.0, 5_000).admitted
    assert lim.utilization(1.0) == 0.5
    lim.reset()
    assert lim.utilization(1.0) == 0.0
    assert "tpm=10000" in repr(lim)

"""`calls.signals` + `calls.bracket`: one parse of a response's headers, one builder of events."""

from __future__ import annotations

import httpx2
import pytest

from orchestrator.calls import bracket
from orchestrator.calls.signals import Signals, error_signals, read_signals
from orchestrator.core.errors import UpstreamThrottled

SPILLED = {
    "x-ms-spillover-from-deployment": "ptu",
    "x-ms-deployment-name": "payg",
    "azure-openai-deployment-utilization": "97.5%",
    "x-ratelimit-remaining-tokens": "1200",
    "x-ratelimit-limit-tokens": "30000",
}


def test_read_signals_is_case_insensitive_on_httpx_headers() -> None:
    s = read_signals(httpx2.Headers({"Retry-After-Ms": "250", "X-Ratelimit-Remaining-Tokens": "7"}))
    assert s.retry_after_s == 0.25
    assert s.remaining_tokens == 7
    assert s.utilisation is None and not s.spilled


@pytest.mark.parametrize(
    ("headers", "status", "expected"),
    [
        ({}, 200, {}),
        ({"azure-openai-deployment-utilization": "42.5%"}, 200, {"utilisation": 0.425}),
        ({"retry-after-ms": "1500"}, 429, {"retry_after_ms": 1500.0}),
        ({}, 429, {"retry_after_ms": 0.0}),  # a 429 without a wait still marks a 429
        ({"retry-after-ms": "1500"}, 503, {}),  # retry_after_ms marks a 429 only
        (
            SPILLED,
            200,
            {
                "utilisation": 0.975,
                "spilled": True,
                "remaining_tokens": 1200,
                "limit_tokens": 30000,
            },
        ),
        (
            {**SPILLED, "x-ms-spillover-error": "429"},
            200,
            {"utilisation": 0.975, "remaining_tokens": 1200, "limit_tokens": 30000},
        ),
        ({"x-ratelimit-limit-tokens": "0"}, 200, {}),
    ],
)
def test_complete_carries_what_the_response_said(
    headers: dict[str, str], status: int, expected: dict[str, object]
) -> None:
    event = bracket.complete(
        "r1", "ptu", tenant="t", now=10.0, status_code=status, signals=read_signals(headers)
    )
    signal_fields = ("utilisation", "retry_after_ms", "spilled", "remaining_tokens", "limit_tokens")
    dumped = event.model_dump()
    got = {
        k: dumped[k] for k in signal_fields if dumped.get(k) is not None and dumped[k] is not False
    }
    assert got == pytest.approx(expected)
    assert event.phase == "complete" and event.tenant == "t" and event.timestamp == 10.0


def test_complete_counts_usage_and_ages_the_header() -> None:
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 10},
    }
    event = bracket.complete(
        "r1", "ptu", tenant="t", now=12.0, usage=usage, max_tokens=64, status_code=200,
        signals=Signals(utilisation=0.5), observed_at=11.5,
    )  # fmt: skip
    assert (event.prompt_tokens, event.completion_tokens, event.cached_tokens) == (30, 5, 10)
    assert event.max_tokens == 64
    assert event.utilisation_age_s == pytest.approx(0.5)


def test_a_failed_call_without_response_refunds_with_no_signal() -> None:
    event = bracket.complete("r1", "ptu", tenant="t", now=1.0, status_code=408)
    assert (event.prompt_tokens, event.completion_tokens) == (0, 0)
    assert event.utilisation is None and event.retry_after_ms is None


def test_admit_and_observe() -> None:
    admit = bracket.admit("r1", "ptu", prompt_tokens=9, max_tokens=100, tenant="t", now=2.0)
    assert (admit.phase, admit.prompt_tokens, admit.max_tokens) == ("admit", 9, 100)
    assert bracket.observe("r1", "ptu", tenant="t", now=2.0, signals=Signals()) is None
    seen = bracket.observe("r1", "ptu", tenant="t", now=2.0, signals=Signals(utilisation=0.3))
    assert seen is not None and seen.phase == "observe" and seen.utilisation == 0.3


def test_error_signals_fall_back_on_the_errors_retry_after() -> None:
    bare = UpstreamThrottled("t", status_code=429, retry_after_s=2.0)
    assert error_signals(bare).retry_after_s == 2.0
    said = Signals(utilisation=1.0, retry_after_s=3.0)
    assert error_signals(UpstreamThrottled("t", status_code=429, signals=said)) is said

"""Per-deployment admission, reconciliation, counters, faults and PATCH validation."""

from __future__ import annotations

import random
from typing import Any

import pytest

from simulator.config import parse_deployment
from simulator.openai.deployments import Deployment


def provisioned(window_s: float = 10.0, seed: int = 0) -> Deployment:
    # gpt-4o 15 PTU: 37,500 TPM -> drain 625/s; 10 s window -> 100 % = 6,250
    spec = parse_deployment("d=gpt-4o:15")
    return Deployment(spec, window_s=window_s, tbt_ms=10, ttft_ms=50, rng=random.Random(seed))


def standard() -> Deployment:
    spec = parse_deployment("s=gpt-4o:10000:standard")
    return Deployment(spec, window_s=60, tbt_ms=10, ttft_ms=50, rng=random.Random(0))


def test_admit_charges_prompt_plus_weighted_max_tokens_and_reconciles() -> None:
    d = provisioned()
    decision = d.admit(0.0, prompt_tokens=250, output_tokens=500, priority="low")
    assert decision.status == 200 and decision.ticket is not None
    assert d.utilization(0.0) == pytest.approx((250 + 500 * 3) / 6_250)
    assert d.state(0.0)["in_flight_by_priority"] == {"low": 1}
    d.complete(0.0, decision.ticket, 250, 100)
    assert d.utilization(0.0) == pytest.approx((250 + 100 * 3) / 6_250)
    state = d.state(0.0)
    assert state["in_flight"] == 0
    assert state["peak_in_flight_by_priority"] == {"low": 1}
    assert (state["prompt_tokens"], state["completion_tokens"]) == (250, 100)
    assert state["by_priority"]["low"] == {"requests": 1, "throttled": 0, "completion_tokens": 100}


def test_throttled_at_full_with_retry_after() -> None:
    d = provisioned()
    assert d.admit(0.0, prompt_tokens=6_250, output_tokens=0, priority="high").status == 200
    refused = d.admit(0.0, prompt_tokens=10, output_tokens=10, priority="low")
    assert refused.status == 429 and refused.ticket is None
    assert refused.utilization == pytest.approx(1.0)
    assert refused.retry_after_s == pytest.approx(0.0)
    state = d.state(0.0)
    assert (state["requests"], state["throttled"]) == (2, 1)
    assert state["by_priority"]["low"]["throttled"] == 1
    assert d.admit(0.5, prompt_tokens=10, output_tokens=10).status == 200  # drained 312.5


def test_standard_reports_remaining() -> None:
    d = standard()  # 10,000 TPM, 10 requests per 10 s
    decision = d.admit(0.0, prompt_tokens=1_000, output_tokens=500)
    assert (decision.remaining_tokens, decision.remaining_requests) == (8_500, 9)
    refused = d.admit(1.0, prompt_tokens=9_000, output_tokens=0)
    assert refused.status == 429 and refused.retry_after_s == pytest.approx(59.0)
    assert d.state(1.0)["kind"] == "standard"


def test_fault_draws_are_seeded_and_refund() -> None:
    def statuses(seed: int) -> list[int]:
        d = provisioned(seed=seed)
        d.patch(0.0, {"error_rate": 0.3, "timeout_rate": 0.2})
        out = []
        for _ in range(200):
            decision = d.admit(0.0, prompt_tokens=1, output_tokens=1)
            out.append(decision.status)
            if decision.ticket is not None:
                d.complete(0.0, decision.ticket, 1, 1)
        return out

    first = statuses(1)
    assert first == statuses(1)
    assert first != statuses(2)
    assert 40 < first.count(500) < 80
    assert 15 < first.count(408) < 50
    d = provisioned()
    d.patch(0.0, {"error_rate": 1.0})
    decision = d.admit(0.0, prompt_tokens=1_000, output_tokens=1_000)
    assert decision.status == 500
    assert d.utilization(0.0) == 0.0  # a failed call is refunded
    assert d.state(0.0)["errors"] == 1 and d.state(0.0)["in_flight"] == 0


def test_spike_adds_to_ttft() -> None:
    d = provisioned()
    d.patch(0.0, {"spike_rate": 1.0, "spike_ms": 3_000, "ttft_ms": 0, "tbt_ms": 0})
    decision = d.admit(0.0, prompt_tokens=10, output_tokens=10)
    assert decision.ttft_s == pytest.approx(3.0)
    assert decision.tbt_ms == 0.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bogus": 1}, "unknown field"),
        ({"error_rate": 1.5}, "between 0 and 1"),
        ({"tbt_ms": -1}, "non-negative"),
        ({"tbt_ms": "fast"}, "non-negative"),
        ({"tpm": 1000}, "standard deployments only"),
        ({"ptus": 0}, "positive"),
        ({"background_share": 1.5}, "between 0 and 1"),
        ({"background_share": "lots"}, "non-negative"),
        ({"utilisation_model": "rate"}, "bucket, sliding"),
        ({"utilisation_header": 3}, "exact, noisy, absent, lagged, smoothed"),
        ({"header_lag_s": 601}, "header_lag_s must be between 0 and 600"),
        ({"header_lag_s": -1}, "non-negative"),
        ({"header_smoothing_s": "slow"}, "non-negative"),
    ],
)
def test_patch_validation(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        provisioned().patch(0.0, changes)


def test_patch_capacity_and_reset() -> None:
    d = provisioned()
    d.patch(0.0, {"ptus": 30})
    assert d.capacity_tpm == 75_000
    s = standard()
    s.patch(0.0, {"tpm": 20_000})
    assert s.capacity_tpm == 20_000
    for field, value in (("ptus", 15), ("background_share", 0.2), ("utilisation_model", "bucket")):
        with pytest.raises(ValueError, match=f"{field} applies to provisioned deployments only"):
            s.patch(0.0, {field: value})
    decision = d.admit(0.0, prompt_tokens=100, output_tokens=10, priority="high")
    assert decision.ticket is not None
    d.reset_peaks()
    assert d.state(0.0)["peak_in_flight_by_priority"] == {"high": 1}
    d.reset(0.0)
    state = d.state(0.0)
    assert state["utilization"] == 0.0 and state["requests"] == 0 and state["in_flight"] == 0
    assert "name=d kind=provisioned" in repr(d)


@pytest.mark.parametrize("model", ["bucket", "sliding"])
def test_a_capacity_step_applies_to_the_live_level(model: str) -> None:
    d = provisioned()  # 15 PTU: 100 % = 6,250, drain 625/s
    d.patch(0.0, {"utilisation_model": model})
    held = d.admit(0.0, prompt_tokens=250, output_tokens=1_000)  # 3,250 = 52 %, in flight
    assert held.ticket is not None and d.utilization(0.0) == pytest.approx(0.52)
    d.patch(0.0, {"ptus": 7.5})  # cut to half: the same tokens are twice the fraction
    state = d.state(0.0)
    assert (state["ptus"], state["capacity_tpm"]) == (7.5, 18_750)
    assert state["utilization"] == pytest.approx(1.04)
    refused = d.admit(0.0, prompt_tokens=10, output_tokens=0)
    assert refused.status == 429
    if model == "bucket":  # drains at the new, halved rate: 312.5/s until below 3,125
        assert refused.retry_after_s == pytest.approx(125 / 312.5)
    d.complete(0.0, held.ticket, 250, 200)  # the in-flight call reconciles at weight 3
    assert d.utilization(0.0) == pytest.approx((250 + 200 * 3) / 3_125)
    d.patch(0.0, {"ptus": 15})  # restored: the level is the same tokens again
    assert d.utilization(0.0) == pytest.approx((250 + 200 * 3) / 6_250)
    assert d.admit(0.0, prompt_tokens=10, output_tokens=0).status == 200


def test_a_quota_step_applies_to_the_live_standard_windows() -> None:
    s = standard()  # 10,000 TPM
    assert s.admit(0.0, prompt_tokens=4_000, output_tokens=1_000).status == 200
    s.patch(1.0, {"tpm": 5_000})
    assert s.utilization(1.0) == pytest.approx(1.0)  # this minute's 5,000 tokens fill it now
    assert s.admit(1.0, prompt_tokens=1, output_tokens=0).status == 429
    s.patch(2.0, {"tpm": 10_000})
    assert s.admit(2.0, prompt_tokens=1, output_tokens=0).status == 200

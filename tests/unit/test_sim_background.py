"""Bypassing background traffic and the per-deployment reality knobs, with explicit times."""

from __future__ import annotations

import random

import pytest

from simulator.config import parse_deployment
from simulator.openai.background import CALLS_PER_S, BackgroundSchedule, call_shape
from simulator.openai.deployments import Deployment

# gpt-4o-mini 15 PTU: 555,000 TPM -> 9,250/s; a 10 s window -> 100 % = 92,500
DRAIN = 9_250.0


def deployment(**kwargs: object) -> Deployment:
    spec = parse_deployment("d=gpt-4o-mini:15")
    return Deployment(
        spec,
        window_s=10.0,
        tbt_ms=0,
        ttft_ms=0,
        rng=random.Random(0),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("share", [0.05, 0.3, 0.9])
@pytest.mark.parametrize("weight", [3.0, 4.0, 8.0])
def test_call_shape_consumes_the_share(share: float, weight: float) -> None:
    call = call_shape(share, 555_000.0, weight)
    assert call.charge == call.prompt_tokens + call.completion_tokens * weight
    assert call.charge * CALLS_PER_S == pytest.approx(share * DRAIN, rel=0.01)
    assert call.completion_tokens > 0 and call.prompt_tokens > call.completion_tokens


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([0.0], [1]),
        ([0.0, 0.05, 0.1, 0.35], [1, 0, 1, 2]),  # one call every 0.1 s
        ([0.0, 5.0], [1, 11]),  # a stall catches up at most one second (4.0 .. 5.0)
    ],
)
def test_schedule(times: list[float], expected: list[int]) -> None:
    schedule = BackgroundSchedule(0.3, 0.0)
    assert [schedule.due(t) for t in times] == expected


def test_schedule_off_and_validation() -> None:
    schedule = BackgroundSchedule(0.0, 0.0)
    assert schedule.due(10.0) == 0
    schedule.set_share(10.0, 0.5)
    assert schedule.due(10.0) == 1  # starts now, no back-log from when it was off
    assert repr(schedule) == "<BackgroundSchedule share=0.5 next_at=10.100>"
    with pytest.raises(ValueError, match="between 0 and 1"):
        schedule.set_share(10.0, -0.1)


def test_background_consumes_its_share_and_is_counted_apart() -> None:
    d = deployment(background_share=0.3, utilisation_model="sliding")
    sent = [call for i in range(101) for call in d.tick(i * 0.1)]  # 0 .. 10 s
    assert len(sent) == 101 and {status for status, _ in sent} == {200}
    # sliding: the last 10 s of background charges over one window of capacity = the share
    assert d.utilization(10.0) == pytest.approx(0.3, rel=0.02)
    state = d.state(10.0)
    assert state["background"]["requests"] == 101 and state["background"]["throttled"] == 0
    assert state["background"]["share"] == 0.3
    assert state["background"]["prompt_tokens"] == 101 * sent[0][1].prompt_tokens
    assert state["requests"] == 0 and state["prompt_tokens"] == 0  # real callers untouched
    assert state["by_priority"] == {}


def test_background_is_refused_at_full_like_everyone() -> None:
    d = deployment(background_share=0.2)
    assert d.admit(0.0, prompt_tokens=92_500, output_tokens=0, priority="high").status == 200
    statuses = [status for status, _ in d.tick(0.0)]
    assert statuses == [429]
    bg = d.state(0.0)["background"]
    assert (bg["requests"], bg["throttled"], bg["prompt_tokens"]) == (1, 1, 0)
    assert d.state(0.0)["throttled"] == 0  # not mixed into the real callers' 429s


def test_patch_switches_model_header_and_share_at_runtime() -> None:
    d = deployment()
    assert d.admit(0.0, prompt_tokens=46_250, output_tokens=0).status == 200
    d.patch(1.0, {"utilisation_model": "sliding", "utilisation_header": "absent"})
    state = d.state(1.0)
    assert (state["utilisation_model"], state["utilisation_header"]) == ("sliding", "absent")
    assert state["utilization"] == pytest.approx(0.4)  # the level carries over: 0.5 - 1 s drain
    assert d.utilization(5.0) == pytest.approx(0.4)  # and now it no longer drains
    assert d.reported_utilization(5.0, 0.4) is None
    d.patch(5.0, {"background_share": 0.5})
    assert d.state(5.0)["background"]["share"] == 0.5
    d.reset(6.0)
    state = d.state(6.0)
    assert state["utilization"] == 0.0 and state["background"]["requests"] == 0
    assert state["utilisation_model"] == "sliding"  # reset empties, it does not reconfigure


def test_completion_reconciles_in_the_sliding_window_at_admission_time() -> None:
    d = deployment(utilisation_model="sliding")
    decision = d.admit(0.0, prompt_tokens=1_000, output_tokens=1_000)
    assert decision.ticket is not None
    d.complete(3.0, decision.ticket, 1_000, 250)  # used 750 fewer outputs than admitted
    assert d.utilization(3.0) == pytest.approx((1_000 + 250 * 3) / 92_500)
    assert d.utilization(10.0) == 0.0  # charge and correction leave together


def test_noisy_header_lags_the_truth() -> None:
    d = deployment(utilisation_header="noisy", noise_rng=random.Random(3))
    for i in range(11):
        d.tick(i * 0.1)  # empty for the first second
    assert d.admit(1.0, prompt_tokens=92_500 // 2, output_tokens=0).status == 200
    shown = d.reported_utilization(1.0, d.utilization(1.0))
    assert shown is not None and shown <= 0.05  # the value of 1 s earlier: ~0 ± 5 points
    exact = deployment()
    assert exact.reported_utilization(0.0, 0.42) == 0.42


def test_standard_deployments_have_no_reality_knobs() -> None:
    spec = parse_deployment("s=gpt-4o:10000:standard")
    s = Deployment(spec, window_s=60, tbt_ms=10, ttft_ms=50, rng=random.Random(0))
    assert s.tick(1.0) == []
    assert "background" not in s.state(1.0) and "utilisation_model" not in s.state(1.0)


def test_patch_window_moves_the_full_mark_and_keeps_the_level() -> None:
    d = deployment()
    assert d.admit(0.0, prompt_tokens=46_250, output_tokens=0).status == 200  # 50 % of 10 s
    d.patch(0.0, {"window_s": 5.0})
    assert d.utilization(0.0) == pytest.approx(1.0)  # the same level is a full 5 s bucket
    assert d.admit(0.0, prompt_tokens=1, output_tokens=0).status == 429
    assert d.state(0.0)["window_s"] == 5.0
    d.reset(1.0)
    assert d.state(1.0)["window_s"] == 5.0
    with pytest.raises(ValueError, match="window_s must be positive"):
        d.patch(1.0, {"window_s": 0})

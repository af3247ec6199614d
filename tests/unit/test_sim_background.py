"""Bypassing background traffic and the per-deployment reality knobs, with explicit times."""

from __future__ import annotations

import random

import pytest

from simulator.config import parse_deployment
from simulator.openai.background import (
    CALLS_PER_S,
    BackgroundSchedule,
    Profile,
    call_shape,
    parse_profile,
)
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
    assert repr(schedule) == "<BackgroundSchedule profile=constant:0.5 next_at=10.100>"
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


@pytest.mark.parametrize(
    ("text", "elapsed", "share"),
    [
        ("square:0,0.5,15", 0.0, 0.0),  # starts LOW
        ("square:0,0.5,15", 14.99, 0.0),
        ("square:0,0.5,15", 15.0, 0.5),  # HIGH for the next half period
        ("square:0,0.5,15", 29.9, 0.5),
        ("square:0,0.5,15", 30.0, 0.0),
        ("square:0,0.5,15", 45.5, 0.5),
        ("square:0.2,0.1,2", 3.0, 0.1),  # LOW is the first value, even when larger
        ("square:0.3,0.3,5", 7.0, 0.3),  # equal shares: constant
        ("constant:0.4", 1e6, 0.4),
        ("square:0,0.5,15", -1.0, 0.0),  # before it was set: LOW
    ],
)
def test_profile_share_over_time(text: str, elapsed: float, share: float) -> None:
    assert parse_profile(text).share_at(elapsed) == share


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("square:0,0.5,15", "square:0,0.5,15"),
        (" square:0.25,0.75,2.5 ", "square:0.25,0.75,2.5"),
        ("constant:0.3", "constant:0.3"),
        ("square:0.3,0.3,0", "constant:0.3"),
    ],
)
def test_profile_text_round_trips(text: str, shown: str) -> None:
    assert str(parse_profile(text)) == shown and parse_profile(shown) == parse_profile(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("square:0,0.5", "expected constant:S or square:LOW,HIGH,HALF_PERIOD_S"),
        ("sine:0,0.5,15", "expected constant"),
        ("square:a,b,c", "expected constant"),
        ("constant", "expected constant"),
        ("square:0,1.5,15", "between 0 and 1"),
        ("square:0,0.5,0", "positive half period"),
        ("square:0,0.5,-3", "positive half period"),
        ("constant:-0.1", "between 0 and 1"),
    ],
)
def test_bad_profiles(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_profile(text)


def test_schedule_follows_a_square_wave_from_when_it_was_set() -> None:
    schedule = BackgroundSchedule(0.3, 0.0)
    schedule.set_profile(100.0, Profile(0.0, 0.5, 2.0))
    due = {t: schedule.due(t) for t in (100.0, 101.9, 102.0, 102.05, 102.1, 102.35, 104.0)}
    # no back-log from the LOW half: the stream starts when the HIGH half does
    assert due == {100.0: 0, 101.9: 0, 102.0: 1, 102.05: 0, 102.1: 1, 102.35: 2, 104.0: 0}
    assert (schedule.share_at(103.0), schedule.share_at(104.0), schedule.share) == (0.5, 0.0, 0.0)
    assert repr(schedule).startswith("<BackgroundSchedule profile=square:0,0.5,2 ")


def test_a_square_wave_deployment_alternates_its_load() -> None:
    d = deployment(background_share="square:0.1,0.6,10", utilisation_model="sliding")
    assert d.state(0.0)["background"]["profile"] == "square:0.1,0.6,10"
    levels = {}
    for i in range(401):  # 0 .. 40 s
        d.tick(i * 0.1)
        if i % 50 == 0:
            levels[i // 10] = round(d.utilization(i * 0.1), 2)
    # sliding, 10 s window: at the end of each half period the level is that half's share
    assert levels[10] == pytest.approx(0.1, abs=0.02) and levels[20] == pytest.approx(0.6, abs=0.02)
    assert levels[30] == pytest.approx(0.1, abs=0.02) and levels[40] == pytest.approx(0.6, abs=0.02)
    assert levels[15] == pytest.approx(0.35, abs=0.03)  # half of each
    assert d.state(25.0)["background"]["share"] == 0.1
    d.patch(40.0, {"background_profile": "constant:0.2"})
    assert d.state(41.0)["background"]["share"] == 0.2
    d.patch(41.0, {"background_share": 0.0})
    assert d.state(41.0)["background"]["profile"] == "constant:0"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"background_profile": "square:0,2,5"}, "between 0 and 1"),
        ({"background_profile": 0.3}, "must be a string"),
        ({"background_profile": "constant:0.1", "background_share": 0.1}, "not both"),
    ],
)
def test_patch_profile_validation(changes: dict[str, object], message: str) -> None:
    d = deployment()
    with pytest.raises(ValueError, match=message):
        d.patch(0.0, changes)
    assert d.state(0.0)["background"]["profile"] == "constant:0"  # nothing changed


def test_background_load_is_of_the_capacity_when_the_share_was_set() -> None:
    d = deployment(background_share=0.3, utilisation_model="sliding")
    d.patch(0.0, {"ptus": 7.5})  # half the capacity: the same calls are twice the share
    for i in range(101):
        d.tick(i * 0.1)
    assert d.utilization(10.0) == pytest.approx(0.6, rel=0.03)
    d.patch(10.0, {"ptus": 7.5, "background_share": 0.3})  # set with the new capacity
    for i in range(101, 202):
        d.tick(i * 0.1)
    assert d.utilization(20.1) == pytest.approx(0.3, rel=0.03)

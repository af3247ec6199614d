"""The estimate's filter (`filter.step` / `filter.read`) from tables, on an injected clock."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from orchestrator.utilisation.estimate.filter import Signal, read, step
from orchestrator.utilisation.estimate.hypotheses import TRUST_N, header_delay_s
from orchestrator.utilisation.estimate.state import (
    HYPOTHESES,
    LAGS_S,
    SMOOTHING_S,
    FilterParams,
    FilterState,
)

W = 10.0
P = FilterParams()
T0 = 1_000.0


@dataclass
class Truth:
    """A reference bucket of our charges, sampled finely, and what a header says of it."""

    level: float = 0.0
    ema: float = 0.0
    samples: list[tuple[float, float]] | None = None
    charges: list[tuple[float, float]] | None = None

    def advance(self, t0: float, t1: float, smoothing: float) -> None:
        steps = max(1, int((t1 - t0) / 0.01))
        dt = (t1 - t0) / steps
        for i in range(steps):
            self.level = max(0.0, self.level - dt / W)
            if smoothing:
                self.ema += (1 - math.exp(-dt / smoothing)) * (self.level - self.ema)
            assert self.samples is not None
            self.samples.append((t0 + (i + 1) * dt, self.level))

    def at(self, t: float) -> float:
        assert self.samples is not None
        if self.samples and t >= self.samples[-1][0]:
            return self.level  # now: with the charge just made
        before = [v for (s, v) in self.samples if s <= t]
        return before[-1] if before else 0.0

    def window(self, t: float) -> float:
        """Our charges over the trailing window (a sliding window's level)."""
        assert self.charges is not None
        return sum(c for (s, c) in self.charges if t - W < s <= t)


def drive(
    header: Callable[[Truth, float], float],
    *,
    seconds: float = 60.0,
    smoothing: float = 0.0,
    seed: int = 3,
) -> tuple[FilterState, Truth, float]:
    """Charges every 0.25 s (a level wandering 0..0.8), a header every 0.5 s."""
    rng = random.Random(seed)
    truth = Truth(samples=[], charges=[])
    st: FilterState | None = None
    t = T0
    n = int(seconds / 0.25)
    for i in range(n):
        nxt = t + 0.25
        truth.advance(t, nxt, smoothing)
        t = nxt
        target = 0.4 + 0.35 * math.sin(i / 12.0)
        delta = max(0.0, target - truth.level) * rng.uniform(0.3, 1.0) + rng.uniform(0, 0.01)
        truth.level += delta
        assert truth.charges is not None
        truth.charges.append((t, delta))
        sig = Signal(delta=delta)
        if i % 2 == 1:
            sig = Signal(delta=delta, utilisation=max(0.0, header(truth, t)))
        st = step(st, sig, t, W, P)
    assert st is not None
    return st, truth, t


def above(value: float, truth: float, low: float = 0.02) -> bool:
    """The reading errs high by its margin (z x the filter's uncertainty), never much low."""
    return truth - low <= value <= truth + 0.08


LAG_CASES = {f"lag {d:g}s": d for d in LAGS_S}


@pytest.mark.parametrize("name", list(LAG_CASES))
def test_a_lagged_header_is_recognised_and_read_as_now(name: str) -> None:
    lag = LAG_CASES[name]
    unseen = 0.1
    st, truth, now = drive(lambda tr, t: tr.at(t - lag) + unseen)
    estimate = read(st, now, W, P)
    assert estimate.hypothesis == name
    assert estimate.trusted
    # the relation learnt on the past, applied to the level now (not the lagged report)
    assert above(estimate.value, truth.level + unseen)


SMOOTHING_CASES = {f"avg {s:g}s": s for s in SMOOTHING_S}


@pytest.mark.parametrize("name", list(SMOOTHING_CASES))
def test_a_smoothed_header_is_recognised(name: str) -> None:
    tau = SMOOTHING_CASES[name]
    st, truth, now = drive(lambda tr, t: tr.ema, smoothing=tau)
    estimate = read(st, now, W, P)
    assert estimate.hypothesis == name
    assert above(estimate.value, truth.level)


WINDOW_CASES = {f"window lag {d:g}s": d for d in LAGS_S}


@pytest.mark.parametrize("name", list(WINDOW_CASES))
def test_a_sliding_window_header_is_recognised(name: str) -> None:
    lag = WINDOW_CASES[name]
    st, truth, now = drive(lambda tr, t: tr.window(t - lag) + 0.05)
    estimate = read(st, now, W, P)
    assert estimate.hypothesis == name
    # window sums spread each charge over its slot (window / 20): a little less exact
    assert above(estimate.value, truth.window(now) + 0.05, low=0.05)


def test_a_scaled_bucket_is_learnt() -> None:
    """A bucket half the assumed size reads twice our level."""
    st, truth, now = drive(lambda tr, t: 2 * tr.at(t))
    estimate = read(st, now, W, P)
    assert estimate.hypothesis == "lag 0s"
    assert above(estimate.value, 2 * truth.level)


def test_an_untrusted_header_only_raises() -> None:
    st = step(None, Signal(delta=0.6), T0, W, P)
    st = step(st, Signal(utilisation=0.1), T0 + 0.5, W, P)
    low = read(st, T0 + 0.5, W, P)
    assert not low.trusted
    assert low.value == pytest.approx(st.m)  # a report below our own charges: ignored
    st = step(st, Signal(utilisation=0.9), T0 + 1.0, W, P)
    assert read(st, T0 + 1.0, W, P).value == pytest.approx(0.9)  # above: raises


def test_a_trusted_header_may_lower_the_reading_but_not_below_the_floor() -> None:
    # a bucket twice the size assumed: the header says half our level, and is right
    st, truth, now = drive(lambda tr, t: 0.5 * tr.at(t))
    estimate = read(st, now, W, P)
    assert estimate.trusted
    assert estimate.value < truth.level
    assert estimate.value >= P.scale_floor * truth.level - 1e-9


def test_a_silent_header_is_no_longer_trusted() -> None:
    st, _, now = drive(lambda tr, t: 0.5 * tr.at(t))
    later = now + 31.0
    estimate = read(st, later, W, P)
    assert not estimate.trusted
    assert estimate.value >= read(st, later, W, P).model


def test_the_first_reports_count_only_once_enough_arrive() -> None:
    st = step(None, Signal(delta=0.2), T0, W, P)
    for i in range(TRUST_N - 1):
        st = step(st, Signal(utilisation=0.2), T0 + 0.1 * (i + 1), W, P)
    assert not read(st, st.t, W, P).trusted


def test_a_429_holds_at_most_hold_s_and_teaches_unseen_inflow() -> None:
    st = step(None, Signal(delta=0.3), T0, W, P)
    st = step(st, Signal(saturated=True, retry_after_s=50.0), T0 + 1, W, P)
    held = read(st, T0 + 2, W, P)
    assert held.value >= 1.0 and held.held_s == pytest.approx(P.hold_s - 1)
    assert held.unseen > 0
    after = read(st, T0 + 1 + P.hold_s + 0.1, W, P)
    assert after.held_s == 0
    assert after.value == pytest.approx(after.headerless)
    # the inflow keeps the headerless bucket fuller than our own charges alone
    assert after.headerless > after.model


def test_the_unseen_inflow_is_kept_for_minutes() -> None:
    st = step(None, Signal(delta=0.5), T0, W, P)
    st = step(st, Signal(saturated=True), T0 + 1, W, P)
    learnt = st.s
    assert read(st, T0 + 61, W, P).unseen == pytest.approx(
        learnt * math.exp(-60 / P.unseen_decay_s)
    )


def test_saturations_within_one_hold_are_one_overflow() -> None:
    st = step(None, Signal(delta=0.5), T0, W, P)
    st = step(st, Signal(saturated=True, retry_after_s=2.0), T0 + 1, W, P)
    learnt = st.s
    st = step(st, Signal(saturated=True, retry_after_s=2.0), T0 + 1.5, W, P)
    assert st.s == pytest.approx(learnt, rel=1e-3)  # only its slow fading


def test_the_level_missed_between_two_saturations_is_learnt_as_inflow() -> None:
    st = step(None, Signal(delta=0.5), T0, W, P)
    st = step(st, Signal(saturated=True, retry_after_s=1.0), T0 + 1, W, P)
    learnt = st.s
    # full again a window later: the deployment stayed full while `mu` drained
    before = read(st, T0 + 1 + W, W, P).headerless
    st = step(st, Signal(saturated=True, retry_after_s=1.0), T0 + 1 + W, W, P)
    assert st.s == pytest.approx(min(0.95, learnt + (1.0 - before) * W / W), rel=1e-3)
    assert st.s > learnt


def test_a_spill_is_a_saturation_and_so_is_a_429_without_retry_after() -> None:
    st = step(None, Signal(delta=0.2), T0, W, P)
    st = step(st, Signal(saturated=True), T0 + 0.5, W, P)
    assert read(st, T0 + 0.5, W, P).held_s == pytest.approx(P.hold_s)


def test_a_call_through_at_a_level_called_full_lowers_the_inflow() -> None:
    st = step(None, Signal(delta=0.5), T0, W, P)
    st = step(st, Signal(saturated=True), T0 + 1, W, P)
    st = step(st, Signal(delta=0.5), T0 + 1.1, W, P)  # our bucket-with-inflow: over 100 %
    before = st.s
    st = step(st, Signal(went_through=True), T0 + 1.2, W, P)
    assert st.s < before and st.mu == pytest.approx(1.0)


def test_remaining_tokens_are_read_with_our_charges_since() -> None:
    st = step(None, Signal(used=0.5), T0, W, P)
    st = step(st, Signal(delta=0.3), T0 + 1, W, P)
    # 0.3 of a 10 s window is 0.05 of a minute's limit
    assert read(st, T0 + 1, W, P).value == pytest.approx(0.55)
    assert read(st, T0 + 1 + P.max_age_s, W, P).value == pytest.approx(
        max(0.0, 0.3 - (P.max_age_s) / W)
    )


MINUTE = 100


@pytest.mark.parametrize(
    ("monitor", "expected"),
    [(0.2, 0.0), (0.5, (0.5 - 0.3) * W / 60.0)],
    ids=["emptier than our peak: nothing", "fuller: the inflow grows by the difference"],
)
def test_the_monitor_minute_teaches_the_inflow(monitor: float, expected: float) -> None:
    st = step(None, Signal(delta=0.3), MINUTE * 60.0 + 1, W, P)
    st = step(st, Signal(monitor=monitor, monitor_minute=MINUTE), MINUTE * 60.0 + 70, W, P)
    assert st.s == pytest.approx(expected * math.exp(0), abs=1e-3)
    again = step(st, Signal(monitor=0.9, monitor_minute=MINUTE), st.t, W, P)
    assert again.s == pytest.approx(st.s)  # the same minute is folded once


def test_the_monitor_minute_gives_back_a_level_missed_near_full() -> None:
    # the throttle holds our bucket-with-inflow near the top: its level does not drain
    t = MINUTE * 60.0
    st = step(None, Signal(delta=0.85), t + 1, W, P)
    for i in range(2, 95):  # our charges keep it there, as a throttle at the upper would
        st = step(st, Signal(delta=(1.0 - st.s) / W), t + i, W, P)
    before = read(st, t + 95, W, P).headerless
    folded = step(st, Signal(monitor=0.97, monitor_minute=MINUTE), t + 95, W, P)
    missed = 0.97 - st.peaks[str(MINUTE)]
    assert missed > 0.05
    assert folded.mu == pytest.approx(before + missed, abs=1e-6)


def test_a_saturation_since_the_minute_leaves_the_level_alone() -> None:
    t = MINUTE * 60.0
    st = step(None, Signal(delta=0.5), t + 1, W, P)
    st = step(st, Signal(saturated=True, retry_after_s=0.1), t + 65, W, P)
    st = step(st, Signal(), t + 80, W, P)
    before, inflow = st.mu, st.s
    folded = step(st, Signal(monitor=0.9, monitor_minute=MINUTE), t + 80, W, P)
    assert folded.mu == pytest.approx(before)
    # the inflow still learns from the minute (its peak was our 0.5)
    assert folded.s == pytest.approx(min(0.95, inflow + 0.4 * W / 60.0))


def test_the_inflow_does_not_fade_while_the_monitor_minute_is_fresh() -> None:
    t = MINUTE * 60.0
    st = step(None, Signal(delta=0.3), t + 1, W, P)
    st = step(st, Signal(monitor=0.6, monitor_minute=MINUTE), t + 70, W, P)
    learnt = st.s
    assert learnt > 0
    later = step(st, Signal(), t + 70 + 600, W, P)
    assert later.s == pytest.approx(learnt)
    # the Monitor fell silent: the inflow fades again
    stale = step(st, Signal(), t + 70 + 3 * 3600, W, P)
    assert stale.s < learnt * math.exp(-(3 * 3600 - 1200 - 70) / P.unseen_decay_s) * 1.001


def test_old_observations_are_ignored() -> None:
    st = step(None, Signal(delta=0.2), T0, W, P)
    st = step(st, Signal(utilisation=0.9, age_s=P.max_age_s + 1), T0, W, P)
    assert st.obs is None


def test_the_state_survives_json() -> None:
    st, _, now = drive(lambda tr, t: tr.at(t - 2))
    again = FilterState.from_json(st.to_json())
    assert read(again, now + 1, W, P) == read(st, now + 1, W, P)


def test_the_state_survives_its_redis_form() -> None:
    st, _, now = drive(lambda tr, t: tr.window(t - 3))
    again = FilterState.loads(st.dumps())
    assert again.to_json() == st.to_json()
    assert read(again, now + 1, W, P) == read(st, now + 1, W, P)


def test_reading_changes_nothing() -> None:
    st, _, now = drive(lambda tr, t: tr.at(t))
    before = st.to_json()
    read(st, now + 5, W, P)
    assert st.to_json() == before


@pytest.mark.parametrize(
    ("name", "delay"),
    [("lag 3s", 3.0), ("avg 10s", 10.0), ("window lag 5s", 5.0), ("bucket", None)],
)
def test_header_delay_s(name: str, delay: float | None) -> None:
    assert header_delay_s(name) == delay


def test_every_hypothesis_has_a_delay() -> None:
    assert all(header_delay_s(h) is not None for h in HYPOTHESES)


@pytest.mark.parametrize(
    "bad",
    [{"drift": 0}, {"z": -1}, {"trust_rmse": 0}, {"scale_floor": 0}, {"scale_floor": 1.5}],
)
def test_params_are_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FilterParams(**bad)  # type: ignore[arg-type]


def test_a_window_meaning_looks_ahead_for_the_traffic_we_do_not_control() -> None:
    st, _, now = drive(lambda tr, t: tr.window(t))
    estimate = read(st, now, W, P)
    assert estimate.hypothesis == "window lag 0s" and estimate.trusted
    assert estimate.ahead is not None and estimate.ahead >= estimate.value
    # the same charges as the throttle's own: no growth expected of them
    controlled = FilterState.from_json(st.to_json())
    controlled.free = [0.0] * len(controlled.free)
    own = read(controlled, now, W, P)
    assert own.ahead is not None and own.ahead < estimate.ahead


def test_a_bucket_meaning_does_not_look_ahead() -> None:
    st, _, now = drive(lambda tr, t: tr.at(t))
    assert read(st, now, W, P).ahead is None


def test_a_silent_header_leaves_the_headerless_estimate() -> None:
    st = step(None, Signal(delta=0.2), T0, W, P)
    st = step(st, Signal(utilisation=0.9), T0, W, P)
    assert read(st, T0 + 1, W, P).value == pytest.approx(0.9)
    later = read(st, T0 + 31, W, P)
    assert later.value == pytest.approx(later.headerless) and later.header is not None


def test_before_trust_a_bucket_rules_a_window_out_within_seconds() -> None:
    st, _, now = drive(lambda tr, t: tr.at(t), seconds=6.0)
    estimate = read(st, now, W, P)
    assert not estimate.trusted
    assert estimate.ahead is None  # no room kept for a window that the reports rule out


def test_before_trust_a_window_stays_in_the_running() -> None:
    st, _, now = drive(lambda tr, t: tr.window(t), seconds=6.0)
    estimate = read(st, now, W, P)
    assert not estimate.trusted
    assert estimate.ahead is not None and estimate.ahead > estimate.value


@pytest.mark.parametrize("lag", [0.0, 3.0, 5.0])
def test_no_meaning_is_fitted_with_a_negative_load(lag: float) -> None:
    # a lagged bucket read as a window needs other applications' load below zero to follow
    st, _, _ = drive(lambda tr, t: tr.at(t - lag))
    assert all(h.c >= 0.0 for h in st.hyps)


def test_an_untrusted_relation_raises_with_our_charges_since_the_last_report() -> None:
    # a bucket half the size assumed, 6 s of reports (not yet trusted), then a charge of ours
    st, _, now = drive(lambda tr, t: 2 * tr.at(t), seconds=6.0)
    reported = read(st, now, W, P)
    assert not reported.trusted
    st = step(st, Signal(delta=0.2), now + 0.1, W, P)
    after = read(st, now + 0.1, W, P)
    # the relation (k > 1 already) sees the charge the newest report cannot: the reading
    # rises by more than the charge itself
    assert after.value > reported.value + 0.2

"""The calibration filter (record.lua + read.lua) from tables, on an injected clock."""

from __future__ import annotations

import math
from typing import Any

import fakeredis
import pytest

from orchestrator.core.schemas import TokenEvent
from orchestrator.utilisation.estimate.calibration import (
    CalibrationParams,
    header_utilisation,
    params_for,
    parse_utilisation,
)
from orchestrator.utilisation.estimate.store import EstimateStore
from tests.support.clock import FakeClock
from tests.unit.test_util_estimate import DEPLOYMENT, START

PARAMS = CalibrationParams(
    tau_up=0.5,
    tau_down=2.0,
    negative_decay_s=2.0,
    positive_decay_s=30.0,
    max_observation_age_s=5,
    trend_s=0,  # the tables check the bias alone; the trend has its own tests
)
# a steady ramp's errors stay within the noise band: the trend's own tests take it away
TREND = CalibrationParams(trend_s=4.0, max_trend=0.2, lookahead_s=0, noise_band=0)


def store(redis: Any, clock: FakeClock, params: CalibrationParams | None = PARAMS) -> EstimateStore:
    return EstimateStore(
        redis,
        [DEPLOYMENT],
        window_s=10.0,
        max_age_s=5.0,
        clock=clock,
        time_source="clock",
        calibration=params,
    )


_ids = iter(range(10**9))


def obs(
    value: float | None = None, *, age: float = 0.0, retry_ms: float | None = None
) -> TokenEvent:
    """A zero-token `complete` carrying the deployment's signals (its own request id)."""
    return TokenEvent(
        request_id=f"r{next(_ids)}",
        deployment="d",
        phase="complete",
        timestamp=0.0,
        prompt_tokens=0,
        utilisation=value,
        utilisation_age_s=age,
        retry_after_ms=retry_ms,
    )


def charge(tokens: int) -> TokenEvent:
    return TokenEvent(
        request_id=f"r{next(_ids)}", deployment="d", phase="admit", timestamp=0.0,
        prompt_tokens=tokens,
    )  # fmt: skip


def _after_429_then_header() -> tuple[float, float]:
    c = 1.0 * math.exp(-1 / PARAMS.positive_decay_s)
    c += DOWN * (0.3 - c)
    return c, c


UP = 1 - math.exp(-1 / PARAMS.tau_up)  # gain of an observation 1 s after the previous one
DOWN = 1 - math.exp(-1 / PARAMS.tau_down)

# (seconds to advance, event) ... -> (expected reading, expected correction) at the end
CASES: dict[str, tuple[list[tuple[float, TokenEvent]], float, float]] = {
    "no signal: the model alone": ([(0, charge(300))], 0.3, 0.0),
    "the first observation is taken whole": ([(0, charge(300)), (0, obs(0.5))], 0.5, 0.2),
    "fuller than the model: fast gain": (
        [(0, obs(0.0)), (1, obs(0.4))],
        0.4 * UP,
        0.4 * UP,
    ),
    "emptier than the model: slow gain": (
        [(0, charge(500)), (0, obs(0.5)), (1, charge(100)), (0, obs(0.2))],
        # model 0.5 - 0.1 drained + 0.1 = 0.5; the error -0.3 is taken at the slow gain
        0.5 - 0.3 * DOWN,
        -0.3 * DOWN,
    ),
    "negative corrections fade fast without backing": (
        [(0, charge(500)), (0, obs(0.3)), (4, charge(0))],
        0.1 + (-0.2) * math.exp(-4 / PARAMS.negative_decay_s),
        -0.2 * math.exp(-4 / PARAMS.negative_decay_s),
    ),
    "positive corrections fade slowly": (
        [(0, obs(0.4)), (6, charge(0))],
        0.4 * math.exp(-6 / PARAMS.positive_decay_s),
        0.4 * math.exp(-6 / PARAMS.positive_decay_s),
    ),
    "observations too old are ignored": ([(0, charge(200)), (0, obs(0.9, age=6))], 0.2, 0.0),
    "an aged observation counts from when it was true": (
        [(0, obs(0.0)), (2, obs(0.4, age=1))],
        0.4 * UP,
        0.4 * UP,
    ),
    "a 429 pins the reading at 100 % until retry-after": (
        [(0, charge(200)), (0, obs(retry_ms=500))],
        1.0,
        0.8,
    ),
    "after retry-after, the 429's lesson remains as a slow bias": (
        [(0, charge(200)), (0, obs(retry_ms=500)), (1, charge(0))],
        0.1 + 0.8 * math.exp(-1 / PARAMS.positive_decay_s),
        0.8 * math.exp(-1 / PARAMS.positive_decay_s),
    ),
    "a header after a 429 corrects its lesson, at the slow gain": (
        [(0, obs(0.0)), (0, obs(retry_ms=0)), (1, obs(0.3))],
        *_after_429_then_header(),
    ),
    "the first header ever is taken whole, even after a 429": (
        [(0, obs(retry_ms=0)), (1, obs(0.3))],
        0.3,
        0.3,
    ),
    "reading never below zero": ([(0, charge(100)), (0, obs(0.0)), (0, charge(0))], 0.0, -0.1),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_filter(fake_redis: fakeredis.FakeAsyncRedis, name: str) -> None:
    events, value, correction = CASES[name]
    clock = FakeClock(START)
    s = store(fake_redis, clock)
    await s.heartbeat()
    for advance, event in events:
        clock.now += advance
        await s.record(event)
    await s.heartbeat()
    reading = await s.read("d")
    assert reading.calibration is not None
    assert reading.value == pytest.approx(value, abs=1e-9)
    assert reading.calibration.correction == pytest.approx(correction, abs=1e-9)


async def test_off_is_the_open_loop_model(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    clock = FakeClock(START)
    s = store(fake_redis, clock, params=None)
    await s.heartbeat()
    for event in (charge(300), obs(0.9), obs(retry_ms=2000)):
        await s.record(event)
    reading = await s.read("d")
    assert reading.value == pytest.approx(0.3)
    assert reading.calibration is None
    fields = await fake_redis.hkeys("ptu:est:d")
    assert not {b"c", b"floor", b"obs"} & set(fields)


async def test_reading_shows_model_observation_and_ages(
    fake_redis: fakeredis.FakeAsyncRedis,
) -> None:
    clock = FakeClock(START)
    s = store(fake_redis, clock)
    await s.heartbeat()
    await s.record(charge(200))
    await s.record(obs(0.5, age=0.5))
    clock.now += 1.0
    await s.heartbeat()
    cal = (await s.read("d")).calibration
    assert cal is not None
    assert cal.model == pytest.approx(0.1)
    assert cal.observed == pytest.approx(0.5)
    assert cal.observed_age_s == pytest.approx(1.5)
    assert cal.correction_age_s == pytest.approx(1.5)
    assert cal.unseen == pytest.approx(cal.correction)
    assert cal.throttled_s == 0.0


async def test_throttled_time_counts_down(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    clock = FakeClock(START)
    s = store(fake_redis, clock)
    await s.heartbeat()
    await s.record(obs(retry_ms=3000))
    clock.now += 1.0
    await s.record(obs(retry_ms=500))  # a shorter retry-after never shortens the pause
    await s.heartbeat()
    cal = (await s.read("d")).calibration
    assert cal is not None and cal.throttled_s == pytest.approx(2.0)


async def test_observe_events_charge_nothing(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    clock = FakeClock(START)
    s = store(fake_redis, clock)
    await s.heartbeat()
    await s.record(charge(400))
    event = obs(0.4).model_copy(update={"phase": "observe"})
    await s.record(event)
    await s.record(event)  # redelivered: applied once
    cal = (await s.read("d")).calibration
    assert cal is not None
    assert (cal.model, cal.correction) == (pytest.approx(0.4), pytest.approx(0.0))


def test_noise_beyond_the_band_leans_safe() -> None:
    """Property of the gains: symmetric noise wider than the noise band leaves the correction
    slightly above the truth (within the band both directions take the slow gain)."""
    # equilibrium x of E[update] = 0 for uniform noise of +-5 points: (5-x)^2 g_up = (5+x)^2 g_down
    ratio = math.sqrt(PARAMS.tau_down / PARAMS.tau_up)
    x = 5 * (ratio - 1) / (ratio + 1)
    assert 0 < x < 3


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("42.5%", 0.425), ("0%", 0.0), (" 101.2% ", 1.012), ("x", None), (None, None), ("-3%", None)],
)
def test_parse_utilisation(raw: str | None, expected: float | None) -> None:
    assert parse_utilisation(raw) == (None if expected is None else pytest.approx(expected))


def test_header_and_modes() -> None:
    assert header_utilisation({"azure-openai-deployment-utilization": "12%"}) == pytest.approx(0.12)
    assert header_utilisation({}) is None
    assert params_for("off") is None
    assert params_for("auto") is not None
    with pytest.raises(ValueError):
        CalibrationParams(tau_up=0)


async def _ramp(redis: Any, params: CalibrationParams, clock: FakeClock) -> EstimateStore:
    """The deployment fills 5 points a second more than the model sees, observed at 10 Hz."""
    s = store(redis, clock, params)
    await s.heartbeat()
    for i in range(100):
        clock.now += 0.1
        await s.record(obs(0.05 * (i + 1) * 0.1))
    await s.heartbeat()
    return s


async def test_the_trend_follows_a_steadily_growing_error() -> None:
    lags = {}
    for name, params in (("bias", PARAMS), ("trend", TREND)):
        redis = fakeredis.FakeAsyncRedis()
        clock = FakeClock(START)
        s = await _ramp(redis, params, clock)
        lags[name] = 0.5 - (await s.read("d")).value
        clock.now += 0.5  # between observations the trend keeps extrapolating
        await s.heartbeat()
        ahead = (await s.read("d")).value - (0.5 - lags[name])
        if name == "trend":  # 0.5 s x 5 points/s
            assert ahead == pytest.approx(0.025, abs=0.01)
        else:
            assert ahead <= 0  # the bias alone only decays
        await redis.aclose()
    assert lags["trend"] < 0.005 < lags["bias"]


async def test_the_trend_fades_without_observations(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    clock = FakeClock(START)
    s = await _ramp(fake_redis, TREND, clock)
    before = (await s.read("d")).value
    clock.now += 60
    await s.heartbeat()
    after = (await s.read("d")).value
    # at most one second of trend more than before, then the positive decay takes it down
    assert after <= before


async def test_a_rising_trend_is_read_ahead() -> None:
    values = []
    for lookahead in (0.0, 1.0):
        redis = fakeredis.FakeAsyncRedis()
        s = await _ramp(
            redis,
            CalibrationParams(trend_s=4.0, lookahead_s=lookahead, noise_band=0),
            FakeClock(START),
        )
        values.append((await s.read("d")).value)
        await redis.aclose()
    assert values[1] - values[0] == pytest.approx(0.05, abs=0.01)  # 1 s x 5 points/s

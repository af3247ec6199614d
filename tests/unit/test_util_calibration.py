"""The calibrated estimate through its store: signals in token events, one shared state."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from orchestrator.calls.signals import parse_utilisation, read_signals
from orchestrator.core import keys
from orchestrator.core.schemas import TokenEvent
from orchestrator.utilisation.estimate.calibration import (
    DEFAULT_PARAMS,
    header_utilisation,
    params_for,
)
from orchestrator.utilisation.estimate.state import FilterParams, FilterState
from orchestrator.utilisation.estimate.store import EstimateStore
from tests.support.clock import FakeClock
from tests.unit.test_util_estimate import DEPLOYMENT, START

# the deployment's 100 % is 1,000 tokens (see test_util_estimate.DEPLOYMENT)


def store(
    redis: Any, clock: FakeClock, params: FilterParams | None = DEFAULT_PARAMS
) -> EstimateStore:
    return EstimateStore(
        redis, [DEPLOYMENT], window_s=10.0, max_age_s=5.0, clock=clock, time_source="clock",
        calibration=params,
    )  # fmt: skip


_ids = iter(range(10**9))


def obs(
    value: float | None = None,
    *,
    age: float = 0.0,
    retry_ms: float | None = None,
    **signals: Any,
) -> TokenEvent:
    """A zero-token `complete` carrying the deployment's signals (its own request id)."""
    return TokenEvent(
        request_id=f"r{next(_ids)}", deployment="d", phase="complete", timestamp=0.0,
        prompt_tokens=0, utilisation=value, utilisation_age_s=age, retry_after_ms=retry_ms,
        **signals,
    )  # fmt: skip


def charge(tokens: int) -> TokenEvent:
    return TokenEvent(
        request_id=f"r{next(_ids)}", deployment="d", phase="admit", timestamp=0.0,
        prompt_tokens=tokens,
    )  # fmt: skip


async def reading_after(redis: Any, clock: FakeClock, *events: TokenEvent) -> Any:
    s = store(redis, clock)
    await s.heartbeat()
    for event in events:
        await s.record(event)
    return await s.read("d")


async def test_off_is_the_open_loop_model(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    clock = FakeClock(START)
    s = store(fake_redis, clock, params=None)
    await s.heartbeat()
    for event in (charge(300), obs(0.9), obs(retry_ms=2000), obs(remaining_tokens=0)):
        await s.record(event)
    reading = await s.read("d")
    assert reading.value == pytest.approx(0.3)
    assert reading.calibration is None
    state = FilterState.loads((await fake_redis.hget(keys.estimate("d"), "st")).decode())
    assert state.obs is None and state.hold_until == 0 and state.used is None


async def test_a_header_above_the_model_raises_the_reading(
    fake_redis: fakeredis.FakeAsyncRedis,
) -> None:
    reading = await reading_after(fake_redis, FakeClock(START), charge(200), obs(0.5))
    assert reading.value == pytest.approx(0.5)
    cal = reading.calibration
    assert cal is not None and not cal.trusted
    assert cal.model == pytest.approx(0.2) and cal.correction == pytest.approx(0.3)


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
    assert cal.throttled_s == 0.0
    assert cal.model_kind.startswith(("lag", "avg", "rate"))


async def test_a_429_holds_and_counts_down(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    clock = FakeClock(START)
    s = store(fake_redis, clock)
    await s.heartbeat()
    await s.record(obs(retry_ms=60_000))  # a minute-window limiter: held hold_s at most
    clock.now += 1.0
    await s.heartbeat()
    reading = await s.read("d")
    assert reading.value >= 1.0
    assert reading.calibration is not None
    assert reading.calibration.throttled_s == pytest.approx(DEFAULT_PARAMS.hold_s - 1)
    assert reading.calibration.unseen > 0


async def test_a_spilled_response_is_a_saturation(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    reading = await reading_after(fake_redis, FakeClock(START), obs(spilled=True))
    assert reading.value >= 1.0


async def test_remaining_tokens_read_against_the_capacity(
    fake_redis: fakeredis.FakeAsyncRedis,
) -> None:
    # capacity 6,000 tokens a minute: 1,500 remaining is 75 % used
    reading = await reading_after(fake_redis, FakeClock(START), obs(remaining_tokens=1500))
    assert reading.value == pytest.approx(0.75)
    limited = await reading_after(
        fakeredis.FakeAsyncRedis(), FakeClock(START), obs(remaining_tokens=900, limit_tokens=1000)
    )
    assert limited.value == pytest.approx(0.1)


async def test_observe_events_charge_nothing_and_apply_once(
    fake_redis: fakeredis.FakeAsyncRedis,
) -> None:
    clock = FakeClock(START)
    s = store(fake_redis, clock)
    await s.heartbeat()
    await s.record(charge(400))
    event = obs(0.6).model_copy(update={"phase": "observe"})
    await s.record(event)
    await s.record(event)  # redelivered: applied once
    state = FilterState.loads((await fake_redis.hget(keys.estimate("d"), "st")).decode())
    assert state.n == 1
    cal = (await s.read("d")).calibration
    assert cal is not None and cal.model == pytest.approx(0.4)


async def test_two_processes_build_one_state(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    """Events split over two stores give the state one store gets from all of them."""
    events = [charge(100), obs(0.3), charge(200), obs(0.5, age=0.2), charge(50), obs(0.6)]
    clock = FakeClock(START)
    a, b = store(fake_redis, clock), store(fake_redis, clock)
    alone = store(fakeredis.FakeAsyncRedis(), clock)
    for i, event in enumerate(events):
        clock.now += 0.25
        await (a if i % 2 else b).record(event)
        await alone.record(event)
    for s in (a, alone):
        await s.heartbeat()
    assert (await a.read("d")).value == pytest.approx((await alone.read("d")).value)


async def test_a_conflicting_writer_makes_the_event_step_again(
    fake_redis: fakeredis.FakeAsyncRedis,
) -> None:
    clock = FakeClock(START)
    s = store(fake_redis, clock)
    await s.heartbeat()
    commit = s._commit
    raced = []

    async def racing_commit(*, keys: list[str], args: list[Any]) -> Any:
        if not raced:  # another process stores its own event between our read and write
            raced.append(True)
            other = store(fake_redis, clock)
            await other.record(charge(100))
        return await commit(keys=keys, args=args)

    s._commit = racing_commit  # type: ignore[assignment]
    await s.record(charge(300))
    assert (await s.read("d")).value == pytest.approx(0.4)  # both charges, none lost


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("42.5%", 0.425), ("0%", 0.0), (" 101.2% ", 1.012), ("x", None), (None, None), ("-3%", None)],
)
def test_parse_utilisation(raw: str | None, expected: float | None) -> None:
    assert parse_utilisation(raw) == (None if expected is None else pytest.approx(expected))


def test_header_signals_and_modes() -> None:
    assert header_utilisation({"azure-openai-deployment-utilization": "12%"}) == pytest.approx(0.12)
    assert header_utilisation({}) is None
    assert params_for("off") is None
    assert params_for("auto") is DEFAULT_PARAMS
    spilled = read_signals(
        {"x-ms-spillover-from-deployment": "ptu", "x-ms-deployment-name": "paygo",
         "x-ratelimit-remaining-tokens": "120", "retry-after": "7"}
    )  # fmt: skip
    assert spilled.spilled and spilled.served("ptu") == "paygo"
    assert (spilled.remaining_tokens, spilled.retry_after_s) == (120, 7.0)
    failed = read_signals({"x-ms-spillover-from-deployment": "ptu", "x-ms-spillover-error": "429"})
    assert not failed.spilled and failed.served("ptu") == "ptu"

"""The Azure Monitor minute as a slow drift (monitor.lua, read.lua, MonitorDrift) from tables."""

from __future__ import annotations

import math
from typing import Any

import fakeredis
import pytest

from orchestrator.core.errors import UtilisationUnavailable
from orchestrator.utilisation.base import Reading
from orchestrator.utilisation.estimate.calibration import CalibrationParams
from orchestrator.utilisation.estimate.drift import MonitorDrift
from orchestrator.utilisation.estimate.store import EstimateStore
from tests.support.clock import FakeClock
from tests.unit.test_util_calibration import charge, obs
from tests.unit.test_util_estimate import DEPLOYMENT

M0 = 6_000.0
"""A minute boundary (epoch s); the store's window capacity is 1,000 tokens (100 %)."""
PARAMS = CalibrationParams(drift_decay_s=300.0, max_observation_age_s=5.0)


def store(redis: Any, clock: FakeClock) -> EstimateStore:
    return EstimateStore(
        redis, [DEPLOYMENT], window_s=10.0, max_age_s=5.0, clock=clock, time_source="clock",
        calibration=PARAMS,
    )  # fmt: skip


# steps: ("at", seconds after M0) | ("charge", tokens) | ("header", value) | ("fold", minute
# start, value, expected drift or None); then the reading at `read_at` s after M0
CASES: dict[str, tuple[list[tuple[Any, ...]], float, float]] = {
    "no minute: the model alone": ([("at", 10), ("charge", 200)], 10, 0.2),
    "a minute fuller than the model's peak lifts the reading by the difference": (
        [("at", 10), ("charge", 200), ("at", 62), ("fold", M0, 0.5, 0.3)],
        62,
        0.3 * math.exp(-2 / 300),  # the model has drained to 0; 2 s of fading
    ),
    "a minute emptier than the model's peak changes nothing": (
        [("at", 10), ("charge", 600), ("at", 61), ("fold", M0, 0.4, 0.0)],
        61,
        0.0,
    ),
    "a minute without our events is all drift": (
        [("at", 90), ("fold", M0, 0.25, 0.25), ("charge", 100)],
        90,
        0.1 + 0.25 * math.exp(-30 / 300),
    ),
    "the same minute twice is folded once": (
        [("at", 61), ("fold", M0, 0.3, 0.3), ("fold", M0, 0.9, None)],
        61,
        0.3 * math.exp(-1 / 300),
    ),
    "an older minute after a newer one is ignored": (
        [("at", 130), ("fold", M0 + 60, 0.2, 0.2), ("fold", M0, 0.8, None)],
        130,
        0.2 * math.exp(-10 / 300),
    ),
    "the drift fades over drift_decay_s": (
        [("at", 61), ("fold", M0, 0.4, 0.4)],
        60 + 300,
        0.4 * math.exp(-1),
    ),
    "a fresh header overrides the drift": (
        [("at", 61), ("fold", M0, 0.6, 0.6), ("header", 0.1)],
        62,
        0.1 * math.exp(-1 / PARAMS.positive_decay_s),  # the header's own correction
    ),
    "once the header is missing again, the drift is back": (
        [("at", 61), ("fold", M0, 0.6, 0.6), ("header", 0.1)],
        61 + 6,
        0.6 * math.exp(-7 / 300),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_drift(fake_redis: fakeredis.FakeAsyncRedis, name: str) -> None:
    steps, read_at, expected = CASES[name]
    clock = FakeClock(M0)
    s = store(fake_redis, clock)
    for step in steps:
        kind = step[0]
        if kind == "at":
            clock.now = M0 + step[1]
        elif kind == "charge":
            await s.record(charge(step[1]))
        elif kind == "header":
            await s.record(obs(step[1]))
        else:
            drift = await s.fold_monitor("d", step[1], step[2])
            assert drift == (None if step[3] is None else pytest.approx(step[3]))
    clock.now = M0 + read_at
    await s.heartbeat()
    reading = await s.read("d")
    assert reading.value == pytest.approx(expected, abs=1e-6)


async def test_an_untracked_deployment_is_refused(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    with pytest.raises(UtilisationUnavailable):
        await store(fake_redis, FakeClock(M0)).fold_monitor("nope", M0, 0.5)


class Minutes:
    """A metric source serving scripted readings (a minute ends at `observed_at`)."""

    def __init__(self, readings: list[Reading | None]) -> None:
        self.max_age_s = 300.0
        self.readings = readings
        self.closed = False

    async def read(self, deployment: str) -> Reading:
        reading = self.readings.pop(0) if self.readings else None
        if reading is None:
            raise UtilisationUnavailable("no minute yet")
        return reading

    async def close(self) -> None:
        self.closed = True


async def test_poll_folds_each_new_minute_once() -> None:
    minute = Reading(0.5, M0 + 60, "azure_monitor")
    later = Reading(0.2, M0 + 120, "azure_monitor")
    source = Minutes([None, minute, minute, later])
    folds: list[tuple[str, float, float]] = []

    async def fold(name: str, start: float, value: float) -> float | None:
        folds.append((name, start, value))
        return value

    drift = MonitorDrift(source, ["d"], poll_s=5.0, clock=FakeClock(M0))
    assert [await drift.poll(fold) for _ in range(4)] == [{}, {"d": 0.5}, {}, {"d": 0.2}]
    assert folds == [("d", M0, 0.5), ("d", M0 + 60, 0.2)]
    await drift.close()
    assert source.closed


async def test_kick_polls_in_the_background_at_most_every_poll_s() -> None:
    clock = FakeClock(M0)
    source = Minutes([Reading(0.5, M0 + 60, "azure_monitor")] * 3)
    folded: list[float] = []

    async def fold(name: str, start: float, value: float) -> float | None:
        folded.append(start)
        return value

    drift = MonitorDrift(source, ["d"], poll_s=5.0, clock=clock)
    drift.kick(fold)
    drift.kick(fold)  # not due: no second poll
    await drift.close()  # waits for nothing: cancels a poll still running
    assert len(source.readings) >= 2
    clock.now += 5
    drift.kick(fold)
    assert drift._task is not None
    await drift._task
    assert folded == [M0]


def test_poll_s_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MonitorDrift(Minutes([]), ["d"], poll_s=0)

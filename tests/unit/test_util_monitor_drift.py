"""The Azure Monitor minute teaching the unseen inflow (`filter`, `MonitorDrift`) from tables."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from orchestrator.core.errors import UtilisationUnavailable
from orchestrator.utilisation.base import Reading
from orchestrator.utilisation.estimate.drift import MonitorDrift
from tests.support.clock import FakeClock
from tests.unit.test_util_calibration import charge, store

M0 = 6_000.0
"""A minute boundary (epoch s); the store's window capacity is 1,000 tokens (100 %), 10 s."""
SHARE = 10.0 / 60.0
"""A level difference at the minute's peak, as an inflow share: spread over the minute."""

# steps: ("at", seconds after M0) | ("charge", tokens) | ("fold", minute start, value,
# expected unseen share or None when not folded)
CASES: dict[str, list[tuple[Any, ...]]] = {
    "a minute fuller than our peak teaches the difference": [
        ("at", 10), ("charge", 200), ("at", 62), ("fold", M0, 0.5, 0.3 * SHARE),
    ],
    "a minute emptier than our peak changes nothing": [
        ("at", 10), ("charge", 600), ("at", 61), ("fold", M0, 0.4, 0.0),
    ],
    "a minute without our charges is all unseen": [("at", 90), ("fold", M0, 0.25, 0.25 * SHARE)],
    "the same minute twice is folded once": [
        ("at", 61), ("fold", M0, 0.3, 0.3 * SHARE), ("fold", M0, 0.9, None),
    ],
    "an older minute after a newer one is ignored": [
        ("at", 130), ("fold", M0 + 60, 0.2, 0.2 * SHARE), ("fold", M0, 0.8, None),
    ],
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
async def test_minutes(fake_redis: fakeredis.FakeAsyncRedis, name: str) -> None:
    clock = FakeClock(M0)
    s = store(fake_redis, clock)
    await s.heartbeat()
    for step in CASES[name]:
        kind = step[0]
        if kind == "at":
            clock.now = M0 + step[1]
        elif kind == "charge":
            await s.record(charge(step[1]))
        else:
            unseen = await s.fold_monitor("d", step[1], step[2])
            assert unseen == (None if step[3] is None else pytest.approx(step[3], abs=1e-3))


async def test_the_learnt_inflow_fills_the_headerless_estimate(
    fake_redis: fakeredis.FakeAsyncRedis,
) -> None:
    clock = FakeClock(M0 + 61)
    s = store(fake_redis, clock)
    await s.heartbeat()
    assert await s.fold_monitor("d", M0, 0.9) == pytest.approx(0.9 * SHARE)
    await s.record(charge(500))
    clock.now += 2.0
    await s.heartbeat()
    reading = await s.read("d")
    assert reading.calibration is not None
    # our bucket drains 0.2 in 2 s; with the unseen inflow it drains slower
    assert reading.calibration.model == pytest.approx(0.3)
    assert reading.value == pytest.approx(0.5 - 0.2 * (1 - 0.9 * SHARE), abs=2e-3)


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

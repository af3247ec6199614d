"""Which meaning of utilisation the calibration learns, and where the throttle steers, from tables.

The truth is the simulator's own meter (`LeakyBucket` / `SlidingWindow`) and header
(`exact` / `noisy`: 1 s late, +-5 points), driven on an injected clock beside the store:
interactive charges at 30 % of capacity, a batch of the worker's own calls twice.
"""

from __future__ import annotations

import random
import statistics
from typing import Any

import fakeredis
import pytest

from orchestrator.core.schemas import TokenEvent
from orchestrator.utilisation.base import Reading
from orchestrator.utilisation.estimate.calibration import DEFAULT_PARAMS, CalibrationParams
from orchestrator.utilisation.estimate.store import EstimateStore
from simulator.openai.bucket import LeakyBucket
from simulator.openai.header import UtilisationHistory, reported
from simulator.openai.sliding import SlidingWindow
from tests.support.clock import FakeClock
from tests.unit.test_util_estimate import DEPLOYMENT, START

TPM = 6_000.0  # DEPLOYMENT: 100 tokens/s; our window 10 s, so 100 % = 1,000 tokens
_ids = iter(range(10**9))


def event(tokens: int, phase: str = "admit", utilisation: float | None = None) -> TokenEvent:
    return TokenEvent(
        request_id=f"m{next(_ids)}", deployment="d", phase=phase, timestamp=0.0,  # type: ignore[arg-type]
        prompt_tokens=tokens, utilisation=utilisation,
    )  # fmt: skip


def stores(redis: Any, clock: FakeClock, params: CalibrationParams) -> tuple[EstimateStore, ...]:
    """(the ingress's store, the worker's: its own calls are marked low priority)."""
    kw: dict[str, Any] = {
        "window_s": 10.0, "max_age_s": 5.0, "clock": clock, "time_source": "clock",
        "calibration": params,
    }  # fmt: skip
    return (
        EstimateStore(redis, [DEPLOYMENT], **kw),
        EstimateStore(redis, [DEPLOYMENT], low_priority=True, **kw),
    )


async def drive(
    meaning: str, window_s: float, header: str, seconds: float = 30.0
) -> dict[str, Any]:
    """Run the workload against the truth; the readings after the first 10 s, and the errors."""
    redis = fakeredis.FakeAsyncRedis()
    clock = FakeClock(START)
    ours, worker = stores(redis, clock, DEFAULT_PARAMS)
    meter = (SlidingWindow if meaning == "sliding" else LeakyBucket)(TPM, window_s, clock.now)
    history, rng = UtilisationHistory(), random.Random(3)
    await ours.heartbeat()
    readings: list[tuple[float, Reading]] = []
    for step in range(int(seconds * 10)):
        clock.now += 0.1
        meter.try_admit(clock.now, 3)  # 30 tokens/s: 30 % of capacity
        await ours.record(event(3))
        if 30 <= step % 150 < 60 and step % 2 == 0:  # the worker's batch, 3 s of it
            meter.try_admit(clock.now, 40)
            await worker.record(event(40))
        truth = meter.utilization(clock.now)
        history.record(clock.now, truth)
        seen = reported(header, clock.now, truth, history, rng)
        await ours.record(event(0, "complete", seen))
        await ours.heartbeat()
        if step >= 100:
            readings.append((truth, await ours.read("d")))
    await redis.aclose()
    errors = [r.value - truth for truth, r in readings]
    kinds = [r.calibration.model_kind for _, r in readings if r.calibration is not None]
    return {
        "mae_pts": statistics.mean(abs(e) for e in errors) * 100,
        "kind": statistics.mode(kinds),
        "steer_above": max(r.steer - r.value for _, r in readings),
    }


# (meaning, its window s, header) -> (the meaning learnt, MAE bound in points)
CASES = {
    "our bucket, exact header": ("bucket", 10.0, "exact", "bucket", 0.5),
    "our bucket, noisy header": ("bucket", 10.0, "noisy", "bucket", 3.0),
    "a bucket half the size, exact": ("bucket", 5.0, "exact", "bucket/2", 0.5),
    "a bucket half the size, noisy": ("bucket", 5.0, "noisy", "bucket/2", 3.0),
    "a sliding window, exact": ("sliding", 10.0, "exact", "sliding", 1.0),
    "a sliding window, noisy": ("sliding", 10.0, "noisy", "sliding", 3.0),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_the_meaning_is_learnt(name: str) -> None:
    meaning, window_s, header, learnt, bound = CASES[name]
    result = await drive(meaning, window_s, header)
    assert result["kind"] == learnt
    assert result["mae_pts"] <= bound


async def test_a_sliding_window_is_steered_ahead_a_bucket_is_not() -> None:
    sliding = await drive("sliding", 10.0, "exact")
    bucket = await drive("bucket", 10.0, "exact")
    # interactive traffic keeps coming while the batch's charges stay a window
    assert sliding["steer_above"] > 0.1
    assert bucket["steer_above"] == pytest.approx(0.0, abs=1e-9)


async def test_only_traffic_we_do_not_control_is_forecast_to_grow() -> None:
    """The same charges in a sliding window, as the worker's own or as interactive calls."""
    aheads = {}
    params = CalibrationParams(min_scored=0)  # every meaning plausible at once
    for who in ("worker", "ingress"):
        redis = fakeredis.FakeAsyncRedis()
        clock = FakeClock(START)
        ours, worker = stores(redis, clock, params)
        await ours.heartbeat()
        await ours.record(event(0, "complete", 0.0))  # the first observation: 0 %
        for _ in range(10):
            clock.now += 0.1
            await (worker if who == "worker" else ours).record(event(20))
        await ours.heartbeat()
        reading = await ours.read("d")
        assert reading.calibration is not None and reading.calibration.ahead is not None
        aheads[who] = reading.calibration.ahead
        await redis.aclose()
    # the highest meaning: a bucket half the size, 2 x (200 tokens - 0.9 s drained) = 22 %
    assert aheads["worker"] == pytest.approx(0.22, abs=1e-6)
    # 200 tokens within the last rate_s (2 s), going on at x2 for ~9.5 s until they age out
    assert aheads["ingress"] > 0.2 + 2 * (200 / params.rate_s) / 1000 * 9


async def test_close_calls_read_the_highest_meaning() -> None:
    redis = fakeredis.FakeAsyncRedis()
    clock = FakeClock(START)
    ours, _ = stores(redis, clock, CalibrationParams(min_scored=0, trend_s=0))
    await ours.heartbeat()
    await ours.record(event(0, "complete", 0.0))
    await ours.record(event(300))
    reading = await ours.read("d")
    # bucket 30 %, a bucket half the size 60 %, the sliding window 30 %: nothing tells them
    # apart yet, so the reading leans toward less low-priority work
    assert reading.value == pytest.approx(0.6)
    assert reading.calibration is not None and reading.calibration.model_kind == "bucket/2"
    await redis.aclose()


async def test_when_the_header_stops_every_meaning_counts_again() -> None:
    redis = fakeredis.FakeAsyncRedis()
    clock = FakeClock(START)
    ours, _ = stores(redis, clock, DEFAULT_PARAMS)
    await ours.heartbeat()
    meter = LeakyBucket(TPM, 10.0, clock.now)
    for step in range(100):  # our bucket exactly: the other meanings score worse
        clock.now += 0.1
        tokens = 60 if step % 20 < 5 else 5
        meter.try_admit(clock.now, tokens)
        await ours.record(event(tokens))
        await ours.record(event(0, "complete", meter.utilization(clock.now)))
    await ours.heartbeat()
    with_header = await ours.read("d")
    clock.now += DEFAULT_PARAMS.max_observation_age_s + 0.5
    await ours.heartbeat()
    without = await ours.read("d")
    assert with_header.calibration is not None and without.calibration is not None
    assert with_header.calibration.model_kind == "bucket"
    # the sliding window still holds every charge: the highest meaning, so less batch work
    # than our bucket (here the truth) alone would allow
    assert without.calibration.model_kind == "sliding"
    assert without.value > meter.utilization(clock.now) + 0.1
    await redis.aclose()

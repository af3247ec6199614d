"""How many of a batch's tokens the PTU will absorb before its deadline, with an uncertainty.

The planner measures, at each of its rounds, the rate (tokens per second) at which the
PTU completed batch lines: what the throttle let through of the idle capacity, after
interactive traffic, other tenants' shares and higher classes took theirs. Those samples
are the history (`keys.deadline_history`, per deployment, a week and a day of it).

- **prior**: no sample yet (the batch just started): the planner's `prior_rate` (the
  capacity up to the upper threshold, half of it taken as busy), with an uncertainty as
  large as the value; the planner moves nothing on it, it waits for measurements.
- **recent**: the mean rate of the last `recent_s`, times the time left; its uncertainty
  is the standard error of that mean (the samples' spread over the square root of their
  number) times the time left. A level that drifts away later (a busy afternoon) is not
  in it: the planner forecasts again every round, so a drift moves more lines then.
- **profile**: once the history spans a whole day, each remaining slot of the day
  (`day_s / SLOTS`) is forecast by the mean rate seen in that slot of the earlier days,
  its uncertainty by their spread; slots never seen fall back to the recent level.

Measured this way, the rate already nets out what the PTU serves before the batch
(interactive calls, other tenants' shares, the `low` class); work known to be queued ahead
and not yet in the rate (`ahead_tokens`) is taken off the total. Pure: `now` is passed in;
tests feed tables of samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SLOTS = 24
"""Slots of the time-of-day profile (hours of a real day)."""
DAY_S = 86_400.0
RECENT_S = 300.0
"""The recent level is the mean of this many seconds of samples."""


@dataclass(frozen=True, slots=True)
class Sample:
    """The rate at which the PTU completed batch tokens, measured at `at` (epoch seconds)."""

    at: float
    rate: float


@dataclass(frozen=True, slots=True)
class Forecast:
    """Tokens the PTU absorbs before the deadline: expected, one standard deviation, basis."""

    tokens: float
    sigma: float
    basis: str
    rate: float
    """The expected rate now (tokens per second)."""

    def low(self, k: float) -> float:
        """The expected tokens less `k` standard deviations (never below 0)."""
        return max(0.0, self.tokens - k * self.sigma)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return mean, math.sqrt(var)


def forecast(
    samples: Sequence[Sample],
    now: float,
    deadline: float,
    *,
    prior_rate: float,
    ahead_tokens: float = 0.0,
    recent_s: float = RECENT_S,
    day_s: float = DAY_S,
) -> Forecast:
    """The forecast from `samples` (any order) for the time from `now` to `deadline`."""
    horizon = max(0.0, deadline - now)
    recent = [s.rate for s in samples if now - recent_s <= s.at <= now]
    if recent:
        level, spread = _mean_std(recent)
        spread /= math.sqrt(len(recent))
        basis = "recent"
    else:
        level, spread, basis = max(0.0, prior_rate), max(0.0, prior_rate), "prior"
    tokens, sigma = level * horizon, spread * horizon
    if samples and now - min(s.at for s in samples) >= day_s and horizon > 0:
        tokens, sigma = _profile(samples, now, deadline, day_s, level, spread)
        basis = "profile"
    tokens = max(0.0, tokens - ahead_tokens)
    return Forecast(tokens=tokens, sigma=sigma, basis=basis, rate=level)


def _profile(
    samples: Sequence[Sample], now: float, deadline: float, day_s: float, level: float,
    spread: float,
) -> tuple[float, float]:  # fmt: skip
    """Sum over the slots from now to the deadline of each slot's mean rate (and spread)."""
    slot_s = day_s / SLOTS
    by_slot: dict[int, list[float]] = {}
    for s in samples:
        by_slot.setdefault(int((s.at % day_s) // slot_s), []).append(s.rate)
    tokens = sigma = 0.0
    t = now
    while t < deadline:
        end = min(deadline, (math.floor(t / slot_s) + 1) * slot_s)
        seen = by_slot.get(int((t % day_s) // slot_s))
        mean, std = _mean_std(seen) if seen else (level, spread)
        tokens += mean * (end - t)
        sigma += std * (end - t)
        t = end
    return tokens, sigma

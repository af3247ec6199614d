"""The throttle of DESIGN.md §3 as pure functions: the curve, and a reading to a limit.

`limit_for` is the one place that turns a utilisation reading into a
concurrency limit, for the worker's throttle and for `ptu status` alike: no
reading or a stale one gives 0 (fail closed), a fresh one goes through the curve.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from orchestrator.utilisation.base import Reading


def concurrency_limit(utilisation: float, lower: float, upper: float, maximum: int) -> int:
    """Low-priority calls allowed at `utilisation`.

    At or below `lower`: `maximum`; at or above `upper`: 0 (paused); between:
    linear from `maximum` at `lower` down to 1 at `upper`, rounded down, at least 1.
    """
    if not lower < upper:
        raise ValueError("lower must be below upper")
    if maximum < 1:
        raise ValueError("maximum must be at least 1")
    if utilisation <= lower:
        return maximum
    if utilisation >= upper:
        return 0
    fraction = (utilisation - lower) / (upper - lower)
    return max(1, math.floor(maximum - (maximum - 1) * fraction))


LimitReason = Literal["ok", "missing", "stale"]


class Curve(NamedTuple):
    """The thresholds and maximum of one deployment's throttle curve."""

    lower: float
    upper: float
    maximum: int


class Limit(NamedTuple):
    """A concurrency limit and why it is what it is."""

    value: int
    reason: LimitReason


def limit_for(reading: Reading | None, now: float, max_age_s: float, curve: Curve) -> Limit:
    """The limit a reading allows at `now`: 0 when missing or older than `max_age_s`."""
    if reading is None:
        return Limit(0, "missing")
    if reading.age(now) > max_age_s:
        return Limit(0, "stale")
    return Limit(concurrency_limit(reading.steer, *curve), "ok")

"""The throttle curve of DESIGN.md §3, as a pure function."""

from __future__ import annotations

import math


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

"""The `azure-openai-deployment-utilization` header as a deployment chooses to report it.

Microsoft's moderator called the header "not reliable" and it may disappear
(AZURE_FACTS.md §2), so the simulator can report it three ways: `exact` (the true level
at the moment of the response; a 429 shows the level it was refused at), `noisy` (the
true level of `NOISY_DELAY_S` earlier, plus a uniform error of up to `NOISY_POINTS`
percentage points, never below 0) and `absent` (no header at all).

"Earlier" needs the past, so `UtilisationHistory` keeps the true level sampled at every
response and every simulator tick and interpolates linearly between samples.
"""

from __future__ import annotations

import bisect
import random
from collections import deque
from typing import Literal, get_args

HeaderMode = Literal["exact", "noisy", "absent"]
HEADER_MODES: tuple[str, ...] = get_args(HeaderMode)
NOISY_DELAY_S = 1.0
NOISY_POINTS = 5.0
HISTORY_S = 3.0
"""How much past a history keeps: comfortably more than the noisy delay."""


class UtilisationHistory:
    """Samples of the true level over the last few seconds; every method takes the time."""

    __slots__ = ("_samples", "keep_s")

    def __init__(self, keep_s: float = HISTORY_S) -> None:
        self.keep_s = keep_s
        self._samples: deque[tuple[float, float]] = deque()

    def record(self, now: float, utilization: float) -> None:
        """Add one sample; samples older than `keep_s` (but the last one before) are dropped."""
        if self._samples and now < self._samples[-1][0]:
            return  # time never runs backwards in a history
        self._samples.append((now, utilization))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.keep_s:
            self._samples.popleft()

    def at(self, t: float) -> float | None:
        """The level at time `t`, interpolated; the oldest sample before it; None when empty."""
        samples = self._samples
        if not samples:
            return None
        i = bisect.bisect_right(samples, (t, float("inf")))
        if i == 0:
            return samples[0][1]
        if i == len(samples):
            return samples[-1][1]
        (t0, u0), (t1, u1) = samples[i - 1], samples[i]
        return u0 + (u1 - u0) * (t - t0) / (t1 - t0) if t1 > t0 else u1

    def __repr__(self) -> str:
        return f"<UtilisationHistory samples={len(self._samples)} keep_s={self.keep_s:g}>"


def reported(
    mode: str, now: float, exact: float, history: UtilisationHistory, rng: random.Random
) -> float | None:
    """The fraction the header carries under `mode`, or None when it is left out."""
    if mode == "absent":
        return None
    if mode == "noisy":
        past = history.at(now - NOISY_DELAY_S)
        base = exact if past is None else past
        return max(0.0, base + rng.uniform(-NOISY_POINTS, NOISY_POINTS) / 100.0)
    return exact


def header_value(fraction: float) -> str:
    """The header's text: a percentage with one decimal, such as `42.5%`."""
    return f"{fraction * 100.0:.1f}%"

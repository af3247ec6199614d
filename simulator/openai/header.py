"""The `azure-openai-deployment-utilization` header as a deployment chooses to report it.

Microsoft's moderator called the header "not reliable" and it may disappear
(AZURE_FACTS.md §2, §10); where it is sent, its delay and smoothing are unknown. So the
simulator reports it five ways:

- `exact`: the true level at the moment of the response (a 429 shows the level it was
  refused at);
- `noisy`: the true level of `NOISY_DELAY_S` earlier, plus a uniform error of up to
  `NOISY_POINTS` percentage points, never below 0;
- `lagged`: the true level of `lag_s` seconds earlier (default `DEFAULT_LAG_S`);
- `smoothed`: an exponential moving average of the true level with time constant
  `smoothing_s` (default `DEFAULT_SMOOTHING_S`), as a metric averaged over a few seconds;
- `absent`: no header at all.

"Earlier" needs the past, so `UtilisationHistory` keeps the true level sampled at every
response and every simulator tick and interpolates linearly between samples; it keeps at
least the lag. The average (`Smoother`) is advanced on the same samples, by the time
between them rather than per sample, so it means the same whatever the request rate: the
true level runs linearly between two samples (the bucket drains linearly; a charge is a
jump, i.e. two samples at one instant), and the average of a linear input has a closed
form, so the result does not depend on how often it is sampled.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from typing import Literal, get_args

HeaderMode = Literal["exact", "noisy", "absent", "lagged", "smoothed"]
HEADER_MODES: tuple[str, ...] = get_args(HeaderMode)
"""In the order they were added, so messages listing the first three still read the same."""
NOISY_DELAY_S = 1.0
NOISY_POINTS = 5.0
DEFAULT_LAG_S = 3.0
DEFAULT_SMOOTHING_S = 5.0
MAX_LAG_S = 600.0
"""A longer lag would keep an unbounded past under load; ten minutes is past any use."""
HISTORY_S = 3.0
"""How much past a history keeps at least: comfortably more than the noisy delay."""
HISTORY_MARGIN_S = 1.0
"""Past kept beyond the lag, so the sample before `now - lag` is still there."""


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


class Smoother:
    """An exponential moving average of the true level in continuous time; `now` passed in.

    Between two samples the input is taken as linear from the first value to the second;
    then `dy/dt = (x - y) / tau` integrates exactly to
    `y1 = x1 - s*tau + (y0 - x0 + s*tau) * exp(-dt/tau)` with `s` the input's slope.
    A time constant of 0 follows the input exactly.
    """

    __slots__ = ("_last", "_value", "time_constant_s")

    def __init__(self, time_constant_s: float = DEFAULT_SMOOTHING_S) -> None:
        self.time_constant_s = time_constant_s
        self._value: float | None = None
        self._last: tuple[float, float] | None = None

    @property
    def value(self) -> float | None:
        """The average after the last sample; None before the first."""
        return self._value

    def record(self, now: float, utilization: float) -> None:
        """Advance the average to `now`, where the true level is `utilization`."""
        last, self._last = self._last, (now, utilization)
        if last is None or self._value is None:
            self._value = utilization
            return
        t0, x0 = last
        dt, tau = now - t0, self.time_constant_s
        if dt < 0:
            self._last = last  # time never runs backwards here either
            return
        if tau <= 0:
            self._value = utilization
            return
        if dt == 0:
            return  # a jump at one instant has had no time to move the average
        slope = (utilization - x0) / dt
        decay = math.exp(-dt / tau)
        self._value = utilization - slope * tau + (self._value - x0 + slope * tau) * decay

    def __repr__(self) -> str:
        shown = "-" if self._value is None else f"{self._value:.4f}"
        return f"<Smoother time_constant_s={self.time_constant_s:g} value={shown}>"


def reported(
    mode: str,
    now: float,
    exact: float,
    history: UtilisationHistory,
    rng: random.Random,
    *,
    lag_s: float = DEFAULT_LAG_S,
    smoothed: float | None = None,
) -> float | None:
    """The fraction the header carries under `mode`, or None when it is left out.

    `smoothed` is the moving average for the `smoothed` mode (the exact value until
    there is one).
    """
    if mode == "absent":
        return None
    if mode == "noisy":
        past = history.at(now - NOISY_DELAY_S)
        base = exact if past is None else past
        return max(0.0, base + rng.uniform(-NOISY_POINTS, NOISY_POINTS) / 100.0)
    if mode == "lagged":
        past = history.at(now - lag_s)
        return exact if past is None else past
    if mode == "smoothed":
        return exact if smoothed is None else max(0.0, smoothed)
    return exact


class HeaderReporter:
    """How one deployment reports its level: the mode, its knobs and the past they need."""

    __slots__ = ("_rng", "history", "lag_s", "mode", "smoother")

    def __init__(
        self,
        mode: str = "exact",
        *,
        lag_s: float = DEFAULT_LAG_S,
        smoothing_s: float = DEFAULT_SMOOTHING_S,
        rng: random.Random | None = None,
    ) -> None:
        validate(mode, lag_s, smoothing_s)
        self.mode = mode
        self.lag_s = lag_s
        self.history = UtilisationHistory(history_keep_s(lag_s))
        self.smoother = Smoother(smoothing_s)
        self._rng = rng or random.Random(0)

    @property
    def smoothing_s(self) -> float:
        """The moving average's time constant."""
        return self.smoother.time_constant_s

    def configure(
        self, mode: str | None = None, lag_s: float | None = None, smoothing_s: float | None = None
    ) -> None:
        """Change the mode or a knob from now on; the past already kept stays."""
        mode = self.mode if mode is None else mode
        lag_s = self.lag_s if lag_s is None else lag_s
        smoothing_s = self.smoothing_s if smoothing_s is None else smoothing_s
        validate(mode, lag_s, smoothing_s)
        self.mode, self.lag_s = mode, lag_s
        self.history.keep_s = history_keep_s(lag_s)
        self.smoother.time_constant_s = smoothing_s

    def observe(self, now: float, utilization: float) -> None:
        """One sample of the true level (every tick and every response)."""
        self.history.record(now, utilization)
        self.smoother.record(now, utilization)

    def report(self, now: float, exact: float) -> float | None:
        """What the header says now, `exact` being the truth it would show on time."""
        return reported(
            self.mode, now, exact, self.history, self._rng,
            lag_s=self.lag_s, smoothed=self.smoother.value,
        )  # fmt: skip

    def forget(self) -> None:
        """Drop the past (a reset): the history and the average start again."""
        self.history = UtilisationHistory(history_keep_s(self.lag_s))
        self.smoother = Smoother(self.smoothing_s)

    def __repr__(self) -> str:
        return (
            f"<HeaderReporter mode={self.mode} lag_s={self.lag_s:g}"
            f" smoothing_s={self.smoothing_s:g}>"
        )


def history_keep_s(lag_s: float) -> float:
    """The past a history must keep to answer for `lag_s` seconds earlier."""
    return max(HISTORY_S, lag_s + HISTORY_MARGIN_S)


def validate(mode: str, lag_s: float, smoothing_s: float) -> None:
    """ValueError naming the knob when a mode or a knob is out of range."""
    if mode not in HEADER_MODES:
        raise ValueError(f"utilisation_header must be one of {', '.join(HEADER_MODES)}")
    if not 0.0 <= lag_s <= MAX_LAG_S:
        raise ValueError(f"header_lag_s must be between 0 and {MAX_LAG_S:g}")
    if smoothing_s < 0 or not math.isfinite(smoothing_s):
        raise ValueError("header_smoothing_s must be a non-negative number")


def header_value(fraction: float) -> str:
    """The header's text: a percentage with one decimal, such as `42.5%`."""
    return f"{fraction * 100.0:.1f}%"

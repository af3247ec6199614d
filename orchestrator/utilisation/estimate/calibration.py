"""How the estimate calibrates itself: the filter's constants and the signals it reads.

The filter itself runs inside Redis (`record.lua` updates, `read.lua` reads), so every
process shares one correction per deployment; see the store's module docstring for the
mechanism and the reasons behind each constant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from orchestrator.calls.signals import UTILISATION_HEADER, parse_utilisation

CalibrationMode = Literal["auto", "off"]


@dataclass(frozen=True, slots=True)
class CalibrationParams:
    """Time constants (seconds) of the correction filter."""

    tau_up: float = 0.5
    """Gain when the deployment says "fuller than the model": fast, a miss costs 429s."""
    tau_down: float = 2.0
    """Gain when it says "emptier": slower, so noise averages out and errors lean safe."""
    negative_decay_s: float = 2.0
    """A negative correction (model over-estimates) fades this fast without fresh backing."""
    positive_decay_s: float = 30.0
    """A positive one (unseen load, a 429) fades slowly: forgetting it costs 429s."""
    max_observation_age_s: float = 5.0
    """Older observations describe a past the model has already moved on from: ignored."""
    trend_s: float = 4.0
    """Horizon over which the trend (an error that grows steadily) is learnt; 0 = no trend.

    At least 2 x tau_down keeps the filter from oscillating (critical damping of an
    alpha-beta filter); it extrapolates at most 1 s past the newest signal.
    """
    max_trend: float = 0.2
    """Bound of the trend, in fractions of capacity per second."""
    lookahead_s: float = 0.5
    """A rising trend is read this far ahead: where the level goes, not where it is."""
    score_s: float = 10.0
    """Horizon of each candidate model's score (the mean square of its prediction errors)."""
    header_lag_s: float = 1.0
    """Each meaning is also tried with the header describing the level this long ago (a
    deployment reporting a delayed value); the scores tell which is right."""
    noise_band: float = 0.05
    """An error up to this (the header's own noise) takes the slow gain either way: the fast
    gain is for a real miss, and noise must not bias the correction upward."""
    min_scored: int = 5
    """Observations before the candidates are compared; until then our bucket alone counts."""
    plausible_ratio: float = 1.5
    """A candidate scoring within this factor of the best is plausible: the highest of the
    plausible ones is read, so a close call errs toward less low-priority work."""

    def __post_init__(self) -> None:
        if min(self.tau_up, self.tau_down, self.negative_decay_s, self.positive_decay_s) <= 0:
            raise ValueError("calibration time constants must be positive")
        if min(self.max_observation_age_s, self.trend_s, self.max_trend, self.lookahead_s) < 0:
            raise ValueError("observation age, trend and look-ahead must not be negative")
        if (
            self.score_s <= 0
            or self.drift_decay_s <= 0
            or self.min_scored < 0
            or self.plausible_ratio < 1
        ):
            raise ValueError(
                "score horizon and drift decay must be positive and the plausible ratio >= 1"
            )

    drift_decay_s: float = 300.0
    """An Azure Monitor minute's drift (the deployment fuller than the model's peak of that
    minute) fades this fast; it counts only while no fresh header is seen."""

    growth: float = 2.0
    """Under the sliding meaning, a charge stays a whole window: the throttle steers by where
    the window goes if the traffic we do not control (interactive calls, other apps) goes
    on at this factor x its recent rate while the oldest charges age out."""
    rate_s: float = 2.0
    """Over how many seconds that recent rate is measured (the higher of it and of a rate
    over three times as long counts)."""

    def read_args(self, full: float) -> list[str]:
        """The trailing ARGV of `read.lua` (`full`: the level of 100 %, in tokens)."""
        return [
            repr(self.negative_decay_s),
            repr(self.positive_decay_s),
            repr(self.lookahead_s),
            repr(full),
            str(self.min_scored),
            repr(self.plausible_ratio),
            repr(self.max_observation_age_s),
            repr(self.drift_decay_s),
            repr(self.growth),
            repr(self.rate_s),
        ]

    def script_args(self) -> list[str]:
        """The trailing ARGV of `record.lua` that turn calibration on."""
        return [
            repr(self.tau_up),
            repr(self.tau_down),
            repr(self.negative_decay_s),
            repr(self.positive_decay_s),
            repr(self.max_observation_age_s),
            repr(self.trend_s),
            repr(self.max_trend),
            repr(self.score_s),
        ]

    def tail_args(self) -> list[str]:
        """The ARGV of `record.lua` after the low-priority mark: header lag, noise band."""
        return [repr(self.header_lag_s), repr(self.noise_band)]


DEFAULT_PARAMS = CalibrationParams()


def params_for(mode: CalibrationMode) -> CalibrationParams | None:
    """The filter of `PTU_CALIBRATION` (None = off: the open-loop model alone)."""
    return DEFAULT_PARAMS if mode == "auto" else None


def header_utilisation(headers: Mapping[str, str]) -> float | None:
    """The deployment's utilisation header of a response, as a fraction."""
    return parse_utilisation(headers.get(UTILISATION_HEADER))

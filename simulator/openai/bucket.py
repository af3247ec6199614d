"""The provisioned deployment's leaky bucket (AZURE_FACTS.md §1), pure and clock-free.

The level is held in input-token equivalents. 100 % utilisation is one window of
capacity (`capacity_tpm / 60 * window_s`); the level drains continuously at
`capacity_tpm / 60` per second. A call is refused while utilisation is at or above
100 %; otherwise its expected cost is added at once and corrected when it completes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Admission:
    """Outcome of one admission check."""

    admitted: bool
    utilization: float
    retry_after_s: float = 0.0


def charge(prompt_tokens: int, cached_tokens: int, output_tokens: int, weight: float) -> float:
    """Input-token equivalents of a call: (prompt - cached) + output x weight."""
    return max(0, prompt_tokens - cached_tokens) + output_tokens * weight


def retry_after_ms(seconds: float) -> int:
    """The `retry-after-ms` header value: whole milliseconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds * 1000.0))


def retry_after_s(seconds: float) -> int:
    """The `retry-after` header value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds))


class LeakyBucket:
    """Utilisation of one provisioned deployment; every method takes the current time."""

    __slots__ = ("_level", "_updated", "capacity_tpm", "window_s")

    def __init__(self, capacity_tpm: float, window_s: float, now: float = 0.0) -> None:
        if capacity_tpm <= 0 or window_s <= 0:
            raise ValueError("capacity_tpm and window_s must be positive")
        self.capacity_tpm = capacity_tpm
        self.window_s = window_s
        self._level = 0.0
        self._updated = now

    @property
    def drain_per_s(self) -> float:
        """Token equivalents drained per second."""
        return self.capacity_tpm / 60.0

    @property
    def full(self) -> float:
        """The level that is 100 % utilisation: one window of capacity."""
        return self.drain_per_s * self.window_s

    def level(self, now: float) -> float:
        """The level after draining up to `now` (time never runs backwards here)."""
        elapsed = now - self._updated
        if elapsed > 0:
            self._level = max(0.0, self._level - elapsed * self.drain_per_s)
            self._updated = now
        return self._level

    def utilization(self, now: float) -> float:
        """Level as a fraction of one window; may exceed 1."""
        return self.level(now) / self.full

    def time_until_below_full(self, now: float) -> float:
        """Seconds until utilisation drops below 100 % (0 when it already is)."""
        return max(0.0, (self.level(now) - self.full) / self.drain_per_s)

    def try_admit(self, now: float, cost: float) -> Admission:
        """Refuse at or above 100 %, else add `cost` and admit."""
        level = self.level(now)
        if level >= self.full:
            return Admission(False, level / self.full, self.time_until_below_full(now))
        self._level = level + cost
        return Admission(True, self._level / self.full)

    def reconcile(self, now: float, delta: float, admitted_at: float | None = None) -> None:
        """Correct an admitted call's cost by `delta` (negative when it used less).

        `admitted_at` does not matter to a bucket: the level has no memory of when.
        """
        self._level = max(0.0, self.level(now) + delta)

    def set_capacity(self, now: float, capacity_tpm: float) -> None:
        """Change the drain rate (and the 100 % mark) from `now` on; the level is kept."""
        if capacity_tpm <= 0:
            raise ValueError("capacity_tpm must be positive")
        self.level(now)
        self.capacity_tpm = capacity_tpm

    def reset(self, now: float) -> None:
        """Empty the bucket."""
        self._level = 0.0
        self._updated = now

    def __repr__(self) -> str:
        return (
            f"<LeakyBucket capacity_tpm={self.capacity_tpm:g} window_s={self.window_s:g}"
            f" level={self._level:.1f} full={self.full:.1f}>"
        )

"""Traffic of other applications that call the deployment directly, bypassing everything.

A platform team's PTU is rarely used by one application only. The simulator can consume a
share `S` of a provisioned deployment's capacity itself: a steady stream of
`CALLS_PER_S` synthetic calls a second, each charging `S x capacity / CALLS_PER_S` token
equivalents through the same admission as real calls (so they are refused at 100 % too,
and a refused call is simply lost, like an app that does not retry). Their requests, 429s
and tokens are counted apart from those of real callers; Azure Monitor sees them, as it
sees every caller of the real deployment.

The share may vary over time (`Profile`): `constant:S`, or `square:LOW,HIGH,HALF_PERIOD_S`,
an application that alternates between two loads, starting LOW when the profile is set.
The share is of the deployment's capacity when the share (or profile) was set, at start-up
or by a PATCH (with a `ptus` in the same body, the new one): another application does not
send less because Azure serves the deployment with fewer PTUs for a while.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CALLS_PER_S = 10.0
PROMPT_SHARE = 0.7
"""Share of a background call's charge that is prompt; the rest is weighted output."""
MAX_CATCH_UP_S = 1.0
"""A stalled tick catches up at most this much; a long stall is load that never came."""
PROFILE_FORMS = "constant:S or square:LOW,HIGH,HALF_PERIOD_S"


@dataclass(frozen=True, slots=True)
class BackgroundCall:
    """One synthetic call: its tokens and the charge they make."""

    prompt_tokens: int
    completion_tokens: int
    charge: float


def call_shape(share: float, capacity_tpm: float, output_weight: float) -> BackgroundCall:
    """The call that, `CALLS_PER_S` times a second, consumes `share` of capacity."""
    charge = share * capacity_tpm / 60.0 / CALLS_PER_S
    completion = round(charge * (1.0 - PROMPT_SHARE) / output_weight)
    prompt = max(0, round(charge - completion * output_weight))
    return BackgroundCall(prompt, completion, prompt + completion * output_weight)


@dataclass(frozen=True, slots=True)
class Profile:
    """The background share over time: `low`, then `high`, alternating every `half_period_s`.

    A constant profile has `low == high` and no period.
    """

    low: float
    high: float
    half_period_s: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.low <= 1.0 and 0.0 <= self.high <= 1.0):
            raise ValueError("background shares must be between 0 and 1")
        if self.low != self.high and not (0.0 < self.half_period_s < math.inf):
            raise ValueError("a square background profile needs a positive half period")

    @classmethod
    def constant(cls, share: float) -> Profile:
        """The same share all the time."""
        return cls(share, share)

    @property
    def varies(self) -> bool:
        """Whether the share changes over time."""
        return self.low != self.high

    def share_at(self, elapsed_s: float) -> float:
        """The share `elapsed_s` seconds after the profile was set (LOW first)."""
        if not self.varies or elapsed_s < 0:
            return self.low
        return self.high if math.floor(elapsed_s / self.half_period_s) % 2 else self.low

    def __str__(self) -> str:
        if not self.varies:
            return f"constant:{self.low:g}"
        return f"square:{self.low:g},{self.high:g},{self.half_period_s:g}"


def parse_profile(text: str) -> Profile:
    """`constant:S` or `square:LOW,HIGH,HALF_PERIOD_S`; ValueError naming the form."""
    kind, sep, rest = text.strip().partition(":")
    try:
        numbers = [float(part) for part in rest.split(",")] if sep else []
    except ValueError:
        numbers = []
    if kind == "constant" and len(numbers) == 1:
        return Profile.constant(numbers[0])
    if kind == "square" and len(numbers) == 3:
        return Profile(*numbers)
    raise ValueError(f"background profile {text!r}: expected {PROFILE_FORMS}")


class BackgroundSchedule:
    """When the next synthetic calls are due and how large; pure, `now` passed in."""

    __slots__ = ("_next_at", "_since", "profile")

    def __init__(self, share: float | Profile = 0.0, now: float = 0.0) -> None:
        self.profile = share if isinstance(share, Profile) else Profile.constant(share)
        self._since = now
        self._next_at: float | None = now

    @property
    def share(self) -> float:
        """The share when the profile was set (LOW for a square wave)."""
        return self.profile.low

    def share_at(self, now: float) -> float:
        """The share the profile asks for at `now`."""
        return self.profile.share_at(now - self._since)

    def set_share(self, now: float, share: float) -> None:
        """Change to a constant share from `now` on (0 stops the stream)."""
        if not 0.0 <= share <= 1.0:
            raise ValueError("background_share must be between 0 and 1")
        self.set_profile(now, Profile.constant(share))

    def set_profile(self, now: float, profile: Profile) -> None:
        """Follow `profile` from `now` on; a square wave starts its LOW half now."""
        self.profile = profile
        self._since = now
        if self._next_at is not None:
            self._next_at = max(self._next_at, now)

    def due(self, now: float) -> int:
        """How many calls are due by `now` (each is then scheduled one interval later)."""
        if self.share_at(now) <= 0.0:
            self._next_at = None  # idle: the stream starts again when the share does
            return 0
        interval = 1.0 / CALLS_PER_S
        self._next_at = now if self._next_at is None else max(self._next_at, now - MAX_CATCH_UP_S)
        count = 0
        while self._next_at <= now:
            count += 1
            self._next_at += interval
        return count

    def __repr__(self) -> str:
        next_at = "-" if self._next_at is None else f"{self._next_at:.3f}"
        return f"<BackgroundSchedule profile={self.profile} next_at={next_at}>"

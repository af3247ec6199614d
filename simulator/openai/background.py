"""Traffic of other applications that call the deployment directly, bypassing everything.

A platform team's PTU is rarely used by one application only. The simulator can consume a
share `S` of a provisioned deployment's capacity itself: a steady stream of
`CALLS_PER_S` synthetic calls a second, each charging `S x capacity / CALLS_PER_S` token
equivalents through the same admission as real calls (so they are refused at 100 % too,
and a refused call is simply lost, like an app that does not retry). Their requests, 429s
and tokens are counted apart from those of real callers; Azure Monitor sees them, as it
sees every caller of the real deployment.
"""

from __future__ import annotations

from dataclasses import dataclass

CALLS_PER_S = 10.0
PROMPT_SHARE = 0.7
"""Share of a background call's charge that is prompt; the rest is weighted output."""
MAX_CATCH_UP_S = 1.0
"""A stalled tick catches up at most this much; a long stall is load that never came."""


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


class BackgroundSchedule:
    """When the next synthetic calls are due; pure, `now` passed in."""

    __slots__ = ("_next_at", "share")

    def __init__(self, share: float = 0.0, now: float = 0.0) -> None:
        self.share = share
        self._next_at = now

    def set_share(self, now: float, share: float) -> None:
        """Change the share from `now` on (0 stops the stream)."""
        if not 0.0 <= share <= 1.0:
            raise ValueError("background_share must be between 0 and 1")
        self.share = share
        self._next_at = max(self._next_at, now)

    def due(self, now: float) -> int:
        """How many calls are due by `now` (each is then scheduled one interval later)."""
        if self.share <= 0.0:
            self._next_at = now
            return 0
        interval = 1.0 / CALLS_PER_S
        self._next_at = max(self._next_at, now - MAX_CATCH_UP_S)
        count = 0
        while self._next_at <= now:
            count += 1
            self._next_at += interval
        return count

    def __repr__(self) -> str:
        return f"<BackgroundSchedule share={self.share:g} next_at={self._next_at:.3f}>"

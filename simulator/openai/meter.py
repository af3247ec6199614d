"""What a provisioned deployment's utilisation means: the meter behind admission.

Two readings of the service's "utilisation" (AZURE_FACTS.md §1, "what is not known"):
`bucket`, the level of a leaky bucket drained at capacity (100 % = one window), and
`sliding`, the charges admitted over the trailing window divided by one window of
capacity. Both refuse at 100 % and say honestly how long until they would admit again;
the simulator can switch between them at runtime to test an orchestrator against either.
"""

from __future__ import annotations

from typing import Literal, Protocol, get_args

from simulator.openai.bucket import Admission, LeakyBucket
from simulator.openai.sliding import SlidingWindow

UtilisationModel = Literal["bucket", "sliding"]
MODELS: tuple[str, ...] = get_args(UtilisationModel)


class Meter(Protocol):
    """Utilisation of one provisioned deployment; every method takes the current time."""

    capacity_tpm: float
    window_s: float

    def utilization(self, now: float) -> float:
        """The true level as a fraction of 100 %; may exceed 1."""
        ...

    def time_until_below_full(self, now: float) -> float:
        """Seconds until a call would be admitted again (0 when it would be now)."""
        ...

    def try_admit(self, now: float, cost: float) -> Admission:
        """Refuse at or above 100 % (nothing charged), else charge `cost` and admit."""
        ...

    def reconcile(self, now: float, delta: float, admitted_at: float | None = None) -> None:
        """Correct the charge of a call admitted at `admitted_at` by `delta`."""
        ...

    def set_capacity(self, now: float, capacity_tpm: float) -> None:
        """Change the capacity (drain rate and 100 % mark) from `now` on."""
        ...


def make_meter(model: str, capacity_tpm: float, window_s: float, now: float) -> Meter:
    """A fresh, empty meter of the named model."""
    if model == "bucket":
        return LeakyBucket(capacity_tpm, window_s, now)
    if model == "sliding":
        return SlidingWindow(capacity_tpm, window_s, now)
    raise ValueError(f"utilisation model must be one of {', '.join(MODELS)}, not {model!r}")


def switch(meter: Meter, model: str, now: float) -> Meter:
    """A meter of `model` carrying over the current level, so the truth does not jump."""
    fresh = make_meter(model, meter.capacity_tpm, meter.window_s, now)
    level = meter.utilization(now) * meter.capacity_tpm / 60.0 * meter.window_s
    if level > 0:
        fresh.reconcile(now, level, now)
    return fresh

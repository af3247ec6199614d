"""The overflow plan: how many of a batch's remaining lines leave the PTU, and for where.

Everything the PTU will not finish before the deadline (the forecast less `margin`
standard deviations) goes to overflow, at the last safe moment; the rest stays on the PTU,
which costs nothing more. The lines that leave go to the cheapest target that can still
finish them in time: a Batch deployment only while its turnaround (times `BATCH_SAFETY`)
fits in the time left; Flex and standard answer synchronously. At every round the plan is
made again from a new forecast: when the PTU turns out busier than forecast, more lines
leave; when it turns out idler, fewer (a deferred move waits; lines already sent are not
called back: their tokens are spent or being spent). Pure: tests give tables.

The margin: on the deadline benchmark the forecast's error by the deadline is reported
beside the plan; `MARGIN_K` two standard deviations keeps the chance that the PTU falls
short of its share small while the forecast is still young (its sigma then is large), and
costs little once the rate is known (sigma small).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

MARGIN_K = 2.0
BATCH_SAFETY = 1.5
"""A Batch deployment is used only while 1.5 times its expected turnaround fits in the time left."""
Kind = str
KINDS = ("batch", "flex", "standard")


@dataclass(frozen=True, slots=True)
class Option:
    """One overflow target as the planner sees it: its price per line and turnaround."""

    name: str
    kind: Kind
    price_per_line: float
    turnaround_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    """Lines to move now per target (cheapest first), and why."""

    send: dict[str, int] = field(default_factory=dict)
    ptu_lines: int = 0
    """Lines the PTU is expected to finish (the forecast less the margin)."""
    reason: str = ""
    deferred: int = 0
    """Lines that will move, but not yet (`plan`'s `wave`)."""

    @property
    def total(self) -> int:
        """Lines to move now."""
        return sum(self.send.values())


def plan(
    remaining: int,
    ptu_lines_low: float,
    time_left: float,
    options: Sequence[Option],
    *,
    moved: int = 0,
    wave: tuple[int, float] | None = None,
    slack_s: float = 0.0,
) -> Plan:
    """The plan for `remaining` lines without a result, `moved` of them already on overflow,
    when the PTU is expected (with margin) to finish `ptu_lines_low` in `time_left`.

    With `wave` (`lines, seconds`: how many lines a synchronous target takes at once and how
    long a wave of them takes) the move is just in time: only the lines that the waves
    still possible later (before `slack_s` is all that is left) could not take leave now;
    the others are `deferred`, and the PTU keeps working on them meanwhile (the next
    rounds, better informed, move fewer if it did better than forecast). A Batch
    deployment takes its lines at once: they wait until 1.5 x its turnaround plus
    `slack_s` is all that is left."""
    on_ptu = remaining - moved
    keep = min(on_ptu, math.floor(ptu_lines_low))
    excess = on_ptu - keep
    if excess <= 0:
        return Plan(ptu_lines=keep, reason="fits")
    usable = [
        o for o in options
        if o.kind != "batch" or o.turnaround_s * BATCH_SAFETY <= time_left
    ]  # fmt: skip
    if not usable:
        return Plan(ptu_lines=keep, reason="no_target_in_time")
    best = min(usable, key=lambda o: (o.price_per_line, KINDS.index(o.kind)))
    if wave is not None:
        if best.kind == "batch":
            later = excess if time_left - best.turnaround_s * BATCH_SAFETY > slack_s else 0
        else:
            per_wave, wave_s = wave
            waves = max(0, math.floor((time_left - slack_s) / wave_s) - 1)
            later = max(0, waves * per_wave - moved)  # the lines in flight hold the first
        now = max(0, excess - later)
        if now == 0:
            return Plan(ptu_lines=keep, reason="deferred", deferred=excess)
        return Plan(send={best.name: now}, ptu_lines=keep, reason="short", deferred=excess - now)
    return Plan(send={best.name: excess}, ptu_lines=keep, reason="short")


def price_per_line(price_in: float, price_out: float, tokens_in: float, tokens_out: float) -> float:
    """What one line of `tokens_in` / `tokens_out` costs at these prices per 1M tokens."""
    return (tokens_in * price_in + tokens_out * price_out) / 1e6

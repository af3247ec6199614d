"""Our own charges and their past: the bucket's history, the sliding-window sums, our rates.

What the header hypotheses compare the deployment's reports with (`hypotheses.py`), and what
the look-ahead of a window meaning is made of. Pure functions of the state (`state.py`).
"""

from __future__ import annotations

import math

from orchestrator.utilisation.estimate.state import (
    HISTORY,
    LAGS_S,
    RATE_HORIZONS,
    SLOT_S,
    WINDOW_SLOTS,
    FilterState,
)

GROWTH = 2.0
"""Under a window meaning a charge stays a whole window, so the throttle steers by where
the window goes if the traffic we do not control goes on at this x its recent rate while
the oldest charges leave: an interactive burst then still fits."""


def past(st: FilterState, t: float) -> float:
    """Our bucket at time `t` (interpolated between slots; the oldest kept before them)."""
    if t >= st.t:
        return st.m
    pos = t / SLOT_S
    i = math.floor(pos)
    if i >= st.slot:
        return st.hist[st.slot % HISTORY] + (st.m - st.hist[st.slot % HISTORY]) * min(
            1.0, (t - st.slot * SLOT_S) / max(st.t - st.slot * SLOT_S, 1e-9)
        )
    i = max(i, st.slot - HISTORY + 1)
    a = st.hist[i % HISTORY]
    b = st.hist[(i + 1) % HISTORY] if i + 1 <= st.slot else st.m
    return a + (b - a) * min(1.0, max(0.0, pos - i))


def ring(window_s: float) -> tuple[float, int]:
    """(slot width, slots kept) of the window sums: a window plus the longest lag."""
    width = window_s / WINDOW_SLOTS
    return width, WINDOW_SLOTS + math.ceil(max(LAGS_S) / width) + 2


def book(st: FilterState, delta: float, at: float, window_s: float) -> None:
    """Book a charge (or a refund, in the slot of the charge it corrects) for window sums."""
    width, keep = ring(window_s)
    if len(st.win) != keep:
        st.win, st.win_slot = [0.0] * keep, math.floor(st.t / width)
    now_slot = math.floor(st.t / width)
    for i in range(max(st.win_slot + 1, now_slot - keep + 1), now_slot + 1):
        st.win[i % keep] = 0.0  # slots entered since: empty
    st.win_slot = max(st.win_slot, now_slot)
    slot = min(math.floor(at / width), now_slot)
    if now_slot - slot < keep:
        st.win[slot % keep] += delta


class Booked:
    """Our charges booked up to any time, from the slots of `win` (a charge spread evenly in
    its slot): prefix sums, so each window sum is two look-ups."""

    __slots__ = ("_first", "_prefix", "_t", "_values", "_width")

    def __init__(self, st: FilterState, window_s: float) -> None:
        width, keep = ring(window_s)
        self._width, self._t = width, st.t
        self._first = st.win_slot - keep + 1
        self._values = (
            [st.win[j % keep] for j in range(self._first, st.win_slot + 1)]
            if (len(st.win) == keep)
            else []
        )
        self._prefix = [0.0]
        for v in self._values:
            self._prefix.append(self._prefix[-1] + v)

    def until(self, t: float) -> float:
        """Charges booked in slots before `t`, the slot holding `t` pro rata."""
        if not self._values:
            return 0.0
        pos = (t - self._first * self._width) / self._width
        i = math.floor(pos)
        if i < 0:
            return 0.0
        if i >= len(self._values):
            return self._prefix[-1]
        start = (self._first + i) * self._width
        end = (
            min(start + self._width, self._t) if i == len(self._values) - 1 else start + self._width
        )
        share = min(1.0, max(0.0, (t - start) / max(end - start, 1e-9)))
        return self._prefix[i] + self._values[i] * share

    def window(self, t: float, window_s: float) -> float:
        """Our charges within the window ending at `t`."""
        return max(0.0, self.until(t) - self.until(t - window_s))


def window_sum(st: FilterState, t: float, window_s: float) -> float:
    """Our charges within the window ending at `t`."""
    return Booked(st, window_s).window(t, window_s)


def rates(st: FilterState, now: float, window_s: float) -> list[float]:
    """Our charge rate over each horizon, corrected for a horizon longer than the state's
    life (a young integrator has not filled yet: read raw, it would understate our rate; at
    most doubled, since what came before the state is unknown)."""
    age = max(now - st.born, SLOT_S)
    return [
        r / max(0.5, 1.0 - math.exp(-age / (h * window_s)))
        for h, r in zip(RATE_HORIZONS, st.rate, strict=True)
    ]


def window_ahead(st: FilterState, now: float, window_s: float) -> float:
    """The highest our window sum gets over the next window if only the traffic we do not
    control goes on, at `GROWTH` x its recent rate, while the oldest charges leave."""
    rate = GROWTH * max(st.free)
    width, _ = ring(window_s)
    booked = Booked(st, window_s)
    current = booked.window(now, window_s)
    gone = booked.until(now - window_s)
    best = current
    for i in range(1, WINDOW_SLOTS + 1):
        h = i * width
        best = max(best, current - (booked.until(now - window_s + h) - gone) + rate * h)
    return best

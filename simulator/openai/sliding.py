"""Utilisation as a rate: charges admitted over the trailing window, pure and clock-free.

The other reading of "PTUs consumed / PTUs deployed" (AZURE_FACTS.md §1, "what is not
known"): utilisation is the sum of the charges admitted in the last `window_s` seconds
divided by one window of capacity (`capacity_tpm / 60 * window_s`). Unlike the leaky
bucket it grows with any sustained load (a steady 40 % of capacity reads 40 %), and a
charge stops counting exactly `window_s` after it was admitted, in flight or not. The
same admission rule applies: refused at or above 100 %, with `retry-after` the time until
enough charges have aged out to bring the sum below 100 %.

A reconciliation at completion (actual output differs from `max_tokens`) is booked at the
call's admission time, so it leaves the window together with the charge it corrects.
"""

from __future__ import annotations

import bisect
import itertools

from simulator.openai.bucket import Admission


class SlidingWindow:
    """Charges admitted over the trailing window; every method takes the current time."""

    __slots__ = ("_entries", "_seq", "_total", "capacity_tpm", "window_s")

    def __init__(self, capacity_tpm: float, window_s: float, now: float = 0.0) -> None:
        if capacity_tpm <= 0 or window_s <= 0:
            raise ValueError("capacity_tpm and window_s must be positive")
        self.capacity_tpm = capacity_tpm
        self.window_s = window_s
        # (admitted_at, sequence, amount), ordered by time; the sequence keeps ties stable
        self._entries: list[tuple[float, int, float]] = []
        self._seq = itertools.count()
        self._total = 0.0

    @property
    def full(self) -> float:
        """The sum that is 100 % utilisation: one window of capacity."""
        return self.capacity_tpm / 60.0 * self.window_s

    def _expire(self, now: float) -> None:
        cutoff = now - self.window_s
        drop = 0
        for at, _, amount in self._entries:
            if at > cutoff:
                break
            self._total -= amount
            drop += 1
        if drop:
            del self._entries[:drop]
        if not self._entries:
            self._total = 0.0  # no float residue once the window is empty

    def charged(self, now: float) -> float:
        """Sum of the charges admitted in (now - window, now], never negative."""
        self._expire(now)
        return max(0.0, self._total)

    def utilization(self, now: float) -> float:
        """Charged sum as a fraction of one window; may exceed 1."""
        return self.charged(now) / self.full

    def time_until_below_full(self, now: float) -> float:
        """Seconds until enough charges age out to bring the sum below 100 %."""
        remaining = self.charged(now)
        if remaining < self.full:
            return 0.0
        entries = self._entries
        for i, (at, _, amount) in enumerate(entries):
            remaining -= amount
            last_of_instant = i + 1 == len(entries) or entries[i + 1][0] != at
            if last_of_instant and remaining < self.full:
                return max(0.0, at + self.window_s - now)
        return self.window_s  # unreachable with non-negative net charges; stay conservative

    def try_admit(self, now: float, cost: float) -> Admission:
        """Refuse at or above 100 %, else book `cost` at `now` and admit."""
        charged = self.charged(now)
        if charged >= self.full:
            return Admission(False, charged / self.full, self.time_until_below_full(now))
        self._book(now, cost)
        return Admission(True, self.charged(now) / self.full)

    def reconcile(self, now: float, delta: float, admitted_at: float | None = None) -> None:
        """Correct a call's charge by `delta`, booked at its admission time (default `now`)."""
        at = now if admitted_at is None else admitted_at
        if at > now - self.window_s:  # a charge already aged out has nothing left to correct
            self._book(at, delta)

    def _book(self, at: float, amount: float) -> None:
        bisect.insort(self._entries, (at, next(self._seq), amount))
        self._total += amount

    def set_capacity(self, now: float, capacity_tpm: float) -> None:
        """Change the 100 % mark from `now` on; the charges in the window are kept."""
        if capacity_tpm <= 0:
            raise ValueError("capacity_tpm must be positive")
        self.capacity_tpm = capacity_tpm

    def reset(self, now: float) -> None:
        """Forget every charge."""
        self._entries.clear()
        self._total = 0.0

    def __repr__(self) -> str:
        return (
            f"<SlidingWindow capacity_tpm={self.capacity_tpm:g} window_s={self.window_s:g}"
            f" charges={len(self._entries)} total={self._total:.1f} full={self.full:.1f}>"
        )

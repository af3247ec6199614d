"""The one fake clock of the tests: time moves only when a test moves it or the code sleeps."""

from __future__ import annotations

import asyncio


class FakeClock:
    """`clock()` (or calling it) reads `now`; `sleep` records the wait and moves `now` on.

    Pass the object itself, or `fake.clock`, where code takes a clock, and
    `fake.sleep` where it takes a sleep: waits then take no real time, and a test
    can assert on `sleeps`. `sleep` still yields once, as `asyncio.sleep` does.
    """

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def clock(self) -> float:
        """The current fake time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time on without a sleep."""
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the wait, move time on by it (never backwards), yield once."""
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"<FakeClock now={self.now} sleeps={len(self.sleeps)}>"

"""The throttle slot one request holds, with synchronous transitions.

A request holds at most one slot: taken before each call, handed back as soon as the
call ends (also before a retry's wait), taken again for the retry. When the call starts,
its lease is made to cover the call's timeout (`start`, see `throttle.slots`). `take` empties the
holder synchronously before the release is awaited, so no path can release a slot twice
or forget one that a cancelled coroutine was about to release.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from orchestrator.throttle.slots import Slot

if TYPE_CHECKING:
    from orchestrator.core.tasks import TaskSet
    from orchestrator.worker.protocols import SlotLimiter


class SlotHolder:
    """Holds the one slot of a request (or none)."""

    __slots__ = ("_bookkeeping", "_limiter", "_slot")

    def __init__(self, limiter: SlotLimiter, slot: Slot | None, bookkeeping: TaskSet) -> None:
        self._limiter = limiter
        self._slot = slot
        self._bookkeeping = bookkeeping

    @property
    def held(self) -> bool:
        """Whether a slot is held now."""
        return self._slot is not None

    def take(self) -> Slot | None:
        """Empty the holder; the slot it held, if any."""
        slot, self._slot = self._slot, None
        return slot

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Hold a slot (waiting for one unless held); False once `stop` is set first."""
        if self._slot is None:
            self._slot = await self._limiter.acquire(stop)
        return self._slot is not None

    async def start(self, call_s: float) -> None:
        """The call starts and lasts at most `call_s`: its lease must cover it.

        When the lease had expired (this process stalled since taking it), a fresh slot is
        taken under the limit first. Stopping does not end this wait: the call was
        committed to, and the drain's cancellation ends it.
        """
        while True:
            if self._slot is None:
                self._slot = await self._limiter.acquire(asyncio.Event())
            slot = self._slot
            if slot is not None and await self._limiter.start(slot, call_s):
                return
            self._slot = None

    async def release(self) -> None:
        """Hand the slot back, if held; shielded from cancellation."""
        slot = self.take()
        if slot is not None:
            await self._bookkeeping.shielded(self._limiter.release(slot))

    def __repr__(self) -> str:
        return f"<SlotHolder held={self.held}>"

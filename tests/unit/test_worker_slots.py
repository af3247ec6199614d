"""`SlotHolder`: at most one slot per request, emptied synchronously, released once."""

from __future__ import annotations

import asyncio

from orchestrator.core.tasks import TaskSet
from orchestrator.throttle.slots import Slot
from orchestrator.worker.dispatch.slots import SlotHolder


class Limiter:
    """Hands out numbered slots (None once `stop` is set) and records releases."""

    def __init__(self) -> None:
        self.acquired = 0
        self.released: list[Slot] = []
        self.expired: set[str] = set()
        self.started: list[tuple[str, float]] = []

    async def acquire(self, stop: asyncio.Event) -> Slot | None:
        if stop.is_set():
            return None
        self.acquired += 1
        return Slot(f"s{self.acquired}", "d", 0.0)

    async def release(self, slot: Slot) -> None:
        self.released.append(slot)

    async def start(self, slot: Slot, call_s: float) -> bool:
        if slot.id in self.expired:
            return False
        self.started.append((slot.id, call_s))
        return True


async def test_release_hands_the_slot_back_once() -> None:
    limiter, tasks = Limiter(), TaskSet()
    first = Slot("s0", "d", 0.0)
    holder = SlotHolder(limiter, first, tasks)  # type: ignore[arg-type]
    assert holder.held
    await holder.release()
    await holder.release()  # nothing left: no second release
    assert limiter.released == [first] and not holder.held
    assert repr(holder) == "<SlotHolder held=False>"


async def test_take_empties_before_any_await() -> None:
    holder = SlotHolder(Limiter(), Slot("s0", "d", 0.0), TaskSet())  # type: ignore[arg-type]
    slot = holder.take()
    assert slot is not None and not holder.held and holder.take() is None


async def test_acquire_keeps_a_held_slot_and_fails_on_stop() -> None:
    limiter = Limiter()
    holder = SlotHolder(limiter, None, TaskSet())  # type: ignore[arg-type]
    stop = asyncio.Event()
    assert await holder.acquire(stop) and await holder.acquire(stop)
    assert limiter.acquired == 1  # the second call kept the slot it held
    await holder.release()
    stop.set()
    assert not await holder.acquire(stop) and not holder.held


async def test_start_covers_the_call_and_replaces_an_expired_lease() -> None:
    limiter = Limiter()
    limiter.expired = {"s0"}
    holder = SlotHolder(limiter, Slot("s0", "d", 0.0), TaskSet())  # type: ignore[arg-type]
    await holder.start(120.0)  # s0 expired while this process stalled: a fresh slot first
    assert limiter.started == [("s1", 120.0)] and limiter.acquired == 1
    await holder.release()
    assert [s.id for s in limiter.released] == ["s1"]


async def test_a_release_survives_the_cancellation_of_its_caller() -> None:
    gate = asyncio.Event()
    released: list[Slot] = []

    class Slow(Limiter):
        async def release(self, slot: Slot) -> None:
            await gate.wait()
            released.append(slot)

    tasks = TaskSet()
    holder = SlotHolder(Slow(), Slot("s0", "d", 0.0), tasks)  # type: ignore[arg-type]
    caller = asyncio.ensure_future(holder.release())
    await asyncio.sleep(0)
    caller.cancel()
    gate.set()
    await tasks.drain()
    assert [s.id for s in released] == ["s0"] and not holder.held

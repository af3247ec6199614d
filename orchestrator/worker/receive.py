"""A lane's receive: one message with the slot it leased, then as many as wait and fit.

The lane leases one throttle slot, then blocks for one message (an idle lane holds one
slot, so it never keeps the global limit from another worker). Once a message came, the
lane leases up to `receive_batch - 1` more slots in one script (`Throttle.acquire_more`:
as many as the limit leaves room for, none while the breaker is not closed: half-open,
one message is the probe) and takes as many messages as are already waiting in one read,
giving back the slots the queue had none for. Under load a lane thus pays one lease and
one read for many messages instead of one each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from orchestrator.core.errors import QueueUnavailable
from orchestrator.queues.base import Delivery, Queue
from orchestrator.throttle.slots import Slot
from orchestrator.worker.protocols import SlotLimiter

log = structlog.get_logger(__name__)


async def first(queue: Queue, stop: asyncio.Event, timeout_s: float) -> list[Delivery]:
    """One message, or [] on timeout or stop (a stop interrupts the blocking read)."""
    receiver = asyncio.ensure_future(queue.receive(1, timeout_s))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not receiver.done():
            # entries the server handed out meanwhile stay pending and are reclaimed
            receiver.cancel()
        await asyncio.gather(stopper, receiver, return_exceptions=True)
    if receiver.cancelled():
        return []
    return receiver.result()


async def more_slots(throttle: SlotLimiter, batch: int, closed: bool) -> list[Slot]:
    """Slots beyond the first, up to `batch` in all, as the limit allows; none unless the
    breaker is `closed`."""
    if batch <= 1 or not closed:
        return []
    return await throttle.acquire_more(batch - 1)


async def waiting(queue: Queue, count: int, deployment: str) -> list[Delivery]:
    """Up to `count` messages already waiting; none on a queue error (the messages taken
    before are handled, the extra slots given back)."""
    if count <= 0:
        return []
    try:
        return await queue.receive(count, 0.0)
    except QueueUnavailable as exc:
        log.warning("queue_receive_failed", deployment=deployment, error=str(exc))
        return []


async def release(throttle: SlotLimiter, slots: Sequence[Slot]) -> None:
    """Hand `slots` back."""
    for slot in slots:
        await throttle.release(slot)

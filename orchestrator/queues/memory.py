"""In-memory twin of the queue backends, for tests and single-process runs.

Models what the worker has to survive: a received message stays owned until it is
acknowledged, and an un-acked delivery comes back (to any receiver, with its
delivery count raised) once it has been out for `visibility_s`, as a crashed
consumer's entries do after XAUTOCLAIM's idle timeout. Messages are stored as JSON
so a test sees the same serialisation a real backend applies.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from orchestrator.core.schemas import QueuedRequest
from orchestrator.queues import dead_letter
from orchestrator.queues.base import Delivery, read_delivery

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Entry:
    payload: str
    deliveries: int = 0
    visible_at: float = 0.0
    """Clock time from which the entry may be delivered (again)."""


class InMemoryQueue:
    """A `Queue` held in process memory with visibility-timeout redelivery."""

    def __init__(
        self,
        deployment: str = "default",
        *,
        visibility_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.deployment = deployment
        self.visibility_s = visibility_s
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self.dead_letters: list[tuple[QueuedRequest | None, str]] = []
        """(message, reason) of every dead-lettered delivery, oldest first (None: unreadable)."""

    async def put(self, message: QueuedRequest) -> None:
        """Append a message; stored as JSON like the real backends."""
        token = str(next(self._ids))
        self._entries[token] = _Entry(payload=message.model_dump_json())
        self._changed.set()

    async def receive(self, max_count: int, timeout_s: float) -> list[Delivery]:
        """Take up to `max_count` visible messages, waiting up to `timeout_s` for the first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            self._changed.clear()
            taken = self._take(max_count)
            if taken:
                return taken
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            wait = remaining
            soonest = self._next_visible()
            if soonest is not None:
                wait = min(wait, max(0.0, soonest - self._clock()))
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=wait)
            except TimeoutError:
                continue

    async def ack(self, delivery: Delivery) -> None:
        """Forget the message for good; acking twice or after redelivery is harmless."""
        self._entries.pop(delivery.token, None)

    async def release(self, delivery: Delivery) -> None:
        """Make the entry visible again now; its next delivery counts one more."""
        entry = self._entries.get(delivery.token)
        if entry is not None:
            entry.visible_at = self._clock()
            self._changed.set()

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Record the message with its reason in `dead_letters`, then ack it."""
        if delivery.token in self._entries:
            self.dead_letters.append((delivery.message, reason))
            dead_letter.logged(self.deployment, delivery, reason)
        await self.ack(delivery)

    async def depth(self) -> int:
        """Messages waiting or in flight."""
        return len(self._entries)

    async def close(self) -> None:
        """Nothing to release; un-acked deliveries stay redeliverable."""

    def in_flight(self) -> int:
        """Deliveries handed out and not yet acknowledged nor visible again."""
        now = self._clock()
        return sum(1 for e in self._entries.values() if e.deliveries and e.visible_at > now)

    def _take(self, max_count: int) -> list[Delivery]:
        now = self._clock()
        out: list[Delivery] = []
        for token, entry in self._entries.items():
            if len(out) >= max_count:
                break
            if entry.visible_at > now:
                continue
            entry.deliveries += 1
            entry.visible_at = now + self.visibility_s
            delivery = read_delivery(entry.payload, token, entry.deliveries, self.deployment)
            if delivery is None:
                self.dead_letters.append((None, "unreadable message without a request id"))
                del self._entries[token]
                break  # the dict changed: the next receive goes on
            out.append(delivery)
        return out

    def _next_visible(self) -> float | None:
        return min((e.visible_at for e in self._entries.values()), default=None)

    def __repr__(self) -> str:
        return (
            f"<InMemoryQueue deployment={self.deployment} depth={len(self._entries)} "
            f"in_flight={self.in_flight()} dead_letters={len(self.dead_letters)}>"
        )

"""Queued classes: within one tenant, `low` work is served before `batch` work.

Queued requests, background responses and waiting calls are `low`; Batch API lines are
`batch` (`QueuedRequest.work_class`: a message with a `batch_id`). Each class has its own
inner queue (Redis: its own stream, `keys.tenant_queue(d, tenant, work_class)`; Event Hubs:
its own hub), so a waiting call never lands behind a 100,000-line batch file. A receive
takes `low` first and `batch` only when `low` has nothing; the fair share across tenants
(`orchestrator.queues.fair`) is unchanged: it picks the tenant, this picks the class, so a
tenant's share is spent on its own `low` work first.

While both are empty a receive blocks on `low` in slices of `slice_s` and looks at `batch`
between them, so a batch put while the worker waits is taken within one slice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

from orchestrator.core.schemas import WORK_CLASSES, QueuedRequest, WorkClass
from orchestrator.queues.base import BulkPut, Delivery, Queue


@runtime_checkable
class ClassDepth(Protocol):
    """A queue that can count its messages per queued class."""

    async def depth_by_class(self) -> dict[WorkClass, int]:
        """Messages waiting or in flight, per class."""


async def depth_by_class(queue: Queue) -> dict[WorkClass, int]:
    """`queue`'s depth per class (a queue with no classes holds `low` work only)."""
    if isinstance(queue, ClassDepth):
        return await queue.depth_by_class()
    return {"low": await queue.depth(), "batch": 0}


SEP = "~"
"""Between the class and the inner queue's token in a delivery token."""


class ClassedQueue:
    """A `Queue` over one inner queue per work class, `low` served before `batch`."""

    def __init__(self, inner: Callable[[WorkClass], Queue], *, slice_s: float = 0.5) -> None:
        self._make_inner = inner
        self._inner: dict[WorkClass, Queue] = {}
        self._slice_s = slice_s

    def inner(self, work_class: WorkClass) -> Queue:
        """The class's own queue (made on first use)."""
        queue = self._inner.get(work_class)
        if queue is None:
            queue = self._inner[work_class] = self._make_inner(work_class)
        return queue

    async def put(self, message: QueuedRequest) -> None:
        """Put on the message's class queue; durable when it returns."""
        await self.inner(message.work_class).put(message)

    async def put_many(self, messages: Sequence[QueuedRequest]) -> None:
        """`put` them, per class in one go when its queue can."""
        by_class: dict[WorkClass, list[QueuedRequest]] = {}
        for message in messages:
            by_class.setdefault(message.work_class, []).append(message)
        for work_class, group in by_class.items():
            inner = self.inner(work_class)
            if isinstance(inner, BulkPut):
                await inner.put_many(group)
            else:
                for message in group:
                    await inner.put(message)

    async def receive(self, max_count: int, timeout_s: float) -> list[Delivery]:
        """`low` messages if any, else `batch` ones, waiting up to `timeout_s` for either."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        while True:
            for work_class in WORK_CLASSES:
                got = await self.inner(work_class).receive(max_count, 0.0)
                if got:
                    return self._wrap(work_class, got)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            low = WORK_CLASSES[0]
            got = await self.inner(low).receive(max_count, min(remaining, self._slice_s))
            if got:
                return self._wrap(low, got)

    async def ack(self, delivery: Delivery) -> None:
        """Ack on the delivery's class queue. Idempotent."""
        work_class, inner = self._unwrap(delivery)
        await self.inner(work_class).ack(inner)

    async def release(self, delivery: Delivery) -> None:
        """Release on the delivery's class queue."""
        work_class, inner = self._unwrap(delivery)
        await self.inner(work_class).release(inner)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Dead-letter through the delivery's class queue (the deployment's one store)."""
        work_class, inner = self._unwrap(delivery)
        await self.inner(work_class).dead_letter(inner, reason)

    async def depth(self) -> int:
        """Messages waiting or in flight, both classes."""
        return sum((await self.depth_by_class()).values())

    async def depth_by_class(self) -> dict[WorkClass, int]:
        """Messages waiting or in flight, per class."""
        return {c: await self.inner(c).depth() for c in WORK_CLASSES}

    async def close(self) -> None:
        """Close both class queues."""
        for queue in self._inner.values():
            await queue.close()

    @staticmethod
    def _wrap(work_class: WorkClass, deliveries: list[Delivery]) -> list[Delivery]:
        return [replace(d, token=f"{work_class}{SEP}{d.token}") for d in deliveries]

    @staticmethod
    def _unwrap(delivery: Delivery) -> tuple[WorkClass, Delivery]:
        raw, _, token = delivery.token.partition(SEP)
        work_class: WorkClass = "batch" if raw == "batch" else "low"
        return work_class, replace(delivery, token=token)

    def __repr__(self) -> str:
        return f"<ClassedQueue classes={sorted(self._inner)} slice_s={self._slice_s}>"

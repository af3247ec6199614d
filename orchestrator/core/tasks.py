"""One set of background tasks: referenced until done, shielded on request, drained at exit.

asyncio keeps only a weak reference to a task, so a fire-and-forget task must be held
somewhere until it ends (the `asyncio.create_task` documentation). Every component that
starts work it does not await (token events, ledger writes, result bookkeeping, batch
runs) holds it in a `TaskSet`, and its owner awaits `drain` (or `cancel`) at shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

_T = TypeVar("_T")


class TaskSet:
    """Tasks kept referenced until they finish."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """Start `work` in the background; the task is held until it ends."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shielded(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Run `work` to completion even if the caller is cancelled (held for `drain`)."""
        return await asyncio.shield(self.spawn(work))

    async def drain(self) -> None:
        """Wait until every task (also those started meanwhile) has ended."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def drain_within(self, seconds: float) -> int:
        """`drain` for at most `seconds`, then `cancel` what is left; how many were cut."""
        try:
            async with asyncio.timeout(seconds):
                await self.drain()
        except TimeoutError:
            left = len(self._tasks)
            await self.cancel()
            return left
        return 0

    async def cancel(self) -> None:
        """Cancel every task and wait for them to end."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"<TaskSet pending={len(self._tasks)}>"

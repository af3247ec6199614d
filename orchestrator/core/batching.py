"""Group commit: writes that arrive while one is in flight go to Redis together, next.

A hot path that writes to Redis once per event (a token event, a fair-share charge, a
usage record) pays one round trip per event and, when several processes' writes step one
shared state under a compare-and-set, a conflict for each two that overlap. A `Batcher`
keeps, per key (a deployment, a tenant), at most one flush in flight: an item submitted
meanwhile waits for it to end and goes out with every other item that arrived in the
meantime, in arrival order, in the next flush. Nothing waits that would not have waited
anyway: with one item at a time each flush holds one item, exactly as without batching;
under load a flush holds what arrived during one round trip. `submit` returns once its
item's flush did (or raises what the flush raised), so a caller that awaited the write
before still knows it happened.

Within one key, flushes never overlap: a process never conflicts with itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

MAX_BATCH = 256
"""Most items of one flush (a longer backlog goes out in several, one after another)."""


class Batcher(Generic[K, T]):
    """Per key, one flush in flight; what arrives meanwhile goes out together next."""

    __slots__ = ("_flush", "_max_batch", "_pending", "_running")

    def __init__(
        self,
        flush: Callable[[K, Sequence[T]], Awaitable[None]],
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be positive")
        self._flush = flush
        self._max_batch = max_batch
        self._pending: dict[K, list[tuple[T, asyncio.Future[None]]]] = {}
        self._running: dict[K, asyncio.Task[None]] = {}

    async def submit(self, key: K, item: T) -> None:
        """Write `item` with its key's next flush; returns when that flush has ended.

        Raises what the flush raised. A caller cancelled while waiting does not take its
        item back: the flush writes it anyway.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append((item, done))
        if key not in self._running:
            self._running[key] = asyncio.create_task(self._drain(key), name=f"batch-{key}")
        await asyncio.shield(done)

    @property
    def waiting(self) -> int:
        """Items not yet handed to a flush."""
        return sum(len(items) for items in self._pending.values())

    async def _drain(self, key: K) -> None:
        try:
            while self._pending.get(key):
                queue = self._pending[key]
                batch, self._pending[key] = queue[: self._max_batch], queue[self._max_batch :]
                try:
                    await self._flush(key, [item for item, _ in batch])
                except Exception as exc:  # handed to every submitter of the batch
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                except BaseException:  # cancelled mid-flush (the loop is closing)
                    for _, done in batch:
                        done.cancel()
                    raise
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._running.pop(key, None)
            if not self._pending.get(key):
                self._pending.pop(key, None)
            else:  # cancelled with items left: they are cancelled rather than wait forever
                for _, done in self._pending.pop(key):
                    done.cancel()

    def __repr__(self) -> str:
        return f"<Batcher keys={len(self._running)} waiting={self.waiting}>"

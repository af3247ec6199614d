"""Group commit: one flush in flight per key, what arrives meanwhile goes out together."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from orchestrator.core.batching import Batcher


class Recorder:
    """A flush that records its batches and can be held open."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight: dict[str, int] = {}
        self.most_in_flight = 0

    async def flush(self, key: str, items: Sequence[int]) -> None:
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight[key])
        try:
            await self.gate.wait()
            if -1 in items:
                raise ValueError("bad item")
            self.batches.append((key, list(items)))
        finally:
            self.in_flight[key] -= 1


async def test_items_arriving_during_a_flush_go_together_in_order() -> None:
    rec = Recorder()
    batcher: Batcher[str, int] = Batcher(rec.flush)
    rec.gate.clear()
    first = asyncio.create_task(batcher.submit("d", 0))
    await asyncio.sleep(0)  # the first flush starts and waits on the gate
    rest = [asyncio.create_task(batcher.submit("d", i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    assert batcher.waiting == 5
    rec.gate.set()
    await asyncio.gather(first, *rest)
    assert rec.batches == [("d", [0]), ("d", [1, 2, 3, 4, 5])]
    assert rec.most_in_flight == 1
    assert batcher.waiting == 0


async def test_keys_flush_independently_and_batches_are_capped() -> None:
    rec = Recorder()
    batcher: Batcher[str, int] = Batcher(rec.flush, max_batch=2)
    await asyncio.gather(*(batcher.submit(k, i) for i in range(5) for k in ("a", "b")))
    for key in ("a", "b"):
        mine = [items for k, items in rec.batches if k == key]
        assert [i for items in mine for i in items] == [0, 1, 2, 3, 4]
        assert all(len(items) <= 2 for items in mine)


async def test_a_failed_flush_fails_its_own_submitters_only() -> None:
    rec = Recorder()
    batcher: Batcher[str, int] = Batcher(rec.flush)
    rec.gate.clear()
    first = asyncio.create_task(batcher.submit("d", 0))
    await asyncio.sleep(0)
    bad = [asyncio.create_task(batcher.submit("d", i)) for i in (-1, 7)]
    await asyncio.sleep(0)
    rec.gate.set()
    await first
    for task in bad:
        with pytest.raises(ValueError, match="bad item"):
            await task
    await batcher.submit("d", 8)  # the key keeps working
    assert rec.batches == [("d", [0]), ("d", [8])]


async def test_a_cancelled_submitter_still_has_its_item_written() -> None:
    rec = Recorder()
    batcher: Batcher[str, int] = Batcher(rec.flush)
    rec.gate.clear()
    task = asyncio.create_task(batcher.submit("d", 1))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rec.gate.set()
    await batcher.submit("d", 2)
    assert [i for _, items in rec.batches for i in items] == [1, 2]


def test_max_batch_must_be_positive() -> None:
    async def flush(key: str, items: Sequence[int]) -> None:
        return None

    with pytest.raises(ValueError, match="max_batch"):
        Batcher(flush, max_batch=0)


async def test_a_flush_cancelled_midway_cancels_its_submitters() -> None:
    rec = Recorder()
    batcher: Batcher[str, int] = Batcher(rec.flush)
    rec.gate.clear()
    first = asyncio.create_task(batcher.submit("d", 1))
    await asyncio.sleep(0)
    second = asyncio.create_task(batcher.submit("d", 2))
    await asyncio.sleep(0)
    for task in asyncio.all_tasks():
        if task.get_name() == "batch-d":
            task.cancel()
    for waiting in (first, second):
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert rec.batches == [] and batcher.waiting == 0

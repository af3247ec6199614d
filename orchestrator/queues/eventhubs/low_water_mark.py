"""The checkpoint low-water mark of one Event Hubs partition, as a state machine.

Work on a partition's events completes out of order (the worker runs them
concurrently), but an Event Hubs checkpoint is a single offset: everything up to
it counts as done. So a checkpoint may only move to the newest event whose
predecessors are all acknowledged. `LowWaterMark` tracks received events in
partition order and, on each ack, says how far that is (DESIGN.md §4). It holds
no clock and does no I/O; the queue calls the SDK's `update_checkpoint`.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class LowWaterMark(Generic[T]):
    """Events of one partition in receive order; says how far a checkpoint may go."""

    __slots__ = ("_done", "_items", "_order")

    def __init__(self) -> None:
        self._order: deque[str] = deque()
        self._items: dict[str, T] = {}
        self._done: set[str] = set()

    def track(self, key: str, item: T) -> None:
        """Record a received event (keys arrive in partition order)."""
        if key not in self._items:
            self._order.append(key)
        self._items[key] = item

    def ack(self, key: str) -> T | None:
        """Mark `key` done; return the newest event the checkpoint may now move to, if any."""
        if key not in self._items:
            return None
        self._done.add(key)
        advanced: T | None = None
        while self._order and self._order[0] in self._done:
            head = self._order.popleft()
            self._done.discard(head)
            advanced = self._items.pop(head)
        return advanced

    def holds(self, key: str) -> bool:
        """True while `key` is tracked and not yet acknowledged."""
        return key in self._items and key not in self._done

    def __len__(self) -> int:
        return len(self._order)

    def __repr__(self) -> str:
        head = self._order[0] if self._order else None
        return f"<LowWaterMark tracked={len(self._order)} done={len(self._done)} head={head}>"

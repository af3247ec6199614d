"""The queue contract: how low-priority requests travel from ingress to worker.

One queue per deployment, so a paused deployment never blocks another. Delivery
is at-least-once: a message stays owned by the receiving consumer until it is
acknowledged; if that consumer dies, the message is delivered again (Redis
Streams: XAUTOCLAIM after the claim timeout; Event Hubs: from the last
checkpoint). Exactly-once *results* are the worker's job (idempotent completion
by request id), not the queue's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from orchestrator.core.schemas import QueuedRequest


@dataclass(frozen=True, slots=True)
class Delivery:
    """One received message and what the backend needs to acknowledge it."""

    message: QueuedRequest
    token: str
    """Backend handle: a stream entry id, or `partition:offset` for Event Hubs."""
    delivery_count: int = 1
    """How many times this message has been delivered (1 on first delivery)."""


class Queue(Protocol):
    """A durable per-deployment queue of `QueuedRequest`s."""

    async def put(self, message: QueuedRequest) -> None:
        """Append a message; it is durable when this returns.

        Raises QueueUnavailable when the backend cannot take it (nothing is stored).
        """

    async def receive(self, max_count: int, timeout_s: float) -> list[Delivery]:
        """Take up to `max_count` messages, waiting up to `timeout_s` for the first.

        Returns [] on timeout. A received message is owned by this consumer until
        `ack`; unacknowledged messages of a dead consumer are delivered again.
        """

    async def ack(self, delivery: Delivery) -> None:
        """Mark a delivery done, after its result was written. Idempotent.

        Ordered-offset backends (Event Hubs) checkpoint only up to the lowest
        offset whose predecessors are all acknowledged.
        """

    async def release(self, delivery: Delivery) -> None:
        """Give an unfinished delivery back for immediate redelivery (to any consumer).

        For a worker that gave up on a message without a result (its result write
        failed, the dispatch raised, it is shutting down): the message is delivered
        again without waiting for this consumer to die, and the attempt counts
        (the next delivery's `delivery_count` is higher). Idempotent; releasing an
        acknowledged delivery does nothing. Raises QueueUnavailable when the backend
        cannot be reached: the message then comes back as a dead consumer's would.
        """

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a delivery to the dead-letter store with a reason, then ack it."""

    async def depth(self) -> int:
        """Messages waiting or in flight (best effort, for metrics and status)."""

    async def close(self) -> None:
        """Release connections; unacknowledged deliveries stay redeliverable."""

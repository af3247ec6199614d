"""The queue contract: how low-priority requests travel from ingress to worker.

One queue per deployment, so a paused deployment never blocks another. Delivery
is at-least-once: a message stays owned by the receiving consumer until it is
acknowledged; if that consumer dies, the message is delivered again (Redis
Streams: XAUTOCLAIM after the claim timeout; Event Hubs: from the last
checkpoint). Exactly-once *results* are the worker's job (idempotent completion
by request id), not the queue's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pydantic import ValidationError

from orchestrator.core import keys
from orchestrator.core.schemas import QueuedRequest

_LEADING_ID = re.compile(r'\s*\{\s*"id"\s*:\s*"((?:[^"\\]|\\.){1,200})"')


@dataclass(frozen=True, slots=True)
class Delivery:
    """One received message and what the backend needs to acknowledge it."""

    message: QueuedRequest
    token: str
    """Backend handle: a stream entry id, or `partition:offset` for Event Hubs."""
    delivery_count: int = 1
    """How many times this message has been delivered (1 on first delivery)."""
    unreadable: str | None = None
    """Why the stored message could not be read; `message` then holds only its id
    (the dispatcher answers it with a `failed` result and dead-letters it)."""
    payload: str | None = None
    """The stored text of an unreadable message, kept for the dead-letter store."""


def read_delivery(
    payload: str, token: str, delivery_count: int, deployment: str
) -> Delivery | None:
    """The delivery of a stored message, with the worker's own parser.

    A message that does not parse still yields a delivery when its request id can
    be recovered (`unreadable` set), so its requester gets a `failed` result rather
    than silence; None only when not even the id can be read.
    """
    try:
        message = QueuedRequest.model_validate_json(payload)
    except ValidationError as exc:
        reason = f"unreadable message: {exc.errors()[0]['msg']}"
    else:
        return Delivery(message=message, token=token, delivery_count=delivery_count)
    request_id = _request_id(payload)
    if request_id is None:
        return None
    placeholder = QueuedRequest(
        id=request_id,
        deployment=deployment,
        body={},
        reply_key=keys.reply(request_id),
        enqueued_at=0.0,
        deadline=0.0,
    )
    return Delivery(placeholder, token, delivery_count, unreadable=reason, payload=payload)


def _request_id(payload: str) -> str | None:
    """The `id` of a serialised QueuedRequest (its first field), without a full parse."""
    match = _LEADING_ID.match(payload)
    if match is None:
        return None
    try:
        value = json.loads(f'"{match.group(1)}"')
    except ValueError:
        return None
    return value if isinstance(value, str) and value else None


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


@runtime_checkable
class BulkPut(Protocol):
    """A queue that can put many messages in one round trip (batch expansion uses it)."""

    async def put_many(self, messages: Sequence[QueuedRequest]) -> None:
        """`put` every message, each with `put`'s guarantees; durable when this returns.

        Raises QueueUnavailable when the backend failed part-way (some may be stored;
        putting them again is safe for batch lines, which are put at most once).
        """

"""The dead-letter store: requests that failed for good, kept for `ptu dlq` (every backend).

Whatever the queue backend, a dead-lettered message goes to the Redis Stream
`keys.dead_letter(deployment)`, capped at about `MAXLEN` entries (oldest
trimmed first). Each entry holds the message JSON as it was received (also an
unparseable one, so nothing is lost), why it was parked, the backend's token of
the delivery, how often it was delivered, the consumer and the time.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from orchestrator.core import keys

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

MAXLEN = 100_000
MESSAGE_FIELD = "message"


def add(
    pipe: Pipeline,
    deployment: str,
    payload: str,
    *,
    reason: str,
    token: str,
    delivery_count: int,
    consumer: str,
    at: float,
) -> None:
    """Queue the XADD of one entry on `pipe`, so the caller can ack in the same transaction."""
    fields = {
        MESSAGE_FIELD: payload,
        "reason": reason,
        "entry_id": token,
        "delivery_count": str(delivery_count),
        "consumer": consumer,
        "dead_lettered_at": json.dumps(at),
    }
    pipe.xadd(
        keys.dead_letter(deployment),
        fields,  # type: ignore[arg-type]
        maxlen=MAXLEN,
        approximate=True,
    )

"""The dead-letter store: requests that failed for good, kept for an operator (every backend).

Every request that gets a `failed` or `expired` result (attempts used up, a non-retryable
answer, its deadline, too many deliveries, an unparseable message) is appended, whatever
the queue backend, to the Redis Stream `keys.dead_letter(deployment)`, capped at about
`MAXLEN` entries (oldest trimmed first), by `add` in the same transaction that
acknowledges it, and logged by `logged` (the same fields for every backend). Each entry
holds the message JSON as it was received (also an unparseable one, so nothing is lost),
why it was parked, the backend's token of the delivery, how often it was delivered, the
consumer and the time. The stream outlives every process, so its length is the
dead-letter depth `ptu status` and the metrics show; `DeadLetterStore` lists, shows,
replays and purges it (`ptu dlq`).

Replay (`ptu dlq replay`) never re-opens the old request: the old id keeps its one
`failed` result. It queues a *new* request, id `<old id>.replay-<entry id>`, with a
fresh attempt budget and deadline, the same body, tenant and reply key, and
`replay_of` = the old id (also in its result document). The requester therefore sees
at most one result per id; on the shared reply key a second document arrives, for the
new id, linked to the old one. The new id is derived from the dead-letter entry, so
replaying one entry twice (or a crash between queueing and removing the entry)
cannot produce two new results: the second registration and put are answered by the
exactly-once completion of that same id. A replayed request of a batch is answered on
its reply key only; the batch's output file is not rewritten.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import redis.asyncio as aioredis
import structlog
from pydantic import ValidationError

from orchestrator.core import keys, redis_replies
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.errors import PTUError
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import QueuedRequest

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

    from orchestrator.queues.base import Delivery, Queue

log = structlog.get_logger(__name__)

MAXLEN = 100_000
MESSAGE_FIELD = "message"
"""The entry field holding the message JSON (also the queue stream's field)."""


class Consumer(Protocol):
    """A queue backend's consumer, as its dead letters name it."""

    deployment: str
    consumer: str


def add(pipe: Pipeline, by: Consumer, payload: str, reason: str, token: str, count: int) -> None:
    """Queue the XADD of one entry parked by `by` (`count`: its deliveries so far) on `pipe`,
    so the caller can ack in the same transaction."""
    fields = {
        MESSAGE_FIELD: payload,
        "reason": reason,
        "entry_id": token,
        "delivery_count": str(count),
        "consumer": by.consumer,
        "dead_lettered_at": json.dumps(time.time()),
    }
    pipe.xadd(
        keys.dead_letter(by.deployment),
        fields,  # type: ignore[arg-type]
        maxlen=MAXLEN,
        approximate=True,
    )


def logged(deployment: str, delivery: Delivery, reason: str) -> None:
    """The one log line of a dead-lettered message, whichever backend parked it."""
    log.warning(
        "message_dead_lettered",
        deployment=deployment,
        request_id=delivery.message.id,
        reason=reason,
        delivery_count=delivery.delivery_count,
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of the store."""

    entry_id: str
    deployment: str
    reason: str
    dead_lettered_at: float | None
    delivery_count: int
    message: QueuedRequest | None
    raw: str
    """The stored message JSON (what `message` was parsed from; kept when unparseable)."""

    @property
    def request_id(self) -> str:
        """The dead-lettered request's id ('' when the message could not be parsed)."""
        return self.message.id if self.message is not None else ""

    def summary(self) -> dict[str, Any]:
        """The fields `ptu dlq list` shows."""
        return {
            "entry_id": self.entry_id,
            "deployment": self.deployment,
            "request_id": self.request_id,
            "reason": self.reason,
            "dead_lettered_at": self.dead_lettered_at,
            "delivery_count": self.delivery_count,
        }


def replay_id(request_id: str, entry_id: str) -> str:
    """The id of the request that replays dead-letter entry `entry_id` of `request_id`."""
    return f"{request_id}.replay-{entry_id}"


class DeadLetterStore:
    """List, show, replay and purge one deployment's dead letters (Redis stream)."""

    def __init__(self, redis: aioredis.Redis, deployment: str) -> None:
        self.redis = redis
        self.deployment = deployment
        self.stream = keys.dead_letter(deployment)

    @redis_boundary("dead-letter store")
    async def depth(self) -> int:
        """Entries in the store."""
        return int(await self.redis.xlen(self.stream))

    @redis_boundary("dead-letter store")
    async def entries(self, count: int = 100) -> list[DeadLetter]:
        """The oldest `count` entries."""
        reply = await self.redis.xrange(self.stream, count=count)
        return [self._entry(entry_id, fields) for entry_id, fields in redis_replies.entries(reply)]

    @redis_boundary("dead-letter store")
    async def find(self, ident: str) -> DeadLetter | None:
        """The entry with this entry id or request id."""
        if "-" in ident and ident.replace("-", "").isdigit():
            reply = await self.redis.xrange(self.stream, min=ident, max=ident, count=1)
            found = redis_replies.entries(reply)
            return self._entry(*found[0]) if found else None
        for letter in await self.entries(count=100_000):
            if letter.request_id == ident:
                return letter
        return None

    @redis_boundary("dead-letter store")
    async def replay(
        self, letter: DeadLetter, queue: Queue, results: ResultStore, ttl_s: float
    ) -> QueuedRequest:
        """Queue a new request for `letter` (see the module docstring), then remove the entry."""
        old = letter.message
        if old is None:
            raise PTUError(f"dead letter {letter.entry_id}: the message cannot be parsed")
        now = time.time()
        new = old.model_copy(
            update={
                "id": replay_id(old.id, letter.entry_id),
                "enqueued_at": now,
                "deadline": now + ttl_s,
                "batch_id": None,
                "replay_of": old.id,
            }
        )
        state = await results.get(new.id)
        if state is None or state.result is None:
            await results.register(new)
            await queue.put(new)
        await self.redis.xdel(self.stream, letter.entry_id)
        return new

    @redis_boundary("dead-letter store")
    async def purge(self, entry_ids: list[str] | None = None) -> int:
        """Remove the given entries, or all of them; how many were removed."""
        if entry_ids is None:
            n = await self.depth()
            await self.redis.delete(self.stream)
            return n
        return int(await self.redis.xdel(self.stream, *entry_ids)) if entry_ids else 0

    def _entry(self, entry_id: str, fields: dict[str, str]) -> DeadLetter:
        raw = fields.get(MESSAGE_FIELD, "")
        try:
            message: QueuedRequest | None = QueuedRequest.model_validate_json(raw)
        except ValidationError:
            message = None
        try:
            at: float | None = float(json.loads(fields.get("dead_lettered_at", "null")))
        except (TypeError, ValueError):
            at = None
        return DeadLetter(
            entry_id=entry_id,
            deployment=self.deployment,
            reason=fields.get("reason", ""),
            dead_lettered_at=at,
            delivery_count=int(fields.get("delivery_count", "1") or 1),
            message=message,
            raw=raw,
        )

    def __repr__(self) -> str:
        return f"<DeadLetterStore stream={self.stream}>"

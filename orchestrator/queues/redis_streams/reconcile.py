"""The reconciler: requests whose record says `queued` but whose queue entry Redis lost.

A request's record lives in its own slot, its queue entry in its deployment's: on a
cluster, two masters. When the stream's master fails over to a replica that was behind,
the entry is gone and the record, on a healthy master, says `queued` (or `in_progress`)
until it expires, a day later: nothing would ever answer it. The same holds for an
ingress killed between the record and the put, and for a result lost after its entry was
acknowledged.

Every put leaves a marker in the stream's slot holding the entry's id
(`keys.queue_put`, written by the same script as the entry, so the two are lost
together). One process at a time (the lease `keys.RECONCILER`) walks the records every
`PTU_RECONCILE_INTERVAL_S` (SCAN on every master) and, for each unanswered one older than
`grace_s`, looks for its marker and its entry: no marker, or a marker whose entry left the
stream while the request has no result, is a lost request. It is sealed with its lost
result (`core/losses`: 410 `request_lost`, logged, counted), never re-run: the record
does not hold the request's body. The seal never overrides a result, so a worker that
answers the request meanwhile wins, and a race costs nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from orchestrator.core import keys
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.losses import Losses, lost_document
from orchestrator.core.redis_replies import text
from orchestrator.core.runtime import every

log = structlog.get_logger(__name__)

GRACE_S = 30.0
"""A record younger than this may still be on its way into the queue (the put follows
the record, with retries and the wait for a replica): it is left alone."""


def reconcile_grace_s(interval_s: float) -> float:
    """The grace for an interval: `GRACE_S`, down to 10 s for a short interval (tests)."""
    return max(10.0, min(GRACE_S, 3 * interval_s))


SCAN_COUNT = 500
CHUNK = 200
"""Records looked at per pipelined round trip."""
_FIELDS = ("status", "tenant", "deployment", "batch_id", "enqueued_at", "reply_key")

# KEYS: lease. ARGV: owner, ttl ms. 1 when held (taken or renewed) by owner.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


class Reconciler:
    """Finds and seals accepted requests whose queue entry is gone (see the docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        losses: Losses,
        *,
        interval_s: float,
        grace_s: float = GRACE_S,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
    ) -> None:
        self._redis = redis
        self._losses = losses
        self.interval_s = interval_s
        self.grace_s = grace_s
        self._clock = clock
        self.owner = owner or uuid.uuid4().hex[:12]
        self._lease = redis.register_script(_LEASE)
        self.sealed = 0

    async def run(self) -> None:
        """`pass_once` every `interval_s` while this process holds the lease; until cancelled."""
        if self.interval_s <= 0:
            return

        async def walk() -> None:
            await self.pass_once()

        await every(
            self.interval_s, walk, event="reconcile_failed",
            errors=(StoreUnavailable, RedisError, OSError),
        )  # fmt: skip

    async def pass_once(self) -> int:
        """One walk over the records if this process holds the lease; how many it sealed."""
        lease_ms = int(max(self.interval_s, 1.0) * 3000)
        if not await self._lease(keys=[keys.RECONCILER], args=[self.owner, lease_ms]):
            return 0
        sealed, chunk = 0, []
        async for key in self._redis.scan_iter(match=keys.REQUEST_RECORDS, count=SCAN_COUNT):
            chunk.append(text(key))
            if len(chunk) >= CHUNK:
                sealed += await self._check(chunk)
                chunk = []
        if chunk:
            sealed += await self._check(chunk)
        self.sealed += sealed
        if sealed:
            log.warning("reconcile_sealed_lost_requests", sealed=sealed)
        return sealed

    @redis_boundary("reconciler")
    async def _check(self, record_keys: Sequence[str]) -> int:
        now = self._clock()
        open_records = await self._unanswered(record_keys, now)
        if not open_records:
            return 0
        streams = [_stream(record) for _, record in open_records]
        async with self._redis.pipeline(transaction=False) as pipe:
            for (request_id, _), stream in zip(open_records, streams, strict=True):
                pipe.get(keys.queue_put(stream, request_id))
            markers = [None if m is None else text(m) for m in await pipe.execute()]
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, marker in zip(streams, markers, strict=True):
                if marker is not None and "-" in marker:
                    pipe.xrange(stream, marker, marker, count=1)
                else:
                    pipe.exists(stream)  # a placeholder: the marker alone decides
            entries = await pipe.execute()
        sealed = 0
        for (request_id, record), marker, entry in zip(open_records, markers, entries, strict=True):
            if marker is not None and (entry or "-" not in marker):
                continue  # still queued, or put before markers held the entry id
            doc = lost_document(
                request_id, record["tenant"] or "", found="reconciler", now=now,
                enqueued_at=float(record["enqueued_at"] or now),
                deployment=record["deployment"] or "", batch_id=record["batch_id"] or None,
            )  # fmt: skip
            result = await self._losses.seal(doc, "reconciler", record["reply_key"] or None)
            sealed += result is doc
        return sealed

    async def _unanswered(
        self, record_keys: Sequence[str], now: float
    ) -> list[tuple[str, dict[str, str | None]]]:
        """(request id, record) of the records without a result, older than the grace, of a
        request that was put on a queue (a high-priority batch's lines run in the ingress)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in record_keys:
                pipe.hmget(key, list(_FIELDS))
                pipe.exists(keys.result(keys.hash_tag(key)))
            replies = await pipe.execute()
        found = []
        for key, values, has_result in zip(record_keys, replies[::2], replies[1::2], strict=True):
            record = dict(
                zip(_FIELDS, (None if v is None else text(v) for v in values), strict=True)
            )
            if has_result or record["status"] not in ("queued", "in_progress"):
                continue
            if not record["tenant"] or not record["deployment"]:
                continue  # not a record a put follows
            if now - float(record["enqueued_at"] or now) < self.grace_s:
                continue
            found.append((keys.hash_tag(key), record))
        batches = sorted({r["batch_id"] for _, r in found if r["batch_id"]})
        if not batches:
            return found
        async with self._redis.pipeline(transaction=False) as pipe:
            for batch_id in batches:
                pipe.hget(keys.batch(batch_id), "priority")
            priority = {
                b: text(p) if p else None
                for b, p in zip(batches, await pipe.execute(), strict=True)
            }
        return [(i, r) for i, r in found if not r["batch_id"] or priority[r["batch_id"]] == "low"]

    def __repr__(self) -> str:
        return f"<Reconciler owner={self.owner} interval_s={self.interval_s} sealed={self.sealed}>"


def _stream(record: dict[str, str | None]) -> str:
    """The stream a record's request was put on (`keys.tenant_queue`, its work class)."""
    work_class = "batch" if record["batch_id"] else "low"
    return keys.tenant_queue(record["deployment"] or "", record["tenant"] or "", work_class)

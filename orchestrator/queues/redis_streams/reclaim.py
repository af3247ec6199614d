"""Moving entries whose consumer is gone: take-over by liveness, XAUTOCLAIM as a safety net.

Liveness, not idle time, decides when a consumer's entries move. Every receive (at most
once a second, and every `liveness_s / 4`; at once again after a take-over that filled
the receive, so a dead consumer's backlog moves at receive speed) looks at the group's
pending summary; the entries of a consumer whose liveness key is gone are taken over by
one Lua script that re-checks the owner of each entry, so two live consumers never both
take one entry. Released entries belong to the pseudo consumer `RELEASED`, which is never
alive. XAUTOCLAIM after `claim_idle_s` catches entries whose owner still looks alive but
stopped refreshing them, on its own schedule (at most every `scan_s`, not before every
read); its cursor walks the whole pending list over successive calls.
A consumer starting under a name that still has pending entries (a restart under the
same name) releases them before its first receive (`release_inherited`), so they move
within the liveness time too.
"""

from __future__ import annotations

import math
from typing import Any

import structlog

from orchestrator.core import keys, redis_replies
from orchestrator.queues.redis_streams.liveness import StreamConsumer

log = structlog.get_logger(__name__)

RELEASED = "ptu-released"
"""Pseudo consumer owning released entries until a live consumer takes them over."""

# KEYS: stream, the owner's liveness key. ARGV: group, owner, taker, max count.
# Takes over up to `max count` entries of `owner` unless it is alive; each entry's
# owner is re-checked inside the script, so concurrent takers never share an entry.
# Returns {entries as XCLAIM returns them, their ids, delivery counts after the claim}.
_TAKE_OVER = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {{}, {}, {}} end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[4]), ARGV[2])
if #pending == 0 then return {{}, {}, {}} end
local ids, counts = {}, {}
for i, p in ipairs(pending) do
  ids[i] = p[1]
  counts[i] = p[4] + 1
end
local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, unpack(ids))
return {claimed, ids, counts}
"""

Claimed = tuple[list[redis_replies.Entry], dict[str, int]]
"""Entries taken, and their delivery counts by entry id."""


class Reclaim:
    """Finds entries of dead (or released, or stalled) consumers for one consumer."""

    def __init__(self, consumer: StreamConsumer, *, liveness_s: float, claim_idle_s: float) -> None:
        redis = self._redis = consumer.redis
        self._stream = consumer.stream
        self._group = consumer.group
        self._consumer = consumer.name
        self._deployment = consumer.deployment
        self._liveness_s = liveness_s
        self._claim_idle_s = claim_idle_s
        self._take_over = redis.register_script(_TAKE_OVER)
        self._last_scan = -math.inf
        self._claim_cursor = "0-0"
        self._last_claim = -math.inf

    @property
    def scan_s(self) -> float:
        """How often to look for dead consumers' (and released) entries."""
        return min(self._liveness_s / 4, 1.0)

    def soon(self) -> None:
        """Look again on the next receive (an entry was just released)."""
        self._last_scan = -math.inf

    async def take_over_dead(self, max_count: int, now: float) -> Claimed:
        """Entries of consumers that are not alive (or released ones), at most every `scan_s`."""
        if now - self._last_scan < self.scan_s:
            return [], {}
        self._last_scan = now
        summary = await self._redis.xpending(self._stream, self._group)
        owners = [
            redis_replies.text(c["name"])
            for c in summary.get("consumers") or []
            if int(c["pending"]) > 0 and redis_replies.text(c["name"]) != self._consumer
        ]
        for owner in owners:
            alive = keys.consumer_alive(self._deployment, owner)
            reply: Any = await self._take_over(
                keys=[self._stream, alive], args=[self._group, owner, self._consumer, max_count]
            )
            claimed = redis_replies.script_entries(reply[0])
            if claimed:
                ids = (redis_replies.text(i) for i in reply[1])
                counts = dict(zip(ids, (int(c) for c in reply[2]), strict=True))
                log.info(
                    "queue_entries_taken_over", stream=self._stream, owner=owner,
                    count=len(claimed),
                )  # fmt: skip
                if len(claimed) >= max_count:
                    # the owner may hold more: look again on the next receive instead of
                    # taking one entry per scan interval
                    self.soon()
                return claimed, counts
        return [], {}

    async def release_inherited(self, page: int = 500) -> int:
        """Hand every entry pending under this consumer's name to `RELEASED`; how many.

        Called once, before this process receives anything: entries pending under its
        name then belong to an earlier process of the same name (a container restarted in
        its pod keeps hostname and pid), whose liveness key this process renews at once,
        so nothing else would move them before `claim_idle_s`. Released, any consumer's
        next receive takes them over (their delivery count rises, as after a crash).
        """
        moved = 0
        while True:
            pending = await self._redis.xpending_range(
                self._stream, self._group, min="-", max="+", count=page,
                consumername=self._consumer,
            )  # fmt: skip
            ids: list[Any] = [redis_replies.text(p["message_id"]) for p in pending]
            if not ids:
                break
            await self._redis.xclaim(
                self._stream, self._group, RELEASED, min_idle_time=0, message_ids=ids,
                justid=True,
            )  # fmt: skip
            moved += len(ids)
        if moved:
            log.info("queue_entries_inherited", stream=self._stream, count=moved)
            self.soon()
        return moved

    async def claim_idle(self, max_count: int, in_flight: int, now: float) -> Claimed:
        """XAUTOCLAIM entries idle for `claim_idle_s` (their owner stopped refreshing), at most
        every `scan_s` (an entry becomes claimable `claim_idle_s` after its last delivery, so
        looking before every read finds nothing new), and at once again after a full claim."""
        if now - self._last_claim < self.scan_s:
            return [], {}
        self._last_claim = now
        reply = await self._redis.xautoclaim(
            self._stream,
            self._group,
            self._consumer,
            min_idle_time=int(self._claim_idle_s * 1000),
            start_id=self._claim_cursor,
            count=max_count,
        )
        # continue the PEL scan where it stopped, so idle entries behind many live ones are
        # reached too; the server returns "0-0" when the scan has wrapped around
        self._claim_cursor = redis_replies.text(reply[0])
        claimed = redis_replies.entries(reply[1])
        if not claimed:
            return [], {}
        if len(claimed) >= max_count:
            self._last_claim = -math.inf  # more may be idle: look again on the next receive
        pending = await self._redis.xpending_range(
            self._stream,
            self._group,
            min=claimed[0][0],
            max=claimed[-1][0],
            count=len(claimed) + in_flight + 10,
            consumername=self._consumer,
        )
        counts = {redis_replies.text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        log.info("queue_entries_claimed", stream=self._stream, count=len(claimed))
        return claimed, counts

    def __repr__(self) -> str:
        return f"<Reclaim stream={self._stream} cursor={self._claim_cursor}>"

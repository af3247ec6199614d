"""A Redis-backed Event Hubs `CheckpointStore` (aio), the Blob store's counterpart.

Ownership and checkpoints live in two hashes per (namespace, event hub, consumer
group), one field per partition. `claim_ownership` is a compare-and-swap on the
etag done in one Lua script: a claim that names an etag wins only if the stored
etag still matches, a claim without one wins only if the partition has no
ownership yet; losers are left out of the result, as the Blob store does. The
claim time comes from the Redis server clock, so hosts with skewed clocks agree
on when an ownership expires.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from azure.eventhub.aio import CheckpointStore

from orchestrator.core import keys
from orchestrator.core.redis_replies import text

# KEYS[1] ownership hash. ARGV: groups of (partition_id, expected etag or "", new etag, owner_id)
# Returns {claim time as string, won partition ids...}
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {string.format('%.6f', now)}
for i = 1, #ARGV, 4 do
  local pid, expected, etag, owner = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local current = redis.call('HGET', KEYS[1], pid)
  local ok
  if expected == '' then
    ok = not current
  else
    ok = current and cjson.decode(current)['etag'] == expected
  end
  if ok then
    local value = cjson.encode({owner_id = owner, etag = etag, last_modified_time = out[1]})
    redis.call('HSET', KEYS[1], pid, value)
    table.insert(out, pid)
  end
end
return out
"""


class RedisCheckpointStore(CheckpointStore):
    """Partition ownership and checkpoints for `EventHubConsumerClient`, kept in Redis."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(_CLAIM)

    async def list_ownership(
        self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str, **kwargs: Any
    ) -> Iterable[dict[str, Any]]:
        """Every stored ownership of the consumer group, with etag and epoch-float time."""
        key = keys.eventhub_ownership(fully_qualified_namespace, eventhub_name, consumer_group)
        raw = await self.redis.hgetall(key)
        scope = _scope(fully_qualified_namespace, eventhub_name, consumer_group)
        out = []
        for pid, value in sorted(raw.items()):
            stored = json.loads(value)
            out.append(
                {
                    **scope,
                    "partition_id": text(pid),
                    "owner_id": stored["owner_id"],
                    "etag": stored["etag"],
                    "last_modified_time": float(stored["last_modified_time"]),
                }
            )
        return out

    async def claim_ownership(
        self, ownership_list: Iterable[dict[str, Any]], **kwargs: Any
    ) -> Iterable[dict[str, Any]]:
        """Compare-and-swap each ownership on its etag; return only the ones won."""
        by_key: dict[str, list[dict[str, Any]]] = {}
        for ownership in ownership_list:
            key = keys.eventhub_ownership(
                ownership["fully_qualified_namespace"],
                ownership["eventhub_name"],
                ownership["consumer_group"],
            )
            by_key.setdefault(key, []).append(ownership)
        won: list[dict[str, Any]] = []
        for key, group in by_key.items():
            args: list[str] = []
            etags: dict[str, str] = {}
            for ownership in group:
                etags[ownership["partition_id"]] = str(uuid.uuid4())
                args += [
                    ownership["partition_id"],
                    ownership.get("etag") or "",
                    etags[ownership["partition_id"]],
                    ownership.get("owner_id") or "",
                ]
            reply = await self._claim(keys=[key], args=args)
            claimed_at = float(text(reply[0]))
            winners = {text(pid) for pid in reply[1:]}
            for ownership in group:
                if ownership["partition_id"] in winners:
                    ownership["etag"] = etags[ownership["partition_id"]]
                    ownership["last_modified_time"] = claimed_at
                    won.append(ownership)
        return won

    async def update_checkpoint(self, checkpoint: dict[str, Any], **kwargs: Any) -> None:
        """Store the partition's checkpoint (offset as given, sequence number as int)."""
        key = keys.eventhub_checkpoints(
            checkpoint["fully_qualified_namespace"],
            checkpoint["eventhub_name"],
            checkpoint["consumer_group"],
        )
        value = {
            "offset": None if checkpoint.get("offset") is None else str(checkpoint["offset"]),
            "sequence_number": checkpoint.get("sequence_number"),
        }
        await self.redis.hset(key, checkpoint["partition_id"], json.dumps(value))

    async def list_checkpoints(
        self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str, **kwargs: Any
    ) -> Iterable[dict[str, Any]]:
        """Every stored checkpoint of the consumer group."""
        key = keys.eventhub_checkpoints(fully_qualified_namespace, eventhub_name, consumer_group)
        raw = await self.redis.hgetall(key)
        scope = _scope(fully_qualified_namespace, eventhub_name, consumer_group)
        return [
            {**scope, "partition_id": text(pid), **json.loads(value)}
            for pid, value in sorted(raw.items())
        ]

    def __repr__(self) -> str:
        return f"<RedisCheckpointStore redis={self.redis!r}>"


def _scope(namespace: str, eventhub: str, consumer_group: str) -> dict[str, Any]:
    return {
        "fully_qualified_namespace": namespace,
        "eventhub_name": eventhub,
        "consumer_group": consumer_group,
    }

"""make_queue picks the backend from settings and names a missing optional SDK."""

from __future__ import annotations

import sys

import pytest
import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.core.errors import MissingDependencyError
from orchestrator.core.settings import load_settings
from orchestrator.queues.factory import make_queue
from orchestrator.queues.fair import FairShareQueue
from orchestrator.queues.redis_streams import RedisStreamsQueue


async def test_redis_backend_is_default_in_fair_share_per_tenant() -> None:
    client = aioredis.Redis()  # never connected: construction does no I/O
    q = make_queue(load_settings(), "d1", client, "worker-1")
    assert isinstance(q, FairShareQueue)
    default, other = q.inner("default"), q.inner("team-a")
    assert isinstance(default, RedisStreamsQueue) and isinstance(other, RedisStreamsQueue)
    # the default tenant keeps the deployment's original stream
    assert (default.stream, default.consumer) == (keys.queue("d1"), "worker-1")
    assert other.stream == keys.tenant_queue("d1", "team-a") != default.stream
    assert other.dead_letter_stream == default.dead_letter_stream == keys.dead_letter("d1")
    # one deployment's per-tenant streams share its slot (their scripts touch the dlq)
    assert keys.same_slot(other.stream, default.stream, keys.dead_letter("d1"))
    await client.aclose()


async def test_eventhubs_without_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "azure.eventhub", None)
    client = aioredis.Redis()
    with pytest.raises(MissingDependencyError, match=r"azure-eventhub.*\[azure\]"):
        make_queue(load_settings(queue_backend="eventhubs"), "d1", client, "worker-1")
    await client.aclose()

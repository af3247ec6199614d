"""make_queue picks the backend from settings and names a missing optional SDK."""

from __future__ import annotations

import sys

import pytest
import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.core.errors import MissingDependencyError
from orchestrator.core.settings import load_settings
from orchestrator.queues.factory import make_queue
from orchestrator.queues.redis_streams import RedisStreamsQueue


async def test_redis_backend_is_default() -> None:
    client = aioredis.Redis()  # never connected: construction does no I/O
    q = make_queue(load_settings(), "d1", client, "worker-1")
    assert isinstance(q, RedisStreamsQueue)
    assert (q.stream, q.consumer) == (keys.queue("d1"), "worker-1")
    await client.aclose()


async def test_eventhubs_without_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "azure.eventhub", None)
    client = aioredis.Redis()
    with pytest.raises(MissingDependencyError, match=r"azure-eventhub.*\[azure\]"):
        make_queue(load_settings(queue_backend="eventhubs"), "d1", client, "worker-1")
    await client.aclose()

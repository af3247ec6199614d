"""make_queue picks the backend from settings and names a missing optional SDK."""

from __future__ import annotations

import sys

import pytest
import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.core.errors import MissingDependencyError
from orchestrator.core.settings import load_settings
from orchestrator.queues.classes import ClassedQueue
from orchestrator.queues.factory import make_queue
from orchestrator.queues.fair import FairShareQueue
from orchestrator.queues.redis_streams import RedisStreamsQueue


async def test_redis_backend_is_default_in_fair_share_per_tenant() -> None:
    client = aioredis.Redis()  # never connected: construction does no I/O
    q = make_queue(load_settings(), "d1", client, "worker-1")
    assert isinstance(q, FairShareQueue)
    tenants = q.inner("default"), q.inner("team-a")
    assert all(isinstance(t, ClassedQueue) for t in tenants)
    (default, default_batch), (other, other_batch) = (
        (t.inner("low"), t.inner("batch")) for t in tenants if isinstance(t, ClassedQueue)
    )
    assert isinstance(default, RedisStreamsQueue) and isinstance(other, RedisStreamsQueue)
    assert isinstance(default_batch, RedisStreamsQueue)
    assert isinstance(other_batch, RedisStreamsQueue)
    # the default tenant's low class keeps the deployment's original stream
    assert (default.stream, default.consumer) == (keys.queue("d1"), "worker-1")
    assert other.stream == keys.tenant_queue("d1", "team-a") != default.stream
    assert default_batch.stream == keys.tenant_queue("d1", "default", "batch")
    assert other_batch.stream == keys.tenant_queue("d1", "team-a", "batch")
    assert len({s.stream for s in (default, default_batch, other, other_batch)}) == 4
    assert other.dead_letter_stream == default.dead_letter_stream == keys.dead_letter("d1")
    assert default_batch.dead_letter_stream == keys.dead_letter("d1")
    # one deployment's streams share its slot (their scripts touch the dlq)
    assert keys.same_slot(
        other.stream, default.stream, default_batch.stream, other_batch.stream,
        keys.dead_letter("d1"),
    )  # fmt: skip
    await client.aclose()


async def test_eventhubs_without_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "azure.eventhub", None)
    client = aioredis.Redis()
    with pytest.raises(MissingDependencyError, match=r"azure-eventhub.*\[azure\]"):
        make_queue(load_settings(queue_backend="eventhubs"), "d1", client, "worker-1")
    await client.aclose()

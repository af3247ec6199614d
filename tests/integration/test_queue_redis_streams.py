"""Redis Streams specifics: socket timeouts, poison entries, liveness refresh, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from orchestrator.core import keys
from orchestrator.core.errors import QueueUnavailable
from orchestrator.core.serving import free_port
from orchestrator.queues.redis_streams import RedisStreamsQueue
from tests import redis_mode
from tests.integration.test_queue_contract import DEPLOYMENT, request


@pytest.fixture
async def short_timeout_client(
    redis_url: str, redis: aioredis.Redis
) -> AsyncIterator[aioredis.Redis]:
    """A client whose socket timeout (0.4 s) is far shorter than the waits below."""
    client = redis_mode.connect(redis_url, socket_timeout=0.4)
    try:
        yield client
    finally:
        await client.aclose()


async def test_receive_idles_longer_than_socket_timeout(
    short_timeout_client: aioredis.Redis,
) -> None:
    q = RedisStreamsQueue(short_timeout_client, DEPLOYMENT, "w1")
    assert await q.receive(5, timeout_s=1.5) == []  # 3x the socket timeout, no TimeoutError

    async def put_later() -> None:
        await asyncio.sleep(1.0)
        await q.put(request(1))

    putter = asyncio.create_task(put_later())
    got = await q.receive(5, timeout_s=5.0)
    await putter
    assert [d.message.id for d in got] == ["req-1"]
    await q.close()


async def test_messages_put_before_group_exists_are_consumed(redis: aioredis.Redis) -> None:
    producer = RedisStreamsQueue(redis, DEPLOYMENT, "ingress")
    await producer.put(request(1))
    assert not await redis.exists(keys.queue(DEPLOYMENT) + ":nothing")
    consumer = RedisStreamsQueue(redis, DEPLOYMENT, "w1")
    got = await consumer.receive(5, timeout_s=1.0)
    assert [d.message.id for d in got] == ["req-1"]


async def test_poison_entry_is_dead_lettered_not_raised(redis: aioredis.Redis) -> None:
    q = RedisStreamsQueue(redis, DEPLOYMENT, "w1")
    await q.put(request(1))
    await redis.xadd(keys.queue(DEPLOYMENT), {"message": "{not json"})
    await redis.xadd(keys.queue(DEPLOYMENT), {"other": "field"})
    await q.put(request(2))
    got = await q.receive(10, timeout_s=1.0)
    assert [d.message.id for d in got] == ["req-1", "req-2"]
    dead = await redis.xrange(keys.dead_letter(DEPLOYMENT))
    assert [f[b"message"] for _, f in dead] == [b"{not json", b""]
    assert all(f[b"reason"].startswith(b"unreadable message") for _, f in dead)  # no id to answer
    assert await q.depth() == 2  # the two good ones, in flight


async def test_live_consumer_keeps_its_slow_deliveries(redis: aioredis.Redis) -> None:
    slow = RedisStreamsQueue(redis, DEPLOYMENT, "w-slow", claim_idle_s=0.6)
    other = RedisStreamsQueue(redis, DEPLOYMENT, "w-other", claim_idle_s=0.6)
    await slow.put(request(1))
    [held] = await slow.receive(1, timeout_s=1.0)
    # the slow call outlives the claim timeout twice, but its consumer is alive
    assert await other.receive(1, timeout_s=1.5) == []
    assert "in_flight=1" in repr(slow)
    await slow.close()  # now it dies without acking
    got = await other.receive(1, timeout_s=3.0)
    assert [d.message.id for d in got] == ["req-1"]
    assert got[0].delivery_count == 2
    await other.ack(got[0])
    assert "in_flight=0" in repr(other)
    await other.close()
    del held


async def test_delivery_count_counts_every_claim(redis: aioredis.Redis) -> None:
    await RedisStreamsQueue(redis, DEPLOYMENT, "ingress").put(request(1))
    counts = []
    for n in range(3):
        q = RedisStreamsQueue(redis, DEPLOYMENT, f"w{n}", claim_idle_s=0.2)
        [d] = await q.receive(1, timeout_s=2.0)
        counts.append(d.delivery_count)
        await q.close()
    assert counts == [1, 2, 3]


async def test_survives_stream_deleted_under_it(redis: aioredis.Redis) -> None:
    q = RedisStreamsQueue(redis, DEPLOYMENT, "w1")
    assert await q.receive(1, timeout_s=0.05) == []
    await redis.flushdb()
    assert await q.receive(1, timeout_s=0.05) == []
    await q.put(request(3))
    got = await q.receive(1, timeout_s=1.0)
    assert [d.message.id for d in got] == ["req-3"]


async def test_redis_errors_become_queue_unavailable() -> None:
    dead = aioredis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    q = RedisStreamsQueue(dead, DEPLOYMENT, "w1")
    try:
        with pytest.raises(QueueUnavailable):
            await q.put(request(1))
        with pytest.raises(QueueUnavailable):
            await q.receive(1, timeout_s=0.1)
        with pytest.raises(QueueUnavailable):
            await q.depth()
    finally:
        await dead.aclose()


async def test_repr_is_live(redis: aioredis.Redis) -> None:
    q = RedisStreamsQueue(redis, DEPLOYMENT, "w9", claim_idle_s=5.0)
    await q.put(request(1))
    await q.put(request(2))
    got = await q.receive(2, timeout_s=1.0)
    assert repr(q) == (
        f"<RedisStreamsQueue stream={keys.queue(DEPLOYMENT)} group=ptu-workers "
        "consumer=w9 in_flight=2 claim_idle_s=5.0>"
    )
    await q.ack(got[0])
    assert "in_flight=1" in repr(q)
    await q.close()


async def test_dead_entry_behind_many_live_ones_is_reclaimed(redis: aioredis.Redis) -> None:
    live = RedisStreamsQueue(redis, DEPLOYMENT, "w-live", claim_idle_s=0.4)
    dead = RedisStreamsQueue(redis, DEPLOYMENT, "w-dead", claim_idle_s=0.4)
    other = RedisStreamsQueue(redis, DEPLOYMENT, "w-other", claim_idle_s=0.4)
    for i in range(30):
        await live.put(request(i))
    await live.put(request(99))
    held = await live.receive(30, timeout_s=1.0)  # kept fresh by a live consumer
    [lost] = await dead.receive(1, timeout_s=1.0)
    await dead.close()
    # XAUTOCLAIM COUNT 1 scans 10 PEL entries per call: the scan must resume, not restart
    got = await other.receive(1, timeout_s=5.0)
    assert [d.message.id for d in got] == [lost.message.id] == ["req-99"]
    assert len(held) == 30
    await live.close()
    await other.close()


async def test_a_dead_consumers_backlog_moves_at_receive_speed(redis: aioredis.Redis) -> None:
    producer = RedisStreamsQueue(redis, DEPLOYMENT, "ingress")
    for i in range(5):
        await producer.put(request(i))
    dead = RedisStreamsQueue(redis, DEPLOYMENT, "w-dead")
    held = await dead.receive(5, timeout_s=1.0)
    await dead.close()
    other = RedisStreamsQueue(redis, DEPLOYMENT, "w-other")
    # each receive is far shorter than the scan interval (1 s): a take-over that filled
    # the receive looks again at once rather than one entry per interval
    got = [await other.receive(1, timeout_s=0.05) for _ in range(5)]
    assert [[d.message.id for d in g] for g in got] == [[d.message.id] for d in held]
    assert {d.delivery_count for g in got for d in g} == {2}
    await other.close()


async def test_a_restart_under_the_same_name_moves_its_entries_at_once(
    redis: aioredis.Redis,
) -> None:
    producer = RedisStreamsQueue(redis, DEPLOYMENT, "ingress")
    for i in range(3):
        await producer.put(request(i))
    # the first process receives, then dies: its liveness key is still set
    first = RedisStreamsQueue(redis, DEPLOYMENT, "w-pod-0", claim_idle_s=60.0)
    held = await first.receive(3, timeout_s=1.0)
    await first._liveness.close()  # its loops end as with a SIGKILL ...
    await first._liveness._beat()  # ... and its key stays, as a dead process leaves it
    assert len(held) == 3
    # the restarted process, same name, gets them back long before claim_idle_s (60 s)
    again = RedisStreamsQueue(redis, DEPLOYMENT, "w-pod-0", claim_idle_s=60.0)
    got = await again.receive(3, timeout_s=1.0)
    assert sorted(d.message.id for d in got) == sorted(d.message.id for d in held)
    assert {d.delivery_count for d in got} == {2}
    for delivery in got:
        await again.ack(delivery)
    assert await redis.xlen(keys.queue(DEPLOYMENT)) == 0
    await again.close()

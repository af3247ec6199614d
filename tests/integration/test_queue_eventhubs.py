"""EventHubsQueue through the real EventHubConsumerClient.receive -> EventProcessor path.

The partition log is in memory behind the SDK's consumer seams (see
eventhubs_fakes); checkpoints, delivery counts and dead letters use
the real Redis server. The producer is a seam too: a fake `send_event`.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from azure.eventhub import EventData
from azure.eventhub.exceptions import ConnectError

from orchestrator.core import keys
from orchestrator.core.errors import ConfigError, QueueUnavailable
from orchestrator.core.settings import load_settings
from orchestrator.queues.base import Delivery
from orchestrator.queues.classes import ClassedQueue
from orchestrator.queues.eventhubs.checkpoint_redis import RedisCheckpointStore
from orchestrator.queues.eventhubs.queue import EventHubsQueue, HubClients
from orchestrator.queues.factory import make_queue
from orchestrator.queues.fair import FairShareQueue
from tests.integration.eventhubs_fakes import CG, HUB, NS, FakeConsumerClient, FakeHub
from tests.integration.test_queue_contract import request


class FakeProducer:
    """send_event into the fake hub, partition chosen by a hash of the partition key."""

    def __init__(self, hub: FakeHub, *, fail: bool = False) -> None:
        self.hub, self.fail = hub, fail
        self.keys: list[str | None] = []

    async def send_event(self, event: EventData, *, partition_key: str | None = None) -> None:
        if self.fail:
            raise ConnectError("connection refused")
        self.keys.append(partition_key)
        pid = str(zlib.crc32((partition_key or "").encode()) % len(self.hub.logs))
        self.hub.append(pid, event.body_as_str())

    async def close(self) -> None:
        return None


class Harness:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.hub = FakeHub(partitions=2)
        self.store = RedisCheckpointStore(redis)
        self.opened: list[EventHubsQueue] = []

    def queue(self, name: str = "w1", *, fail: bool = False) -> EventHubsQueue:
        clients = HubClients(
            FakeProducer(self.hub, fail=fail),  # type: ignore[arg-type]
            FakeConsumerClient(self.hub, self.store),  # type: ignore[arg-type]
            self.store,
            NS,
            CG,
        )
        q = EventHubsQueue(clients, self.redis, "d1", name)
        self.opened.append(q)
        return q

    async def checkpoints(self) -> dict[str, int]:
        listed = await self.store.list_checkpoints(NS, HUB, CG)
        return {c["partition_id"]: c["sequence_number"] for c in listed}


@pytest.fixture
async def harness(redis: aioredis.Redis) -> AsyncIterator[Harness]:
    h = Harness(redis)
    yield h
    for q in h.opened:
        await q.close()


async def receive_all(q: EventHubsQueue, n: int, timeout_s: float = 10.0) -> list[Delivery]:
    got: list[Delivery] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(got) < n and loop.time() < deadline:
        got += await q.receive(n - len(got), timeout_s=0.5)
    return got


async def test_put_receive_ack_checkpoints_each_partition(harness: Harness) -> None:
    q = harness.queue()
    sent = [request(i) for i in range(10)]
    for m in sent:
        await q.put(m)
    assert q.producer.keys == [m.id for m in sent]  # type: ignore[attr-defined]
    assert all(harness.hub.logs.values())  # request ids spread over both partitions
    got = await receive_all(q, 10)
    assert sorted(d.message.id for d in got) == sorted(m.id for m in sent)
    assert all(d.delivery_count == 1 for d in got)
    assert await q.depth() == 10
    for d in got:
        await q.ack(d)
    lengths = {pid: len(log) - 1 for pid, log in harness.hub.logs.items()}
    assert await harness.checkpoints() == lengths
    assert await q.depth() == 0
    assert await q.receive(5, timeout_s=0.1) == []


async def test_trace_context_travels_in_the_event(harness: Harness) -> None:
    q = harness.queue()
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await q.put(request(1).model_copy(update={"traceparent": parent}))
    got = await receive_all(q, 1)
    assert got[0].message.traceparent == parent
    await q.ack(got[0])


async def test_checkpoint_waits_for_the_lowest_unacked_offset(harness: Harness) -> None:
    harness.hub.logs = {"0": []}
    q = harness.queue()
    for i in range(4):
        harness.hub.append("0", request(i).model_dump_json())
    got = await receive_all(q, 4)
    assert [d.token for d in got] == ["0:0", "0:100", "0:200", "0:300"]
    await q.ack(got[1])
    await q.ack(got[3])
    assert await harness.checkpoints() == {}
    await q.ack(got[0])
    assert await harness.checkpoints() == {"0": 1}
    assert "unacked=2" in repr(q)
    await q.ack(got[2])
    assert await harness.checkpoints() == {"0": 3}


async def test_unacked_events_return_to_the_next_owner(harness: Harness) -> None:
    harness.hub.logs = {"0": []}
    first = harness.queue("w-dead")
    for i in range(4):
        harness.hub.append("0", request(i).model_dump_json())
    got = await receive_all(first, 4)
    await first.ack(got[0])
    await first.ack(got[2])  # done, but behind the unacked got[1]
    await first.close()  # crashed with got[1] and got[3] in flight
    second = harness.queue("w-next")
    again = await receive_all(second, 3)
    assert [d.message.id for d in again] == ["req-1", "req-2", "req-3"]
    assert [d.delivery_count for d in again] == [2, 2, 2]
    for d in again:
        await second.ack(d)
    assert await harness.checkpoints() == {"0": 3}


async def test_poison_event_is_dead_lettered_and_passed(harness: Harness) -> None:
    harness.hub.logs = {"0": []}
    q = harness.queue()
    harness.hub.append("0", "{not json")
    harness.hub.append("0", request(1).model_dump_json())
    [d] = await receive_all(q, 1)
    assert d.message.id == "req-1"
    await q.ack(d)
    assert await harness.checkpoints() == {"0": 1}
    [(_, fields)] = await harness.redis.xrange(keys.dead_letter("d1"))
    assert fields[b"message"] == b"{not json"
    assert fields[b"reason"].startswith(b"unreadable message")


async def test_dead_letter_goes_to_redis_and_acks(harness: Harness) -> None:
    harness.hub.logs = {"0": []}
    q = harness.queue()
    harness.hub.append("0", request(5).model_dump_json())
    [d] = await receive_all(q, 1)
    await q.dead_letter(d, "max attempts")
    [(_, fields)] = await harness.redis.xrange(keys.dead_letter("d1"))
    assert (fields[b"reason"], fields[b"entry_id"]) == (b"max attempts", b"0:0")
    assert await harness.checkpoints() == {"0": 0}


async def test_send_failure_is_queue_unavailable(harness: Harness) -> None:
    q = harness.queue(fail=True)
    with pytest.raises(QueueUnavailable):
        await q.put(request(1))


async def test_factory_builds_eventhubs_queue(redis: aioredis.Redis) -> None:
    conn = "Endpoint=sb://fake.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=v"
    settings = load_settings(queue_backend="eventhubs", eventhub_connection_string=conn)
    fair = make_queue(settings, "gpt-4o", redis, "worker-1")
    assert isinstance(fair, FairShareQueue)
    tenant = fair.inner("default")
    assert isinstance(tenant, ClassedQueue)
    q, batch = tenant.inner("low"), tenant.inner("batch")
    assert isinstance(q, EventHubsQueue) and isinstance(batch, EventHubsQueue)
    assert q.eventhub == "ptu-requests-gpt-4o"
    assert batch.eventhub == "ptu-requests-gpt-4o.batch"  # Batch API lines: their own hub
    assert q.namespace == "fake.servicebus.windows.net"  # what the SDK names to the store
    assert "eventhub=ptu-requests-gpt-4o consumer=worker-1" in repr(q)
    await tenant.close()
    with pytest.raises(ConfigError, match="PTU_EVENTHUB_NAMESPACE"):
        make_queue(load_settings(queue_backend="eventhubs"), "gpt-4o", redis, "worker-1")

"""Queued classes on real Redis Streams, as the factory builds them: `low` before `batch`."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.core.schemas import QueuedRequest
from orchestrator.core.settings import load_settings
from orchestrator.queues.base import Queue
from orchestrator.queues.classes import ClassedQueue
from orchestrator.queues.factory import make_queue, make_tenant_queue
from orchestrator.queues.fair import FairShareQueue

DEPLOYMENT = "classes-ptu"


def message(rid: str, *, batch: bool = False, tenant: str = "default") -> QueuedRequest:
    now = time.time()
    return QueuedRequest(
        id=rid,
        deployment=DEPLOYMENT,
        body={"messages": [{"role": "user", "content": rid}]},
        reply_key=keys.reply(rid),
        enqueued_at=now,
        deadline=now + 600,
        tenant=tenant,
        batch_id="batch_1" if batch else None,
    )


async def _drain(queue: Queue, n: int) -> list[str]:
    out = []
    for _ in range(n):
        (delivery,) = await queue.receive(1, 2.0)
        out.append(delivery.message.id)
        await queue.ack(delivery)
    return out


async def test_a_tenants_low_work_is_served_before_its_batch_lines(redis: aioredis.Redis) -> None:
    queue = make_queue(load_settings(), DEPLOYMENT, redis, "worker-1")
    assert isinstance(queue, FairShareQueue)
    for i in range(3):
        await queue.put(message(f"line-{i}", batch=True))
    await queue.put(message("waiting-call"))
    assert await redis.xlen(keys.tenant_queue(DEPLOYMENT, "default", "batch")) == 3
    assert await redis.xlen(keys.tenant_queue(DEPLOYMENT, "default")) == 1
    # the call queued last is served first; the lines keep their own order
    assert await _drain(queue, 2) == ["waiting-call", "line-0"]
    await queue.put(message("another-call"))
    assert await _drain(queue, 3) == ["another-call", "line-1", "line-2"]
    assert await queue.receive(1, 0.0) == []
    assert await queue.depth() == 0
    await queue.close()


async def test_put_many_splits_by_class_and_depth_counts_each(redis: aioredis.Redis) -> None:
    tenant = make_tenant_queue(load_settings(), DEPLOYMENT, redis, "worker-1", "team-a")
    batch = [message(f"l{i}", batch=True, tenant="team-a") for i in range(4)]
    await tenant.put_many([*batch, message("call", tenant="team-a")])
    assert await tenant.depth_by_class() == {"low": 1, "batch": 4}
    assert await tenant.depth() == 5
    await tenant.close()


async def test_a_batch_line_put_while_a_receive_waits_is_taken(redis: aioredis.Redis) -> None:
    tenant = make_tenant_queue(load_settings(), DEPLOYMENT, redis, "worker-1", "default")
    producer = make_tenant_queue(load_settings(), DEPLOYMENT, redis, "ingress", "default")

    async def put_later() -> None:
        await asyncio.sleep(0.3)
        await producer.put(message("late-line", batch=True))

    putter = asyncio.create_task(put_later())
    got = await tenant.receive(1, 10.0)  # blocks on `low`, looks at `batch` between slices
    await putter
    assert [d.message.id for d in got] == ["late-line"]
    await tenant.ack(got[0])
    await tenant.close()
    await producer.close()


async def test_release_and_dead_letter_reach_the_class_stream(redis: aioredis.Redis) -> None:
    settings = load_settings()
    tenant = make_tenant_queue(settings, DEPLOYMENT, redis, "worker-1", "default")
    assert isinstance(tenant, ClassedQueue)
    await tenant.put(message("line", batch=True))
    (first,) = await tenant.receive(1, 1.0)
    await tenant.release(first)
    (again,) = await tenant.receive(1, 5.0)  # released: taken over at once, counted
    assert (again.message.id, again.delivery_count) == ("line", 2)
    await tenant.dead_letter(again, "poison")
    assert await redis.xlen(keys.tenant_queue(DEPLOYMENT, "default", "batch")) == 0
    (entry,) = await redis.xrange(keys.dead_letter(DEPLOYMENT))
    assert QueuedRequest.model_validate_json(entry[1][b"message"]).id == "line"
    await tenant.close()


def test_work_class_follows_the_batch_id() -> None:
    assert message("x").work_class == "low"
    assert message("y", batch=True).work_class == "batch"
    # the class is derived, not stored: the message format is unchanged
    assert "work_class" not in message("y", batch=True).model_dump()

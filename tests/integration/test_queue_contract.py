"""One contract suite for every `Queue` implementation (memory twin, Redis Streams, and the
fair-share layer over per-tenant, per-class Redis Streams, as the factory builds it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.core.schemas import WORK_CLASSES, QueuedRequest, WorkClass
from orchestrator.queues.base import Delivery, Queue
from orchestrator.queues.classes import ClassedQueue
from orchestrator.queues.fair import FairShareQueue
from orchestrator.queues.memory import InMemoryQueue
from orchestrator.queues.redis_streams import RedisStreamsQueue

CLAIM_S = 0.3
DEPLOYMENT = "gpt-4o-mini-ptu"


def request(i: int) -> QueuedRequest:
    now = time.time()
    return QueuedRequest(
        id=f"req-{i}",
        deployment=DEPLOYMENT,
        body={"messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 5},
        reply_key=keys.reply(f"req-{i}"),
        enqueued_at=now,
        deadline=now + 60,
        custom_id=f"c-{i}",
    )


@dataclass
class Backend:
    """Builds consumers of one shared queue and reads its dead letters."""

    consumer: Callable[[str], Queue]
    dead_letters: Callable[[], object]
    crash: Callable[[Queue], None]
    opened: list[Queue] = field(default_factory=list)

    def make(self, name: str) -> Queue:
        q = self.consumer(name)
        self.opened.append(q)
        return q


async def _redis_dead(redis: aioredis.Redis) -> list[tuple[str, str]]:
    rows = await redis.xrange(keys.dead_letter(DEPLOYMENT))
    return [
        (QueuedRequest.model_validate_json(f[b"message"]).id, f[b"reason"].decode())
        for _, f in rows
    ]


def _crash_redis(q: Queue) -> None:
    """What a SIGKILL leaves: no more liveness beats or refreshes, nothing cleaned up."""
    assert isinstance(q, RedisStreamsQueue)
    for task in (q._liveness._beater, q._liveness._refresher):
        if task is not None:
            task.cancel()


def _fair(redis: aioredis.Redis, name: str, timeout_s: float) -> Queue:
    def of_class(tenant: str, work_class: WorkClass) -> Queue:
        stream = keys.tenant_queue(DEPLOYMENT, tenant, work_class)
        return RedisStreamsQueue(
            redis, DEPLOYMENT, name, claim_idle_s=timeout_s, liveness_s=timeout_s, stream=stream
        )

    def inner(tenant: str) -> Queue:
        return ClassedQueue(lambda work_class: of_class(tenant, work_class), slice_s=0.1)

    # two configured tenants: the multi-tenant path, not the single-queue shortcut
    return FairShareQueue(
        redis, DEPLOYMENT, inner, tenants={"default": 1.0, "other": 2.0}, sweep_s=timeout_s
    )


def _crash_fair(q: Queue) -> None:
    assert isinstance(q, FairShareQueue)
    for tenant in ("default", "other"):
        classed = q.inner(tenant)
        assert isinstance(classed, ClassedQueue)
        for work_class in WORK_CLASSES:
            _crash_redis(classed.inner(work_class))


def _make_backend(kind: str, redis: aioredis.Redis, timeout_s: float) -> Backend:
    """Consumers whose dead peers' (or, memory, un-acked) entries move after `timeout_s`."""
    if kind == "memory":
        shared = InMemoryQueue(DEPLOYMENT, visibility_s=timeout_s)

        async def mem_dead() -> list[tuple[str, str]]:
            return [(m.id, reason) for m, reason in shared.dead_letters]

        return Backend(consumer=lambda _name: shared, dead_letters=mem_dead, crash=lambda q: None)
    if kind == "fair":
        return Backend(
            consumer=lambda name: _fair(redis, name, timeout_s),
            dead_letters=lambda: _redis_dead(redis),
            crash=_crash_fair,
        )
    return Backend(
        consumer=lambda name: RedisStreamsQueue(
            redis, DEPLOYMENT, name, claim_idle_s=timeout_s, liveness_s=timeout_s
        ),
        dead_letters=lambda: _redis_dead(redis),
        crash=_crash_redis,
    )


@pytest.fixture(params=["memory", "redis", "fair"])
async def backend(request: pytest.FixtureRequest, redis: aioredis.Redis) -> AsyncIterator[Backend]:
    b = _make_backend(request.param, redis, CLAIM_S)
    yield b
    for q in b.opened:
        await q.close()


@pytest.fixture(params=["memory", "redis", "fair"])
async def patient(request: pytest.FixtureRequest, redis: aioredis.Redis) -> AsyncIterator[Backend]:
    """A backend whose timeouts (60 s) no test waits for: what moves, moves by `release`."""
    b = _make_backend(request.param, redis, 60.0)
    yield b
    for q in b.opened:
        await q.close()


async def test_put_receive_ack(backend: Backend) -> None:
    q = backend.make("w1")
    sent = [request(i) for i in range(3)]
    for message in sent:
        await q.put(message)
    assert await q.depth() == 3
    got = await q.receive(10, timeout_s=1.0)
    assert [d.message for d in got] == sent
    assert all(d.delivery_count == 1 for d in got)
    assert await q.depth() == 3  # in flight still counts
    for d in got:
        await q.ack(d)
    await q.ack(got[0])  # idempotent
    assert await q.depth() == 0
    assert await q.receive(10, timeout_s=0.05) == []


async def test_max_count_is_respected(backend: Backend) -> None:
    q = backend.make("w1")
    for i in range(5):
        await q.put(request(i))
    first = await q.receive(2, timeout_s=1.0)
    second = await q.receive(10, timeout_s=1.0)
    assert [d.message.id for d in first] == ["req-0", "req-1"]
    assert [d.message.id for d in second] == ["req-2", "req-3", "req-4"]


async def test_receive_timeout_returns_empty(backend: Backend) -> None:
    q = backend.make("w1")
    started = time.monotonic()
    assert await q.receive(5, timeout_s=0.2) == []
    assert time.monotonic() - started >= 0.15


async def test_blocked_receive_wakes_on_put(backend: Backend) -> None:
    q = backend.make("w1")
    waiter = asyncio.create_task(q.receive(5, timeout_s=10.0))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    await backend.make("ingress").put(request(7))
    got = await asyncio.wait_for(waiter, timeout=5.0)
    assert [d.message.id for d in got] == ["req-7"]


async def test_unacked_delivery_of_dead_consumer_is_redelivered(backend: Backend) -> None:
    dead, alive = backend.make("w-dead"), backend.make("w-alive")
    await dead.put(request(1))
    [first] = await dead.receive(1, timeout_s=1.0)
    backend.crash(dead)  # never acks, never says goodbye
    assert await alive.receive(1, timeout_s=0.05) == []  # not before the timeout
    got = await alive.receive(1, timeout_s=CLAIM_S * 10)
    assert [d.message.id for d in got] == ["req-1"]
    assert got[0].delivery_count == 2
    await alive.ack(got[0])
    await dead.ack(first)  # a late ack from the old owner is harmless
    assert await alive.depth() == 0


async def test_dead_letter_moves_message_and_acks(backend: Backend) -> None:
    q = backend.make("w1")
    await q.put(request(1))
    await q.put(request(2))
    got = await q.receive(2, timeout_s=1.0)
    await q.dead_letter(got[0], "max attempts reached")
    await q.ack(got[1])
    assert await q.depth() == 0
    assert await backend.dead_letters() == [("req-1", "max attempts reached")]  # type: ignore[misc]
    await asyncio.sleep(CLAIM_S * 1.5)
    assert await q.receive(5, timeout_s=0.05) == []  # not redelivered


async def test_concurrent_consumers_share_without_duplicates(backend: Backend) -> None:
    producer = backend.make("ingress")
    for i in range(30):
        await producer.put(request(i))

    async def drain(q: Queue) -> list[Delivery]:
        seen: list[Delivery] = []
        while got := await q.receive(4, timeout_s=0.1):
            for d in got:
                await q.ack(d)
            seen.extend(got)
            await asyncio.sleep(0)
        return seen

    a, b = await asyncio.gather(drain(backend.make("w1")), drain(backend.make("w2")))
    ids = [d.message.id for d in a + b]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(30))
    assert await producer.depth() == 0


async def test_released_delivery_comes_back_at_once_counting_the_attempt(patient: Backend) -> None:
    owner, other = patient.make("w-owner"), patient.make("w-other")
    await owner.put(request(1))
    [first] = await owner.receive(1, timeout_s=1.0)
    assert await other.receive(1, timeout_s=0.05) == []
    await owner.release(first)
    started = time.monotonic()
    [again] = await other.receive(1, timeout_s=10.0)
    assert time.monotonic() - started < 10.0  # long before the 60 s timeouts
    assert again.message == first.message and again.delivery_count == 2
    await other.ack(again)
    await owner.release(first)  # releasing a finished delivery changes nothing
    assert await other.receive(1, timeout_s=0.2) == []
    assert await owner.depth() == 0


async def test_release_of_an_acked_delivery_does_nothing(patient: Backend) -> None:
    q = patient.make("w1")
    await q.put(request(1))
    [got] = await q.receive(1, timeout_s=1.0)
    await q.ack(got)
    await q.release(got)
    assert await q.receive(1, timeout_s=0.2) == []
    assert await q.depth() == 0


async def test_closed_consumer_hands_its_entries_over_at_once(patient: Backend) -> None:
    leaving, staying = patient.make("w-leaving"), patient.make("w-staying")
    await leaving.put(request(1))
    [first] = await leaving.receive(1, timeout_s=1.0)
    await leaving.release(first)  # a draining worker gives back what it will not finish
    await leaving.close()
    [again] = await staying.receive(1, timeout_s=10.0)
    assert again.message.id == "req-1"
    await staying.ack(again)


async def test_trace_context_travels_with_the_message(backend: Backend) -> None:
    q = backend.make("w1")
    traced = request(1).model_copy(
        update={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    )
    await q.put(traced)
    await q.put(request(2))
    got = await q.receive(10, timeout_s=1.0)
    assert [d.message.traceparent for d in got] == [traced.traceparent, None]
    assert "traceparent" not in request(2).model_dump_json()  # tracing off: message unchanged
    for d in got:
        await q.ack(d)

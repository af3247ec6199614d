"""The worker loop: slots before receives, the throttle's limit, drain and heartbeat."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from orchestrator.core import keys
from orchestrator.core.errors import QueueUnavailable
from orchestrator.queues.base import Delivery
from orchestrator.worker.loop import Lane, Worker, WorkerTiming
from tests.unit.worker_fakes import DEPLOYMENT, FakeUpstream, Parked, Rig, make_rig, request


async def until(condition: Callable[[], bool], rounds: int = 20_000) -> None:
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def settle(rounds: int = 500) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def make_worker(rig: Rig, parked: Parked, queue: Any = None) -> Worker:
    lane = Lane(DEPLOYMENT.name, queue or rig.queue, rig.throttle, rig.dispatcher)
    timing = WorkerTiming(drain_timeout_s=7, receive_timeout_s=0.05, heartbeat_s=1, renew_s=10)
    return Worker(
        "w1", [lane], timing=timing, redis=rig.redis, clock=rig.time.clock, sleep=parked.sleep
    )


async def fill(rig: Rig, n: int) -> list[str]:
    ids = [f"r{i}" for i in range(n)]
    for rid in ids:
        await rig.put(request(rid))
    return ids


async def replies(rig: Rig, ids: list[str]) -> dict[str, int]:
    return {rid: len(await rig.replies(rid)) for rid in ids}


async def test_concurrency_follows_the_throttle_limit_and_every_request_gets_one_result() -> None:
    gate = asyncio.Event()
    rig = make_rig(utilisation=0.55, max_concurrency=10, upstream=FakeUpstream(gate=gate))
    ids = await fill(rig, 20)
    worker = make_worker(rig, Parked())
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop))

    await until(lambda: rig.upstream.active == 5)  # floor(10 - 9 * 0.5)
    await settle()
    assert rig.upstream.active == 5 and rig.throttle.limit == 5
    # the lane holds at most the limit: no message is taken off the queue beyond it
    assert rig.queue.in_flight() == 5
    assert "limit=5" in repr(worker)
    gate.set()
    await until(lambda: rig.dispatcher.counts["completed"] == 20)
    stop.set()
    await run

    assert rig.upstream.peak == 5
    assert set((await replies(rig, ids)).values()) == {1}
    assert await rig.queue.depth() == 0 and await rig.global_slots() == 0


async def test_nothing_is_received_while_utilisation_is_above_upper() -> None:
    rig = make_rig(utilisation=0.95)
    ids = await fill(rig, 3)
    stop = asyncio.Event()
    run = asyncio.create_task(make_worker(rig, Parked()).run(stop))

    await until(lambda: rig.throttle_time.now > rig.time.now + 5)  # many throttle polls
    assert rig.upstream.calls == [] and rig.throttle.limit == 0
    assert rig.queue.in_flight() == 0 and await rig.queue.depth() == 3

    rig.source.set(DEPLOYMENT.name, 0.1)
    await until(lambda: rig.dispatcher.counts["completed"] == 3)
    stop.set()
    await run
    assert set((await replies(rig, ids)).values()) == {1}


async def test_limit_drop_lets_in_flight_calls_finish_and_starts_nothing_new() -> None:
    gate = asyncio.Event()
    rig = make_rig(max_concurrency=4, upstream=FakeUpstream(gate=gate))
    await fill(rig, 10)
    stop = asyncio.Event()
    run = asyncio.create_task(make_worker(rig, Parked()).run(stop))
    await until(lambda: rig.upstream.active == 4)

    rig.source.set(DEPLOYMENT.name, 0.95)
    await until(lambda: rig.throttle.limit == 0)
    gate.set()
    await until(lambda: rig.dispatcher.counts["completed"] == 4)
    await settle()
    assert len(rig.upstream.calls) == 4
    assert await rig.queue.depth() == 6 and rig.queue.in_flight() == 0
    stop.set()
    await run


async def test_stop_drains_in_flight_calls_and_leaves_the_rest_queued() -> None:
    gate = asyncio.Event()
    rig = make_rig(max_concurrency=3, upstream=FakeUpstream(gate=gate))
    ids = await fill(rig, 8)
    parked = Parked()
    stop = asyncio.Event()
    run = asyncio.create_task(make_worker(rig, parked).run(stop))
    await until(lambda: rig.upstream.active == 3)

    stop.set()
    await settle()
    assert not run.done()  # draining: waits for the three calls
    assert 7 in parked.calls  # the drain timer runs
    gate.set()
    await run

    done = await replies(rig, ids)
    assert sum(done.values()) == 3 and len(rig.upstream.calls) == 3
    assert await rig.queue.depth() == 5 and rig.queue.in_flight() == 0
    assert await rig.global_slots() == 0


async def test_drain_timeout_cancels_calls_and_releases_them_unacknowledged() -> None:
    rig = make_rig(max_concurrency=2, upstream=FakeUpstream(hang=True))
    ids = await fill(rig, 4)
    parked = Parked()
    stop = asyncio.Event()
    run = asyncio.create_task(make_worker(rig, parked).run(stop))
    await until(lambda: rig.upstream.active == 2)

    stop.set()
    await settle()
    assert not run.done()
    parked.wake()  # the drain timeout runs out
    await run

    assert sum((await replies(rig, ids)).values()) == 0
    assert (
        rig.queue.in_flight() == 0 and await rig.queue.depth() == 4
    )  # released: redelivered at once
    assert await rig.global_slots() == 0
    assert [e.phase for e in rig.tokens.events].count("complete") == 2  # budgets refunded


async def test_heartbeat_is_written_while_running_and_removed_at_exit() -> None:
    rig = make_rig(utilisation=0.55, max_concurrency=10)
    ids = await fill(rig, 2)
    stop = asyncio.Event()
    run = asyncio.create_task(make_worker(rig, Parked()).run(stop))
    await until(lambda: rig.dispatcher.counts["completed"] == 2)

    beat: dict[str, Any] = {}

    async def read() -> None:
        raw = await rig.redis.hget(keys.WORKERS, "w1")
        beat.update(json.loads(raw) if raw else {})

    await read()
    assert beat["worker_id"] == "w1" and beat["ttl_s"] == 15
    lane = beat["deployments"]["dep"]
    assert lane["limit"] in (0, 5)  # first beat may precede the first reading
    assert lane["queue_depth"] in (0, 2)
    stop.set()
    await run
    assert await rig.redis.hget(keys.WORKERS, "w1") is None
    assert set((await replies(rig, ids)).values()) == {1}


class FlakyQueue:
    """Fails the first receive, then delegates."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failed = False

    async def receive(self, max_count: int, timeout_s: float) -> list[Delivery]:
        if not self.failed:
            self.failed = True
            raise QueueUnavailable("redis down")
        result: list[Delivery] = await self.inner.receive(max_count, timeout_s)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_queue_outage_releases_the_slot_and_backs_off() -> None:
    rig = make_rig()
    ids = await fill(rig, 2)
    parked = Parked()
    stop = asyncio.Event()
    run = asyncio.create_task(make_worker(rig, parked, FlakyQueue(rig.queue)).run(stop))
    await until(lambda: any(0.25 <= c <= 0.5 for c in parked.calls))
    assert await rig.global_slots() == 0 and rig.upstream.calls == []

    parked.wake()
    await until(lambda: rig.dispatcher.counts["completed"] == 2)
    stop.set()
    await run
    assert set((await replies(rig, ids)).values()) == {1}


class CountingQueue:
    """The rig's queue, counting receives and the messages each returned."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.received: list[int] = []

    async def receive(self, max_count: int, timeout_s: float) -> list[Delivery]:
        got = await self.inner.receive(max_count, timeout_s)
        if got:
            self.received.append(len(got))
        return list(got)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_waiting_messages_are_taken_several_at_once_within_the_limit() -> None:
    gate = asyncio.Event()
    rig = make_rig(utilisation=0.55, max_concurrency=10, upstream=FakeUpstream(gate=gate))
    ids = await fill(rig, 12)
    queue = CountingQueue(rig.queue)
    stop = asyncio.Event()
    run = asyncio.create_task(make_worker(rig, Parked(), queue).run(stop))

    await until(lambda: rig.upstream.active == 5)
    await settle()
    assert rig.upstream.active == 5 and rig.queue.in_flight() == 5  # never beyond the limit
    assert queue.received[:2] == [1, 4]  # one message, then the four the limit had room for
    gate.set()
    await until(lambda: rig.dispatcher.counts["completed"] == 12)
    stop.set()
    await run
    assert rig.upstream.peak == 5
    assert set((await replies(rig, ids)).values()) == {1}
    assert await rig.global_slots() == 0

"""Several Throttle instances (one per simulated worker) share one real Redis server."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.core.settings import DeploymentConfig
from orchestrator.core.views import ThrottleView
from orchestrator.throttle.limiter import Throttle
from orchestrator.utilisation.static import StaticSource
from tests import redis_mode

DEPLOYMENT = DeploymentConfig(name="gpt-4o", model="gpt-4o", ptus=50)


@pytest.fixture
async def clients(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[list[aioredis.Redis]]:
    """One client per simulated worker (the `redis` fixture has flushed the database)."""
    made = [redis_mode.connect(redis_url) for _ in range(4)]
    for c in made:  # connected before any lease is timed (a cluster client discovers nodes)
        await c.zcard(keys.slots(DEPLOYMENT.name))
    try:
        yield made
    finally:
        for c in made:
            await c.aclose()


def worker(
    client: aioredis.Redis, source: StaticSource, wid: str, lease_s: float = 5.0
) -> Throttle:
    return Throttle(
        client,
        DEPLOYMENT,
        source,
        ThrottleView(lower=0.2, upper=0.9, max_concurrency=10, slot_lease_s=lease_s),
        worker_id=wid,
        poll_s=0.01,
    )


class Counter:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.calls = 0

    def enter(self) -> int:
        self.now += 1
        self.calls += 1
        self.peak = max(self.peak, self.now)
        return self.now

    def leave(self) -> None:
        self.now -= 1


async def hammer(
    throttle: Throttle, counter: Counter, stop: asyncio.Event, seen: list[int], rng: random.Random
) -> None:
    while not stop.is_set():
        slot = await throttle.acquire(stop)
        if slot is None:
            return
        seen.append(counter.enter())
        await asyncio.sleep(rng.uniform(0, 0.01))
        counter.leave()
        await throttle.release(slot)


async def test_workers_together_never_exceed_the_limit(clients: list[aioredis.Redis]) -> None:
    source = StaticSource({"gpt-4o": 0.55})  # limit 5
    throttles = [worker(c, source, f"w{i}") for i, c in enumerate(clients)]
    counter, seen, stop = Counter(), list[int](), asyncio.Event()
    rng = random.Random(7)
    tasks = [
        asyncio.create_task(hammer(t, counter, stop, seen, rng))
        for t in throttles
        for _ in range(4)
    ]
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.gather(*tasks)
    assert counter.calls > 20  # enough contention to mean something, on a loaded machine too
    assert counter.peak == 5  # reached the limit, never above it
    assert await throttles[0].global_in_flight() == 0


async def test_shrunk_limit_blocks_new_calls_until_in_flight_finish(
    clients: list[aioredis.Redis],
) -> None:
    old_source = StaticSource({"gpt-4o": 0.0})  # limit 10
    old = worker(clients[0], old_source, "old")
    stop = asyncio.Event()
    held = [await old.acquire(stop) for _ in range(5)]
    source = StaticSource({"gpt-4o": 0.8})  # limit 2 for the new workers
    throttles = [worker(c, source, f"w{i}") for i, c in enumerate(clients[1:])]
    counter, seen, rng = Counter(), list[int](), random.Random(3)
    counter.now = 5  # the old worker's calls are in flight
    tasks = [asyncio.create_task(hammer(t, counter, stop, seen, rng)) for t in throttles * 2]
    await asyncio.sleep(0.3)
    assert seen == []  # 5 in flight >= limit 2: nothing new starts
    for slot in held:
        assert slot is not None
        counter.leave()  # the call ends, then its slot is handed back
        await old.release(slot)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*tasks)
    assert seen and max(seen) <= 2


async def test_dead_worker_leases_are_reclaimed(clients: list[aioredis.Redis]) -> None:
    source = StaticSource({"gpt-4o": 0.8})  # limit 2
    dead = worker(clients[0], source, "dead", lease_s=0.5)
    live = worker(clients[1], source, "live", lease_s=0.5)
    stop = asyncio.Event()
    assert await dead.acquire(stop) is not None
    assert await dead.acquire(stop) is not None
    # the dead worker never renews nor releases; its leases expire after lease_s
    started = time.monotonic()
    slot = await asyncio.wait_for(live.acquire(stop), timeout=5)
    waited = time.monotonic() - started
    assert slot is not None
    assert 0.3 < waited < 3.0


async def test_live_worker_keeps_its_leases(clients: list[aioredis.Redis]) -> None:
    source = StaticSource({"gpt-4o": 0.8})  # limit 2
    live = worker(clients[0], source, "live", lease_s=0.3)
    other = worker(clients[1], source, "other", lease_s=0.3)
    stop = asyncio.Event()
    slots = [await live.acquire(stop) for _ in range(2)]

    async def keep_leases() -> None:  # what the worker's housekeeping does
        while True:
            await asyncio.sleep(live.lease_s / 3)
            await live.renew()

    keeper = asyncio.create_task(keep_leases())
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(other.acquire(stop), timeout=1.0)
        assert await other.global_in_flight() == 2
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
    first = slots[0]
    assert first is not None
    await live.release(first)
    assert await asyncio.wait_for(other.acquire(stop), timeout=2.0) is not None


async def test_pause_is_global_and_ends(clients: list[aioredis.Redis]) -> None:
    source = StaticSource({"gpt-4o": 0.0})
    a, b = worker(clients[0], source, "a"), worker(clients[1], source, "b")
    await a.pause_for(0.4)
    started = time.monotonic()
    assert await asyncio.wait_for(b.acquire(asyncio.Event()), timeout=5) is not None
    assert time.monotonic() - started > 0.25


async def test_a_started_call_of_a_live_worker_outlives_its_lease(
    clients: list[aioredis.Redis],
) -> None:
    """A stalled worker (alive, not renewing) keeps its started calls' slots; a dead one's go."""
    source = StaticSource({"gpt-4o": 0.0})  # limit 10
    stalled, dead, other = (
        worker(c, source, wid)
        for c, wid in zip(clients[:3], ("stalled", "dead", "other"), strict=True)
    )
    for throttle in (stalled, dead):
        await throttle.open()
    slots = {}
    for name, throttle in (("stalled", stalled), ("dead", dead)):
        started, idle = [await throttle.acquire(asyncio.Event()) for _ in range(2)]
        assert started is not None and idle is not None
        assert await throttle.start(started, 60.0)
        slots[name] = (started, idle)
    await dead.close()  # its process is gone: its connections (and subscription) closed
    table = keys.slots(DEPLOYMENT.name)
    for started, idle in slots.values():  # no renewal since: every lease has lapsed
        await clients[0].zadd(table, {started.id: 1, idle.id: 1})
    assert await other.global_in_flight() == 1  # only the live worker's started call
    members: list[bytes] = await clients[0].zrange(table, 0, -1)  # type: ignore[assignment]
    assert [m.decode() for m in members] == [slots["stalled"][0].id]
    await stalled.renew()  # resumed: the started call's lease is extended, the idle one lost
    assert not await stalled.start(slots["stalled"][1], 60.0)
    await stalled.release(slots["stalled"][0])
    assert await other.global_in_flight() == 0
    assert await clients[0].hlen(keys.slot_calls(DEPLOYMENT.name)) == 0
    await stalled.close()


@pytest.mark.skipif(redis_mode.CLUSTER, reason="kills the subscription on one server")
async def test_the_owner_subscription_comes_back_after_redis_drops_it(
    clients: list[aioredis.Redis],
) -> None:
    """A connection Redis closed (a restart, CLIENT KILL) is reopened at the next renewal."""
    throttle = worker(clients[0], StaticSource({"gpt-4o": 0.0}), "owner")
    await throttle.open()
    channel = keys.slot_owner(DEPLOYMENT.name, "owner")

    async def subscribers() -> int:
        # counted by a script: it runs on the node of the slot table, as the reaping does
        script = "return redis.call('PUBSUB', 'NUMSUB', ARGV[1])[2]"
        return int(await clients[1].eval(script, 1, keys.slots(DEPLOYMENT.name), channel))

    assert await subscribers() == 1
    await clients[1].client_kill_filter(_type="pubsub")
    assert await subscribers() == 0
    for _ in range(50):  # a renewal or two: reconnecting may take one more
        await throttle.renew()
        if await subscribers() == 1:
            break
        await asyncio.sleep(0.02)
    assert await subscribers() == 1
    await throttle.close()


async def test_slots_leased_together_never_exceed_the_global_limit(
    clients: list[aioredis.Redis],
) -> None:
    source = StaticSource({"gpt-4o": 0.55})  # limit floor(10 - 9 * 0.5) = 5
    a, b = worker(clients[0], source, "a"), worker(clients[1], source, "b")
    stop = asyncio.Event()
    first = await a.acquire(stop)
    assert first is not None
    more = await a.acquire_more(10)
    assert len(more) == 4 and a.in_flight == 5  # the limit's room, not the 10 asked for
    assert await b.acquire_more(3) == []  # b's limit is 0 until it reads: nothing leased
    assert await b.refresh() == 5 and await b.acquire_more(3) == []  # the limit is full
    await a.release(more[0])
    got = await b.acquire_more(3)
    assert len(got) == 1 and await a.global_in_flight() == 5
    await a.pause_for(5.0)
    for slot in more[1:]:
        await a.release(slot)
    assert await b.acquire_more(3) == []  # paused: nothing starts

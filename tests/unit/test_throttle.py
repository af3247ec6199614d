from __future__ import annotations

import asyncio
from collections.abc import Callable

import fakeredis
import pytest
from structlog.testing import capture_logs

from orchestrator.core import keys
from orchestrator.core.runtime import Pacing
from orchestrator.core.settings import DeploymentConfig
from orchestrator.core.views import ThrottleView
from orchestrator.throttle.limiter import Throttle
from orchestrator.utilisation.static import StaticSource
from tests.support.clock import FakeClock

DEPLOYMENT = DeploymentConfig(name="gpt-4o", model="gpt-4o", ptus=50)


def make(
    redis: fakeredis.FakeAsyncRedis,
    source: StaticSource,
    t: FakeClock,
    *,
    worker_id: str = "w1",
    poll_s: float = 0.1,
) -> Throttle:
    return Throttle(
        redis,
        DEPLOYMENT,
        source,
        ThrottleView(lower=0.2, upper=0.9, max_concurrency=10, slot_lease_s=30.0),
        worker_id=worker_id,
        pacing=Pacing(clock=t.clock, sleep=t.sleep),
        poll_s=poll_s,
    )


async def spin_until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition` holds (bounded, no real time)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def stop_after(t: FakeClock, sleeps: int, stop: asyncio.Event) -> None:
    await spin_until(lambda: len(t.sleeps) >= sleeps)
    stop.set()


@pytest.mark.parametrize(
    ("value", "age", "expected"),
    [
        (0.0, 0.0, 10),
        (0.2, 0.0, 10),
        (0.55, 0.0, 5),
        (0.899, 0.0, 1),
        (0.9, 0.0, 0),
        (1.4, 0.0, 0),
        (0.0, 4.9, 10),  # under max_age_s (5 s): still trusted
        (0.0, 5.1, 0),  # stale: fail closed
        (0.55, 60.0, 0),
    ],
)
async def test_limit_follows_reading_and_age(
    fake_redis: fakeredis.FakeAsyncRedis, value: float, age: float, expected: int
) -> None:
    t = FakeClock()
    source = StaticSource(max_age_s=5.0, clock=t.clock)
    source.set("gpt-4o", value, observed_at=t.now - age)
    throttle = make(fake_redis, source, t)
    assert await throttle.refresh() == expected
    assert throttle.limit == expected


async def test_unavailable_reading_gives_zero(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    t = FakeClock()
    source = StaticSource(clock=t.clock)
    throttle = make(fake_redis, source, t)
    assert await throttle.refresh() == 0
    assert throttle.reading is None
    stop = asyncio.Event()
    waiter = asyncio.create_task(stop_after(t, 5, stop))
    assert await throttle.acquire(stop) is None
    await waiter
    assert await throttle.global_in_flight() == 0


async def test_reading_is_polled_at_most_every_poll_s(
    fake_redis: fakeredis.FakeAsyncRedis,
) -> None:
    t = FakeClock()
    source = StaticSource({"gpt-4o": 0.0}, clock=t.clock)
    throttle = make(fake_redis, source, t, poll_s=1.0)
    await throttle.refresh()
    source.set("gpt-4o", 0.95)
    t.now += 0.5
    assert await throttle.refresh() == 10  # cached
    assert source.reads == 1
    t.now += 0.5
    assert await throttle.refresh() == 0
    assert source.reads == 2


async def test_acquire_stops_at_limit_and_release_frees(
    fake_redis: fakeredis.FakeAsyncRedis,
) -> None:
    t = FakeClock()
    source = StaticSource({"gpt-4o": 0.55}, clock=t.clock)  # limit 5
    throttle = make(fake_redis, source, t)
    stop = asyncio.Event()
    slots = [await throttle.acquire(stop) for _ in range(5)]
    assert all(s is not None for s in slots)
    assert throttle.in_flight == 5 and await throttle.global_in_flight() == 5

    blocked = asyncio.create_task(throttle.acquire(stop))
    await spin_until(lambda: len(t.sleeps) >= 3)
    assert not blocked.done()
    first = slots[0]
    assert first is not None
    await throttle.release(first)
    await throttle.release(first)  # idempotent
    assert await blocked is not None
    assert throttle.in_flight == 5


async def test_shrinking_limit_lets_in_flight_finish(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    t = FakeClock()
    source = StaticSource({"gpt-4o": 0.0}, clock=t.clock)
    throttle = make(fake_redis, source, t)
    stop = asyncio.Event()
    held = [await throttle.acquire(stop) for _ in range(6)]
    source.set("gpt-4o", 0.8)  # limit 2
    t.now += 1
    assert await throttle.refresh() == 2
    assert throttle.in_flight == 6  # nothing is taken away
    for slot in held[:4]:
        assert slot is not None
        await throttle.release(slot)
    waiter = asyncio.create_task(stop_after(t, len(t.sleeps) + 5, stop))
    assert await throttle.acquire(stop) is None  # 2 in flight, limit 2: still full
    await waiter
    stop.clear()
    slot = held[4]
    assert slot is not None
    await throttle.release(slot)
    assert await throttle.acquire(stop) is not None


async def test_limit_is_shared_by_workers(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    t = FakeClock()
    source = StaticSource({"gpt-4o": 0.55}, clock=t.clock)  # limit 5
    a = make(fake_redis, source, t, worker_id="a")
    b = make(fake_redis, source, t, worker_id="b")
    stop = asyncio.Event()
    for _ in range(3):
        assert await a.acquire(stop) is not None
    for _ in range(2):
        assert await b.acquire(stop) is not None
    waiter = asyncio.create_task(stop_after(t, len(t.sleeps) + 4, stop))
    assert await b.acquire(stop) is None
    await waiter
    assert (a.in_flight, b.in_flight, await a.global_in_flight()) == (3, 2, 5)


async def test_pause_blocks_every_worker(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    t = FakeClock()
    source = StaticSource({"gpt-4o": 0.0}, clock=t.clock)
    a = make(fake_redis, source, t, worker_id="a")
    b = make(fake_redis, source, t, worker_id="b")
    await a.pause_for(30.0)
    await a.pause_for(1.0)  # never shortens a longer pause
    stop = asyncio.Event()
    waiter = asyncio.create_task(stop_after(t, 1, stop))
    assert await b.acquire(stop) is None
    await waiter
    assert t.sleeps[0] > 25  # waited for the pause, not a busy poll
    assert await fake_redis.delete(keys.pause("gpt-4o")) == 1  # the pause, by its real key
    stop.clear()
    assert await b.acquire(stop) is not None


async def test_stop_already_set_returns_none(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    t = FakeClock()
    throttle = make(fake_redis, StaticSource({"gpt-4o": 0.0}, clock=t.clock), t)
    stop = asyncio.Event()
    stop.set()
    assert await throttle.acquire(stop) is None


async def test_a_reaped_lease_is_lost_not_revived(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    t = FakeClock()
    throttle = make(fake_redis, StaticSource({"gpt-4o": 0.0}, clock=t.clock), t)
    slot = await throttle.acquire(asyncio.Event())
    assert slot is not None
    await fake_redis.zrem(keys.slots("gpt-4o"), slot.id)  # as if another worker reaped it
    with capture_logs() as logs:
        await throttle.renew()
    assert [e["count"] for e in logs if e["event"] == "slot_leases_lost"] == [1]
    assert await throttle.global_in_flight() == 0  # its slot may be someone else's by now
    assert throttle.in_flight == 0
    assert not await throttle.start(slot, 60.0)  # a call must not start on it


async def test_a_lease_reaped_before_its_call_is_not_started(
    fake_redis: fakeredis.FakeAsyncRedis,
) -> None:
    t = FakeClock()
    source = StaticSource({"gpt-4o": 0.0}, clock=t.clock)
    throttle, other = make(fake_redis, source, t), make(fake_redis, source, t, worker_id="w2")
    slot = await throttle.acquire(asyncio.Event())
    assert slot is not None
    await fake_redis.zadd(keys.slots("gpt-4o"), {slot.id: 1})  # expired long ago (stalled)
    assert await other.acquire(asyncio.Event()) is not None  # its lease reaps the lapsed one
    with capture_logs() as logs:
        await throttle.renew()  # resumed: the lapsed lease is not revived
    assert [e["event"] for e in logs] == ["slot_leases_lost"]
    assert not await throttle.start(slot, 120.0)
    assert throttle.in_flight == 0
    assert await fake_redis.zcard(keys.slots("gpt-4o")) == 1  # the other worker's


async def test_a_restart_under_the_same_id_drops_its_predecessors_leases(
    fake_redis: fakeredis.FakeAsyncRedis,
) -> None:
    t = FakeClock()
    source = StaticSource({"gpt-4o": 0.0}, clock=t.clock)
    before, other = make(fake_redis, source, t), make(fake_redis, source, t, worker_id="w10")
    for throttle in (before, before, other):
        assert await throttle.acquire(asyncio.Event()) is not None
    again = make(fake_redis, source, t)  # the same id "w1": the earlier run is gone
    await again.open()
    members: list[bytes] = await fake_redis.zrange(keys.slots("gpt-4o"), 0, -1)  # type: ignore[assignment]
    assert [m.decode().split(":")[0] for m in members] == ["w10"]
    await again.close()


async def test_a_release_that_overtakes_the_renewal_is_no_lost_lease(
    fake_redis: fakeredis.FakeAsyncRedis,
) -> None:
    t = FakeClock()
    throttle = make(fake_redis, StaticSource({"gpt-4o": 0.0}, clock=t.clock), t)
    kept, released = [await throttle.acquire(asyncio.Event()) for _ in range(2)]
    assert kept is not None and released is not None
    table = throttle._table
    renew = table.renew

    async def released_meanwhile(members: list[str], lease_s: float) -> list[str]:
        await throttle.release(released)  # its ZREM reaches Redis before the renewal
        return await renew(members, lease_s)

    table.renew = released_meanwhile  # type: ignore[method-assign]
    with capture_logs() as logs:
        await throttle.renew()
    assert [e for e in logs if e["event"] == "slot_leases_lost"] == []
    assert await throttle.global_in_flight() == 1  # the released one did not stay re-added
    await throttle.release(kept)


async def test_repr_is_live(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    t = FakeClock()
    source = StaticSource(clock=t.clock)
    throttle = make(fake_redis, source, t)
    assert repr(throttle) == (
        "<Throttle deployment=gpt-4o limit=0 in_flight=0 utilisation=- age=->"
    )
    source.set("gpt-4o", 0.42, observed_at=t.now)
    await throttle.refresh()
    await throttle.acquire(asyncio.Event())
    t.now += 0.3
    assert repr(throttle) == (
        "<Throttle deployment=gpt-4o limit=7 in_flight=1 utilisation=0.42 age=0.3s>"
    )


@pytest.mark.parametrize(
    ("lower", "upper", "m", "lease"), [(0.5, 0.5, 10, 30.0), (0.2, 0.9, 0, 30.0), (0.2, 0.9, 5, 0)]
)
def test_rejects_bad_arguments(lower: float, upper: float, m: int, lease: float) -> None:
    with pytest.raises(ValueError):
        Throttle(
            fakeredis.FakeAsyncRedis(),
            DEPLOYMENT,
            StaticSource(),
            ThrottleView(lower=lower, upper=upper, max_concurrency=m, slot_lease_s=lease),
            worker_id="w",
        )

"""The breaker shared through a real Redis: a trip in one process opens it in another, one
probe at a time, and a probe's success closes it everywhere."""

from __future__ import annotations

import redis.asyncio as aioredis
from structlog.testing import capture_logs

from orchestrator.breaker.machine import BreakerConfig
from orchestrator.breaker.shared import SharedBreaker, Sharing, read_view
from orchestrator.core import keys

CFG = BreakerConfig(min_calls=2, open_s=0.3, max_open_s=5.0, probe_timeout_s=5.0)

SYNC_ALWAYS = Sharing(sync_s=0.0)
"""Every call reads the shared state (the tests step one clock for both processes)."""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_trip_probe_and_close_are_shared(redis: aioredis.Redis) -> None:
    clock = Clock()
    a = SharedBreaker(redis, "d", CFG, sharing=SYNC_ALWAYS, clock=clock)
    b = SharedBreaker(redis, "d", CFG, sharing=SYNC_ALWAYS, clock=clock)
    assert await a.allow() == "call" and await b.allow() == "call"
    await a.record("error")
    await a.record("error")
    assert a.state == "open"
    assert await b.allow() == "reject" and b.state == "open"  # adopted from Redis
    view = await read_view(redis, "d")
    assert view.state == "open" and view.trips == 1 and 0 < view.open_left_s <= 0.3

    # the open time passes on the server (its clock decides) and locally
    await redis.hset(keys.breaker("d"), "until_ms", 0)
    clock.now += 1.0
    verdicts = [await a.allow(), await b.allow()]
    assert sorted(verdicts) == ["probe", "reject"]  # exactly one probe across processes
    prober = a if verdicts[0] == "probe" else b
    other = b if prober is a else a
    await prober.record("ok", probe=True)
    assert prober.state == "closed"
    await other.sync(force=True)
    assert other.state == "closed" and await other.allow() == "call"
    assert (await read_view(redis, "d")).state == "closed"


async def test_a_failed_probe_reopens_for_everyone(redis: aioredis.Redis) -> None:
    clock = Clock()
    a = SharedBreaker(redis, "e", CFG, sharing=SYNC_ALWAYS, clock=clock)
    b = SharedBreaker(redis, "e", CFG, sharing=SYNC_ALWAYS, clock=clock)
    await a.record("unreachable")
    await redis.hset(keys.breaker("e"), "until_ms", 0)
    clock.now += 1.0
    assert await a.allow() == "probe"
    await a.record("error", probe=True)
    assert a.state == "open"
    assert await b.allow() == "reject"
    assert (await read_view(redis, "e")).trips == 2


async def test_a_refused_credential_trips_only_the_process_that_sent_it(
    redis: aioredis.Redis,
) -> None:
    clock = Clock()
    wrong_key = SharedBreaker(redis, "f", CFG, sharing=SYNC_ALWAYS, clock=clock)
    healthy = SharedBreaker(redis, "f", CFG, sharing=SYNC_ALWAYS, clock=clock)
    with capture_logs() as logs:
        await wrong_key.record("credentials")  # a 401 to this process's own key
    assert wrong_key.state == "open" and wrong_key.machine.reason == "credentials"
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["circuit_opened_locally"]
    assert (await read_view(redis, "f")).state == "closed"  # nothing written to Redis
    assert not await redis.exists(keys.breaker("f"))
    assert await healthy.allow() == "call" and healthy.state == "closed"
    assert await wrong_key.allow() == "reject"  # still open here, after adopting Redis

    # its half-open probe is its own: the shared probe key stays free for the others
    clock.now += 1.0
    assert await wrong_key.allow() == "probe"
    assert not await redis.exists(keys.breaker_probe("f"))
    await wrong_key.record("credentials", probe=True)
    assert wrong_key.state == "open" and (await read_view(redis, "f")).trips == 0


async def test_with_a_guard_a_dead_redis_leaves_the_local_breaker_deciding_at_once() -> None:
    from orchestrator.core import redis_client
    from orchestrator.core.fail_open import FailOpen
    from orchestrator.core.serving import free_port

    dead = redis_client.connect(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    clock = Clock()
    counted: list[str] = []
    guard = FailOpen(0.05, clock=clock, on_fail_open=counted.append)
    breaker = SharedBreaker(dead, "g", CFG, sharing=Sharing(sync_s=0.0, guard=guard), clock=clock)
    try:
        assert await breaker.allow() == "call"  # the read failed open (error or deadline)
        await breaker.record("error")
        await breaker.record("error")  # trips locally; sharing it fails open (cooling down)
        assert breaker.state == "open" and await breaker.allow() == "reject"
    finally:
        await dead.aclose()
    assert counted[0] == "breaker_sync" and "breaker_trip" in counted

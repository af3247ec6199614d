"""The learnt output lengths in a real Redis: a window shared by every worker process."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from structlog.testing import capture_logs

from orchestrator.core import keys
from orchestrator.core.schemas import QueuedRequest
from orchestrator.worker.lengths import LENGTHS_TTL_S, OutputLengths, Sizer
from orchestrator.worker.metrics import WorkerMetrics
from tests.support.clock import FakeClock


def _message(rid: str = "r1", tenant: str = "acme", **body: Any) -> QueuedRequest:
    return QueuedRequest(
        id=rid,
        deployment="dep",
        tenant=tenant,
        body={"messages": [{"role": "user", "content": "hi"}], **body},
        reply_key=keys.reply(rid),
        enqueued_at=0.0,
        deadline=60.0,
    )


def _answer(finish: str, completion: int) -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": completion, "total_tokens": 5},
    }


async def test_lengths_are_a_trimmed_window_per_tenant_with_an_expiry(
    redis: aioredis.Redis,
) -> None:
    lengths = OutputLengths(redis, window=5, clock=FakeClock())
    for n in range(1, 9):
        await lengths.learn("dep", "acme", n)
    await lengths.learn("dep", "other", 99)

    key = keys.output_lengths("dep", "acme")
    assert [int(v) for v in await redis.lrange(key, 0, -1)] == [8, 7, 6, 5, 4]
    assert 0 < await redis.ttl(key) <= LENGTHS_TTL_S
    assert await lengths.recent("dep", "acme") == [8, 7, 6, 5, 4]
    assert await lengths.recent("dep", "other") == [99]
    assert await lengths.recent("other-dep", "acme") == []
    assert keys.same_slot(key, keys.queue("dep"))  # in the deployment's slot


async def test_a_process_sees_other_workers_lengths_after_its_refresh(
    redis: aioredis.Redis,
) -> None:
    clock = FakeClock()
    mine = OutputLengths(redis, refresh_s=5.0, clock=clock)
    theirs = OutputLengths(redis, refresh_s=5.0, clock=FakeClock())
    assert await mine.recent("dep", "acme") == []

    await theirs.learn("dep", "acme", 40)
    await mine.learn("dep", "acme", 30)
    # our own length counts at once; the other worker's only after a refresh
    assert await mine.recent("dep", "acme") == [30]
    clock.advance(4.9)
    assert await mine.recent("dep", "acme") == [30]
    clock.advance(0.2)
    assert await mine.recent("dep", "acme") == [30, 40]


async def test_the_sizer_sizes_from_shared_lengths_and_learns_what_the_caller_gets(
    redis: aioredis.Redis,
) -> None:
    writer = Sizer(OutputLengths(redis, clock=FakeClock()))
    for i in range(19):
        plan = await writer.plan(_message(f"w{i}", max_tokens=2_000))
        assert plan.message.body["max_tokens"] == 2_000  # warm-up: the caller's limit
        assert not await writer.rerun(plan, _answer("stop", 100))

    other = Sizer(OutputLengths(redis, clock=FakeClock()))  # another worker process
    assert (await other.plan(_message(max_tokens=2_000))).sized is None  # 19 < 20
    assert not await writer.rerun(await writer.plan(_message(max_tokens=2_000)), {})
    fresh = Sizer(OutputLengths(redis, clock=FakeClock()))
    assert (await fresh.plan(_message(max_tokens=2_000))).sized is None  # no usage: not learnt
    await writer.rerun(await writer.plan(_message(max_tokens=2_000)), _answer("stop", 100))

    metrics = WorkerMetrics(deployments=["dep"])
    third = Sizer(OutputLengths(redis, clock=FakeClock()), metrics=metrics)
    plan = await third.plan(_message("long", max_tokens=2_000))
    assert plan.message.body["max_tokens"] == 125  # p95 100 x 1.25
    assert await third.rerun(plan, _answer("length", 125))  # cut by us: again
    assert plan.message.body["max_tokens"] == 2_000
    assert not await third.rerun(plan, _answer("stop", 900))
    assert third.counts == {"sized": 1, "reruns": 1}
    assert repr(third) == "<Sizer auto sized=1 reruns=1>"
    sized = metrics.registry.get_sample_value
    assert sized("ptu_worker_sized_calls_total", {"deployment": "dep", "outcome": "rerun"}) == 1
    # the cut call taught nothing, its re-run the real length
    learnt = await redis.lrange(keys.output_lengths("dep", "acme"), 0, -1)
    assert sorted(int(v) for v in learnt) == [100] * 20 + [900]

    # another tenant has learnt nothing yet
    assert (await third.plan(_message(tenant="new", max_tokens=2_000))).sized is None


async def test_off_never_sizes_nor_learns(redis: aioredis.Redis) -> None:
    lengths = OutputLengths(redis, clock=FakeClock())
    for _ in range(50):
        await lengths.learn("dep", "acme", 100)
    off = Sizer.off()
    plan = await off.plan(_message(max_tokens=2_000))
    assert plan.message.body["max_tokens"] == 2_000
    assert not await off.rerun(plan, _answer("length", 2_000))
    assert await redis.llen(keys.output_lengths("dep", "acme")) == 50
    assert repr(off) == "<Sizer off sized=0 reruns=0>"


async def test_an_unreachable_redis_sends_the_callers_limit() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    try:
        sizer = Sizer(OutputLengths(dead, clock=FakeClock()))
        with capture_logs() as logs:
            plan = await sizer.plan(_message(max_tokens=2_000))
            assert not await sizer.rerun(plan, _answer("stop", 10))
        assert plan.message.body["max_tokens"] == 2_000
        events = [e["event"] for e in logs]
        assert events == ["output_lengths_unavailable", "output_length_not_learnt"]
    finally:
        await dead.aclose()

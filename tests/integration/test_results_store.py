"""ResultStore against the real server: exactly-once completion, expiry, batches, waits."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import QueuedRequest, ResultDocument

TTL = 3600


def queued(rid: str = "r1", *, batch_id: str | None = None, ttl_s: float = 600) -> QueuedRequest:
    now = time.time()
    return QueuedRequest(
        id=rid,
        deployment="d1",
        body={"messages": []},
        tenant="acme",
        custom_id=f"c-{rid}",
        reply_key=keys.reply(rid),
        enqueued_at=now,
        deadline=now + ttl_s,
        batch_id=batch_id,
    )


def doc(rid: str = "r1", status: str = "completed", batch_id: str | None = None) -> ResultDocument:
    return ResultDocument.model_validate(
        {
            "id": rid,
            "custom_id": f"c-{rid}",
            "status": status,
            "status_code": 200 if status == "completed" else 500,
            "response": {"choices": []} if status == "completed" else None,
            "error": None if status == "completed" else {"code": "x", "message": "y"},
            "deployment": "d1",
            "attempts": 1,
            "enqueued_at": 1.0,
            "completed_at": 2.0,
            "batch_id": batch_id,
        }
    )


async def test_register_get_progress(redis: aioredis.Redis) -> None:
    store = ResultStore(redis, reply_ttl_s=TTL)
    req = queued()
    await store.register(req)
    state = await store.get("r1")
    assert state is not None
    assert (state.status, state.tenant, state.reply_key, state.result) == (
        "queued",
        "acme",
        keys.reply("r1"),
        None,
    )
    assert state.custom_id == "c-r1" and state.deployment == "d1"
    ttl = await redis.ttl(keys.request("r1"))
    assert TTL + 590 <= ttl <= TTL + 601  # deadline + reply ttl
    await store.mark_in_progress("r1")
    assert (await store.get("r1")).status == "in_progress"  # type: ignore[union-attr]
    assert await store.get("unknown") is None


async def test_forget_undoes_register(redis: aioredis.Redis) -> None:
    store = ResultStore(redis, reply_ttl_s=TTL)
    await store.register(queued())
    await store.forget("r1")
    assert await store.get("r1") is None


async def test_concurrent_complete_writes_exactly_once(redis: aioredis.Redis) -> None:
    store = ResultStore(redis, reply_ttl_s=TTL)
    await store.register(queued())
    await store.mark_in_progress("r1")
    results = await asyncio.gather(*(store.complete(doc(), keys.reply("r1")) for _ in range(50)))
    assert results.count(True) == 1
    replies = await redis.lrange(keys.reply("r1"), 0, -1)
    assert len(replies) == 1
    assert ResultDocument.model_validate_json(replies[0]) == doc()
    assert 0 < await redis.ttl(keys.reply("r1")) <= TTL
    assert 0 < await redis.ttl(keys.result("r1")) <= TTL
    state = await store.get("r1")
    assert state is not None and state.status == "completed" and state.result == doc()
    await store.mark_in_progress("r1")  # a redelivery starting late does not regress it
    assert (await store.get("r1")).status == "completed"  # type: ignore[union-attr]


async def test_result_document_wire_shape(redis: aioredis.Redis) -> None:
    store = ResultStore(redis, reply_ttl_s=TTL)
    assert await store.complete(doc("r2", "failed"), "tenant:acme:inbox")
    [raw] = await redis.lrange("tenant:acme:inbox", 0, -1)
    parsed = ResultDocument.model_validate_json(raw).model_dump()
    assert set(parsed) >= {
        "id", "custom_id", "status", "status_code", "error", "usage", "deployment",
        "attempts", "enqueued_at", "completed_at",
    }  # fmt: skip
    assert b"batch_id" not in raw
    state = await store.get("r2")
    assert state is not None and state.status == "failed" and state.reply_key == "tenant:acme:inbox"


async def test_batch_results_and_counters(redis: aioredis.Redis) -> None:
    store = ResultStore(redis, reply_ttl_s=TTL)
    await redis.hset(keys.batch("b1"), mapping={"status": "in_progress", "completed": 0})
    await redis.expire(keys.batch("b1"), 5000)
    outcomes = {"a": "completed", "b": "completed", "c": "failed", "d": "expired"}
    for rid, status in outcomes.items():
        await store.register(queued(rid, batch_id="b1"))
        for _ in range(3):  # redeliveries complete again: counted once
            await store.complete(doc(rid, status, batch_id="b1"), keys.reply(rid))
    counters = await redis.hgetall(keys.batch("b1"))
    assert counters[b"completed"] == b"2" and counters[b"failed"] == b"2"
    marks = await redis.hgetall(keys.batch_results("b1"))
    assert marks == {b"a": b"c", b"b": b"c", b"c": b"f", b"d": b"f"}  # one letter, no copy
    for rid in outcomes:  # a batch line's document is stored once: no reply list copy
        assert await redis.llen(keys.reply(rid)) == 0
        assert await redis.exists(keys.result(rid))
    assert 4000 < await redis.ttl(keys.batch_results("b1")) <= 5000


async def test_wait_returns_when_result_arrives(redis: aioredis.Redis) -> None:
    store = ResultStore(redis, reply_ttl_s=TTL)
    await store.register(queued())

    async def finish_later() -> None:
        await asyncio.sleep(0.3)
        await store.complete(doc(), keys.reply("r1"))

    task = asyncio.create_task(finish_later())
    started = time.monotonic()
    state = await store.wait("r1", timeout_s=10.0)
    elapsed = time.monotonic() - started
    await task
    assert state is not None and state.result == doc()
    assert elapsed < 5.0  # woken by the notification, not the timeout


async def test_wait_times_out_with_current_state(redis: aioredis.Redis) -> None:
    store = ResultStore(redis, reply_ttl_s=TTL)
    await store.register(queued())
    started = time.monotonic()
    state = await store.wait("r1", timeout_s=0.3)
    assert time.monotonic() - started >= 0.25
    assert state is not None and state.status == "queued" and state.result is None
    assert await store.wait("nobody", timeout_s=5.0) is None  # unknown: no wait


async def test_wait_returns_at_once_when_done(redis: aioredis.Redis) -> None:
    store = ResultStore(redis, reply_ttl_s=TTL)
    await store.complete(doc(), keys.reply("r1"))
    state = await store.wait("r1", timeout_s=30.0)
    assert state is not None and state.status == "completed"


async def test_a_completion_cut_off_after_its_decision_is_settled_once(
    redis: aioredis.Redis,
) -> None:
    """Crash after step 1 (result written) before the push: settle pushes it, once."""
    store = ResultStore(redis, reply_ttl_s=TTL)
    await store.register(queued(batch_id="b9"))
    await redis.hset(keys.batch("b9"), mapping={"status": "in_progress", "completed": 0})
    await redis.expire(keys.batch("b9"), 5000)
    reply = keys.tenant_reply("acme", "inbox")
    winner = doc(batch_id="b9")
    # step 1 alone, as a worker killed right after it would leave things
    await store._decide(
        keys=[keys.result("r1"), keys.request("r1")],
        args=[winner.model_dump_json(), TTL, "completed", reply, keys.result_channel("r1")],
    )
    assert await redis.llen(reply) == 0
    for _ in range(3):  # the redelivery settles; later ones find nothing left to do
        assert await store.settle("r1", reply)
    assert not await store.complete(doc(batch_id="b9", status="failed"), reply)  # loses
    assert await redis.llen(reply) == 0  # a batch line is counted, not pushed
    assert (await redis.hgetall(keys.batch("b9")))[b"completed"] == b"1"
    assert await store.settle("nobody", reply) is False


async def test_a_cut_off_completion_outside_a_batch_is_pushed_once(
    redis: aioredis.Redis,
) -> None:
    store = ResultStore(redis, reply_ttl_s=TTL)
    await store.register(queued())
    reply = keys.tenant_reply("acme", "inbox")
    winner = doc()
    await store._decide(
        keys=[keys.result("r1"), keys.request("r1")],
        args=[winner.model_dump_json(), TTL, "completed", reply, keys.result_channel("r1")],
    )
    for _ in range(3):
        assert await store.settle("r1", reply)
    assert not await store.complete(doc(status="failed"), reply)
    pushed = [ResultDocument.model_validate_json(x) for x in await redis.lrange(reply, 0, -1)]
    assert pushed == [winner]


def test_completion_keys_of_one_step_share_a_slot() -> None:
    assert keys.same_slot(keys.result("r1"), keys.request("r1"), keys.reply("r1"))
    for reply in (keys.tenant_reply("acme", "inbox"), keys.reply("r1"), "tenant:acme:inbox"):
        assert keys.same_slot(reply, keys.reply_pushed(reply, "r1"))
    assert keys.same_slot(keys.batch_results("b1"), keys.batch("b1"))
    assert keys.same_slot(keys.estimate("d"), keys.estimate_request("d", "x"), keys.slots("d"))
    assert not keys.same_slot(keys.request("r1"), keys.batch("b1"))


async def test_a_cancel_writes_only_while_queued_and_the_worker_then_sees_it_done(
    redis: aioredis.Redis,
) -> None:
    store = ResultStore(redis, reply_ttl_s=TTL)
    await store.register(queued())
    cancel = doc(status="failed")
    assert await store.complete_if_queued(cancel, keys.reply("r1"))
    assert not await store.mark_in_progress("r1")  # the worker's pre-call step: no call
    assert not await store.complete_if_queued(cancel, keys.reply("r1"))
    assert not await store.complete(doc(), keys.reply("r1"))  # a late call loses
    state = await store.get("r1")
    assert state is not None and state.result == cancel
    assert await redis.llen(keys.reply("r1")) == 1

    await store.register(queued("r2"))
    assert await store.mark_in_progress("r2")  # running: a cancel writes nothing
    assert await store.mark_in_progress("r2")  # a redelivery goes on
    assert not await store.complete_if_queued(doc("r2", status="failed"), keys.reply("r2"))
    assert (await store.get("r2")).result is None  # type: ignore[union-attr]

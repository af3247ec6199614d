"""Overflow claims against the real server: a queued line leaves the PTU queue for exactly
one place (the worker's start and the claim exclude each other), an abandoned claim is
taken over after its lease, a line with a result is never claimed."""

from __future__ import annotations

import redis.asyncio as aioredis

from ingress.batch.deadline.claims import Claims
from orchestrator.core import keys
from orchestrator.core.results import ResultStore
from tests.integration.test_results_store import TTL, doc, queued

NOW = 1_000.0


async def test_the_claim_and_the_workers_start_exclude_each_other(redis: aioredis.Redis) -> None:
    store, claims = ResultStore(redis, reply_ttl_s=TTL), Claims(redis)
    for rid in ("a", "b"):
        await store.register(queued(rid, batch_id="batch_x"))
    assert await claims.claim(["a"], "ingress-1", NOW, 60) == (["a"], [])
    # the worker receiving the moved line finds it neither queued nor started: no call
    assert await store.mark_in_progress("a") is False
    state = await store.get("a")
    assert state is not None and state.status == "in_progress"
    # a line the worker started first cannot be claimed
    assert await store.mark_in_progress("b") is True
    assert await claims.claim(["b"], "ingress-1", NOW, 60) == ([], [])
    assert await claims.statuses(["a", "b", "none"]) == ["overflow", "in_progress", None]


async def test_an_abandoned_claim_is_taken_over_after_its_lease_only(redis: aioredis.Redis) -> None:
    store, claims = ResultStore(redis, reply_ttl_s=TTL), Claims(redis)
    await store.register(queued("a", batch_id="batch_x"))
    assert await claims.claim(["a"], "ingress-1", NOW, 60) == (["a"], [])
    assert await claims.claim(["a"], "ingress-2", NOW + 59, 60) == ([], [])
    assert await claims.claim(["a"], "ingress-2", NOW + 61, 60) == ([], ["a"])
    # the new claimant's time restarts the lease
    assert await claims.claim(["a"], "ingress-3", NOW + 100, 60) == ([], [])


async def test_a_line_with_a_result_is_never_claimed_and_keeps_one_result(
    redis: aioredis.Redis,
) -> None:
    store, claims = ResultStore(redis, reply_ttl_s=TTL), Claims(redis)
    await store.register(queued("a", batch_id="batch_x"))
    assert await claims.claim(["a"], "ingress-1", NOW, 60) == (["a"], [])
    first = doc("a", batch_id="batch_x")
    assert await store.complete(first, "unused") is True
    # a second place finishing the same line (a taken-over call) does not count twice
    assert await store.complete(doc("a", status="failed", batch_id="batch_x"), "unused") is False
    assert await claims.claim(["a"], "ingress-2", NOW + 1_000, 60) == ([], [])
    assert await claims.statuses(["a"]) == ["done"]
    state = await store.get("a")
    assert state is not None and state.result is not None and state.result.status == "completed"


async def test_a_late_settle_after_the_batch_ended_counts_nothing(redis: aioredis.Redis) -> None:
    # the PTU queue's copy of a line overflow answered may reach the worker after the end
    store = ResultStore(redis, reply_ttl_s=TTL)
    await redis.hset(keys.batch("batch_x"), mapping={"status": "in_progress", "completed": "0"})
    await store.register(queued("a", batch_id="batch_x"))
    assert await store.complete(doc("a", batch_id="batch_x"), "unused") is True
    assert await redis.hget(keys.batch("batch_x"), "completed") == b"1"
    await redis.hset(keys.batch("batch_x"), "status", "completed")
    await redis.delete(keys.batch_results("batch_x"))  # what deactivating the batch does
    assert await store.settle("a", "unused") is True
    assert await redis.hget(keys.batch("batch_x"), "completed") == b"1"

"""RedisCheckpointStore against the real server, and under the SDK's own EventProcessor.

No broker can stand in for Event Hubs (AZURE_FACTS §8), so the processor runs with
an in-memory partition log behind the SDK's consumer seams (`eventhubs_fakes`), as
the SDK's processor tests do.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
from azure.eventhub.aio._eventprocessor.event_processor import EventProcessor

from orchestrator.queues.eventhubs.checkpoint_redis import RedisCheckpointStore
from tests.integration.eventhubs_fakes import CG, HUB, NS, FakeConsumerClient, FakeHub


def ownership(pid: str, owner: str, etag: str | None = None) -> dict[str, Any]:
    o = {
        "fully_qualified_namespace": NS,
        "eventhub_name": HUB,
        "consumer_group": CG,
        "partition_id": pid,
        "owner_id": owner,
    }
    if etag is not None:
        o["etag"] = etag
    return o


async def test_claims_new_partitions_with_etag_and_epoch_time(redis: aioredis.Redis) -> None:
    store = RedisCheckpointStore(redis)
    before = time.time()
    won = list(await store.claim_ownership([ownership("0", "a"), ownership("1", "a")]))
    assert [o["partition_id"] for o in won] == ["0", "1"]
    assert all(isinstance(o["etag"], str) and o["etag"] for o in won)
    assert all(isinstance(o["last_modified_time"], float) for o in won)
    assert before - 1 <= won[0]["last_modified_time"] <= time.time() + 1
    listed = list(await store.list_ownership(NS, HUB, CG))
    assert [(o["partition_id"], o["owner_id"], o["etag"]) for o in listed] == [
        (o["partition_id"], "a", o["etag"]) for o in won
    ]
    assert listed[0]["fully_qualified_namespace"] == NS and listed[0]["consumer_group"] == CG


async def test_claim_is_compare_and_swap_on_etag(redis: aioredis.Redis) -> None:
    store = RedisCheckpointStore(redis)
    [first] = await store.claim_ownership([ownership("0", "a")])
    assert list(await store.claim_ownership([ownership("0", "b")])) == []  # exists, no etag
    assert list(await store.claim_ownership([ownership("0", "b", etag="stale")])) == []
    [stolen] = await store.claim_ownership([ownership("0", "b", etag=first["etag"])])
    assert stolen["etag"] != first["etag"]
    assert list(await store.claim_ownership([ownership("0", "a", etag=first["etag"])])) == []
    assert list(await store.claim_ownership([ownership("7", "a", etag="made-up")])) == []
    [owner] = await store.list_ownership(NS, HUB, CG)
    assert (owner["owner_id"], owner["etag"]) == ("b", stolen["etag"])


async def test_concurrent_claims_have_one_winner(redis: aioredis.Redis) -> None:
    store = RedisCheckpointStore(redis)
    [first] = await store.claim_ownership([ownership("0", "a")])
    results = await asyncio.gather(
        *(store.claim_ownership([ownership("0", f"o{i}", etag=first["etag"])]) for i in range(20))
    )
    assert sum(len(list(r)) for r in results) == 1


async def test_mixed_claim_returns_only_winners(redis: aioredis.Redis) -> None:
    store = RedisCheckpointStore(redis)
    await store.claim_ownership([ownership("0", "a")])
    won = list(await store.claim_ownership([ownership("0", "b"), ownership("1", "b")]))
    assert [o["partition_id"] for o in won] == ["1"]


async def test_checkpoints_round_trip_and_are_scoped(redis: aioredis.Redis) -> None:
    store = RedisCheckpointStore(redis)
    base = {"fully_qualified_namespace": NS, "eventhub_name": HUB, "consumer_group": CG}
    await store.update_checkpoint(
        {**base, "partition_id": "0", "offset": "300", "sequence_number": 3}
    )
    await store.update_checkpoint(
        {**base, "partition_id": "0", "offset": "500", "sequence_number": 5}
    )
    await store.update_checkpoint(
        {**base, "partition_id": "1", "offset": "0", "sequence_number": 0}
    )
    listed = list(await store.list_checkpoints(NS, HUB, CG))
    assert [(c["partition_id"], c["offset"], c["sequence_number"]) for c in listed] == [
        ("0", "500", 5),
        ("1", "0", 0),
    ]
    assert listed[0]["eventhub_name"] == HUB
    assert list(await store.list_checkpoints(NS, HUB, "other-group")) == []
    assert list(await store.list_ownership(NS, "other-hub", CG)) == []


async def test_sdk_processors_balance_partitions_through_the_store(redis: aioredis.Redis) -> None:
    hub = FakeHub(partitions=4)
    store = RedisCheckpointStore(redis)
    client = FakeConsumerClient(hub, store)

    async def on_event(_ctx: Any, _event: Any) -> None:
        return None

    def processor() -> EventProcessor:
        return EventProcessor(
            client, CG, on_event, checkpoint_store=store, load_balancing_interval=0.2
        )

    p1, p2 = processor(), processor()
    t1 = asyncio.create_task(p1.start())
    await asyncio.sleep(0.8)
    assert len(p1._tasks) == 4
    t2 = asyncio.create_task(p2.start())
    for _ in range(60):
        await asyncio.sleep(0.1)
        if len(p1._tasks) == len(p2._tasks) == 2:
            break
    assert (len(p1._tasks), len(p2._tasks)) == (2, 2)
    owners = {o["owner_id"] for o in await store.list_ownership(NS, HUB, CG)}
    assert owners == {p1._id, p2._id}
    await p1.stop()
    for _ in range(60):
        await asyncio.sleep(0.1)
        if len(p2._tasks) == 4:
            break
    assert len(p2._tasks) == 4  # released partitions are taken over
    await p2.stop()
    for t in (t1, t2):
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)

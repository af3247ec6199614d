"""Every multi-key operation the processes send, on whatever Redis the suite runs.

On a 3-master cluster (`PTU_TEST_REDIS=cluster`, run by `make test`) a key outside
its entity's slot fails with CROSSSLOT; on one server these pass trivially, which
is why the Makefile runs this module on the cluster too.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.exceptions import ConnectionError

from ingress.batch.files import Files
from ingress.batch.filestore.local import LocalFileStore
from ingress.batch.store import BatchStore, line_request_id
from orchestrator.cli.status import collect
from orchestrator.core import keys, redis_client
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import QueuedRequest, ResultDocument, TokenEvent
from orchestrator.core.serving import free_port
from orchestrator.core.settings import DeploymentConfig, Settings
from orchestrator.queues.redis_streams import RedisStreamsQueue
from orchestrator.utilisation.estimate.store import EstimateStore
from orchestrator.utilisation.factory import make_source
from tests.support.token_events import publish

DEPLOYMENTS = [
    DeploymentConfig(name=f"d{i}", model="gpt-4o-mini", ptus=15) for i in range(4)
]  # several deployments: their keys land on different nodes


def message(
    rid: str, *, batch_id: str | None = None, reply_key: str | None = None
) -> QueuedRequest:
    now = time.time()
    return QueuedRequest(
        id=rid,
        deployment="d0",
        body={"messages": [{"role": "user", "content": "hi"}]},
        tenant="acme",
        reply_key=reply_key or keys.reply(rid),
        enqueued_at=now,
        deadline=now + 600,
        batch_id=batch_id,
    )


def result(m: QueuedRequest) -> ResultDocument:
    return ResultDocument(
        id=m.id, custom_id=None, status="completed", status_code=200, response={"ok": True},
        deployment=m.deployment, attempts=1, enqueued_at=m.enqueued_at,
        completed_at=time.time(), batch_id=m.batch_id,
    )  # fmt: skip


async def test_batch_file_and_result_flow(redis: aioredis.Redis, tmp_path: Path) -> None:
    files = Files(redis, LocalFileStore(tmp_path))
    batches, results = BatchStore(redis), ResultStore(redis, 600)
    staged = files.staged()
    staged.write_bytes(b'{"custom_id": "a"}\n')
    meta = await files.save("acme", "in.jsonl", "batch", staged, lines="1")
    chunks = await files.chunks("acme", meta["id"])
    assert b"".join([c async for c in chunks]) == b'{"custom_id": "a"}\n'
    listed, more = await files.list_files("acme", 10)
    assert [f["id"] for f in listed] == [meta["id"]] and not more
    lines = [message(line_request_id("batch_1", i), batch_id="batch_1") for i in range(6)]
    await batches.create({"id": "batch_1", "tenant": "acme", "status": "in_progress", "total": "6"})
    assert await batches.lease("batch_1", "me", 30) and not await batches.lease(
        "batch_1", "you", 30
    )
    for m in lines:
        await results.register(m, only_new=True)
        await results.mark_in_progress(m.id)
        assert await results.complete(result(m), m.reply_key)
        assert not await results.complete(result(m), m.reply_key)  # exactly once
    assert (await batches.get("acme", "batch_1"))["completed"] == "6"
    assert await batches.claim_finalization("batch_1")
    assert await batches.transition("batch_1", ["finalizing"], "completed") == "completed"
    await batches.deactivate("batch_1")
    assert await batches.active() == []
    page, _ = await batches.list_batches("acme", 10)
    assert [b["id"] for b in page] == ["batch_1"]
    await files.delete("acme", meta["id"])
    state = await results.get(lines[0].id)
    assert state is not None and state.status == "completed"


async def test_queue_estimate_and_status(redis: aioredis.Redis, redis_url: str) -> None:
    settings = Settings(
        redis_url=redis_url, deployments=DEPLOYMENTS, azure_openai_api_key=SecretStr("k")
    )
    store = EstimateStore(redis, DEPLOYMENTS, window_s=10.0, max_age_s=5.0)
    await store.heartbeat(applied="0-0")
    for d in DEPLOYMENTS:
        event = TokenEvent(request_id="r", deployment=d.name, phase="admit", timestamp=0,
                           prompt_tokens=100, max_tokens=100)  # fmt: skip
        await store.record(event)
        await publish(redis, event)
        assert (await store.read(d.name)).value > 0
    queue = RedisStreamsQueue(redis, "d0", "w1", liveness_s=1.0)
    await queue.put(message("req_q"))
    [delivery] = await queue.receive(1, timeout_s=2.0)
    await queue.release(delivery)
    [again] = await queue.receive(1, timeout_s=5.0)
    assert again.delivery_count == 2
    await queue.dead_letter(again, "test")
    assert await redis.xlen(keys.dead_letter("d0")) == 1
    await queue.close()
    rows = await collect(settings, redis, make_source(settings, redis), time.time())
    assert [r.deployment for r in rows] == [d.name for d in DEPLOYMENTS]
    assert rows[0].queue_depth == 0


async def test_an_unreachable_cluster_is_a_connection_error() -> None:
    # redis-py's own RedisClusterException is no RedisError: every `except RedisError`
    # (503 queue_unavailable, a closed throttle) would miss it
    client = redis_client.connect(f"redis://127.0.0.1:{free_port()}/0", cluster=True)
    with pytest.raises(ConnectionError, match="Redis Cluster unavailable"):
        await client.ping()
    await client.aclose()

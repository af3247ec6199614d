"""The batch jobs against a real Redis: resumable expansion that never queues a line twice,
closing lines, and the finaliser's files (one line per custom_id, input order)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from ingress.batch import job
from ingress.batch.store import line_request_id
from orchestrator.core import keys
from orchestrator.core.schemas import ResultDocument
from orchestrator.core.settings import Settings, load_settings
from tests import redis_mode

DEPLOYMENT = "ptu"


def _settings(redis_url: str, files: Path) -> Settings:
    return load_settings(
        redis_url=redis_url, redis_cluster=redis_mode.CLUSTER, files_dir=str(files),
        azure_openai_endpoint="http://127.0.0.1:9", azure_openai_api_key="k",
        deployments=[{"name": DEPLOYMENT, "model": "gpt-4o-mini", "ptus": 15}],
    )  # fmt: skip


@pytest.fixture
async def ctx(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> AsyncIterator[job.JobContext]:
    async with job.context(_settings(redis_url, tmp_path)) as made:
        yield made
    await redis.flushdb()  # leave no batch behind for later modules' ingresses


async def _batch(ctx: job.JobContext, n: int, batch_id: str = "batch_t") -> None:
    lines = [
        {"custom_id": f"c-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": DEPLOYMENT, "messages": [{"role": "user", "content": f"q{i}"}]}}
        for i in range(n)
    ]  # fmt: skip
    staged = ctx.files.staged()
    # blank lines do not count as requests and do not shift the indexes
    staged.write_bytes(b"\n".join(json.dumps(x).encode() for x in lines) + b"\n\n")
    meta = await ctx.files.save("default", "in.jsonl", "batch", staged, lines=str(n))
    await ctx.batches.create({
        "id": batch_id, "tenant": "default", "status": "validating", "total": str(n),
        "input_file_id": meta["id"], "expires_at": str(time.time() + 3600),
        "reply_key": keys.tenant_reply("default", batch_id), "cursor": "0", "cursor_offset": "0",
    })  # fmt: skip
    assert await ctx.batches.lease(batch_id, "me", 60)


async def _queued_ids(redis: aioredis.Redis) -> list[str]:
    entries = await redis.xrange(keys.tenant_queue(DEPLOYMENT, "default", "batch"))
    return [json.loads(fields[b"message"])["id"] for _, fields in entries]


async def test_expansion_resumes_and_never_queues_a_line_twice(
    ctx: job.JobContext, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 3 * job.CHUNK + 17
    await _batch(ctx, n)
    monkeypatch.setattr(job, "SLICE_S", 0.0)  # one chunk per job: stops after the first
    assert await job.expand(ctx, "batch_t", "me") == "more"
    fields = await ctx.batches.fields("batch_t")
    assert fields["cursor"] == str(job.CHUNK) and fields["status"] == "in_progress"
    # a job killed after its puts but before the cursor moved: the next one redoes the chunk
    await ctx.batches.update("batch_t", cursor="0", cursor_offset="0")
    outcome = "more"
    while outcome == "more":
        outcome = await job.expand(ctx, "batch_t", "me")
    assert outcome == "done"
    ids = await _queued_ids(redis)
    assert sorted(ids) == sorted(line_request_id("batch_t", i) for i in range(n))
    assert (await ctx.batches.fields("batch_t"))["expanded"] == "1"


async def test_another_owner_cannot_expand(ctx: job.JobContext, redis: aioredis.Redis) -> None:
    await _batch(ctx, 5)
    with pytest.raises(job.LeaseLost):
        await job.expand(ctx, "batch_t", "someone-else")
    assert await _queued_ids(redis) == []


async def test_cancel_closes_every_line_then_the_files_have_one_line_each(
    ctx: job.JobContext, redis: aioredis.Redis
) -> None:
    n = job.CHUNK + 3
    await _batch(ctx, n)
    assert await job.expand(ctx, "batch_t", "me") == "done"
    for i in range(0, n, 2):  # half the lines ran
        rid = line_request_id("batch_t", i)
        doc = ResultDocument(
            id=rid, custom_id=f"c-{i}", status="completed", status_code=200,
            response={"choices": []}, deployment=DEPLOYMENT, attempts=1, enqueued_at=0,
            completed_at=1, batch_id="batch_t",
        )  # fmt: skip
        assert await ctx.results.complete(doc, "unused")
    assert await ctx.batches.transition("batch_t", ["in_progress"], "cancelling") == "cancelling"
    assert await job.close(ctx, "batch_t", "me", "batch_cancelled") == "closed"
    assert await job.close(ctx, "batch_t", "me", "batch_cancelled") == "closed"  # idempotent
    fields = await ctx.batches.fields("batch_t")
    assert int(fields["completed"]) + int(fields["failed"]) == n
    assert await job.finalize(ctx, "batch_t", "me") == "finalized"
    assert await job.finalize(ctx, "batch_t", "me") == "claimed_elsewhere"
    fields = await ctx.batches.fields("batch_t")
    assert fields["status"] == "cancelled" and fields["cancelled_at"]
    out = await _content(ctx, fields["output_file_id"])
    err = await _content(ctx, fields["error_file_id"])
    assert [x["custom_id"] for x in out] == [f"c-{i}" for i in range(0, n, 2)]
    assert [x["custom_id"] for x in err] == [f"c-{i}" for i in range(1, n, 2)]
    assert {x["error"]["code"] for x in err} == {"batch_cancelled"}
    assert await ctx.batches.active() == []


async def _content(ctx: job.JobContext, file_id: str) -> list[dict[str, object]]:
    chunks = await ctx.files.chunks("default", file_id)
    data = b"".join([c async for c in chunks])
    return [json.loads(x) for x in data.splitlines()]

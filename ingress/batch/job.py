"""The batch jobs themselves, run in the offload process: expand, close, finalize.

Each job works on one batch under its job lease (`BatchStore.lease`, renewed as it
goes; a job that loses the lease stops) and is safe to run again from the start
after a crash, because everything it writes is idempotent:

- **expand** reads the input file from `cursor_offset` and enqueues its lines in
  chunks of `CHUNK` (record written only when new, `put` at most once per request id
  on Redis Streams), then advances the cursor; a crash repeats at most the chunk in
  hand and never queues a line twice. It stops after `SLICE_S` so the sweeper can
  turn to other batches, and as soon as the batch is cancelled or expired.
- **close** gives every line that has not started (queued, or not queued yet) a failed
  result with the batch's reason (`batch_cancelled`, `batch_expired`, `batch_failed`):
  the worker skips those lines. A line already at the deployment finishes normally and its
  result is counted and written to the output (its tokens are spent), so every line is
  counted once, by whoever wrote its result. A line still without a result
  `CLOSE_GRACE_S` after the close (its worker died) gets the reason's result then.
- **finalize** (`batch/finalize`) writes the output and error files and the final status.

What a job works with (connections, lease, the input in chunks) is `batch/job_context`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import structlog

from ingress.batch.filestore.base import FileMissing
from ingress.batch.finalize import finalize
from ingress.batch.job_context import (
    CHUNK,
    LEASE_S,
    PARALLEL,
    JobContext,
    LeaseLost,
    context,
    input_chunks,
    renew,
)
from ingress.batch.lines import line_request, requests_from
from ingress.batch.store import line_request_id
from orchestrator.core import keys
from orchestrator.core.schemas import QueuedRequest, ResultDocument
from orchestrator.core.settings import Settings
from orchestrator.queues.base import BulkPut

log = structlog.get_logger(__name__)

__all__ = [
    "CHUNK", "LEASE_S", "JobContext", "LeaseLost", "close", "context", "expand", "finalize",
    "run_job", "warm",
]  # fmt: skip

PACE = 1.0
"""Expansion idles this many times as long as each chunk took (1.0: half the time)."""
SLICE_S = 10.0
"""An expansion job returns after this long, so other batches' jobs get their turn."""
CLOSE_GRACE_S = 600.0
"""How long lines running when a batch stopped may take to finish (OpenAI's own cancel
takes up to 10 minutes) before a second close gives them the batch's reason too."""
REASONS = {
    "batch_cancelled": ("failed", "the batch was cancelled"),
    "batch_expired": ("expired", "the batch did not complete within its completion window"),
    "batch_failed": ("failed", "the batch failed"),
}


def warm() -> None:
    """Nothing: importing this module in the offload process is the warm-up."""


def run_job(settings: Settings, action: str, batch_id: str, owner: str) -> str:
    """Run one job to its end in this process; returns its outcome (for logs and tests)."""
    return asyncio.run(_run(settings, action, batch_id, owner))


async def _run(settings: Settings, action: str, batch_id: str, owner: str) -> str:
    async with context(settings) as ctx:
        try:
            if action == "expand":
                return await expand(ctx, batch_id, owner)
            if action == "finalize":
                return await finalize(ctx, batch_id, owner)
            if action == "expire":
                await ctx.batches.update(
                    batch_id, final_status="expired", expired_at=str(int(time.time()))
                )
                return await close(ctx, batch_id, owner, "batch_expired")
            if action == "close":
                fields = await ctx.batches.fields(batch_id)
                reason = {"expired": "batch_expired", "failed": "batch_failed"}.get(
                    fields.get("final_status", ""), "batch_cancelled"
                )
                return await close(ctx, batch_id, owner, reason)
        except LeaseLost:
            return "lease_lost"
    raise ValueError(f"unknown batch job {action!r}")


async def expand(ctx: JobContext, batch_id: str, owner: str) -> str:
    """Enqueue the batch's lines from its cursor on, for at most `SLICE_S`."""
    f = await ctx.batches.fields(batch_id)
    if f.get("status") not in ("validating", "in_progress") or f.get("final_status"):
        return "stopped"
    started = time.monotonic()
    index, offset = int(f.get("cursor", "0")), int(f.get("cursor_offset", "0"))
    tenant, reply_key = f["tenant"], f["reply_key"]
    deadline, ceiling = float(f["expires_at"]), ctx.ceiling(tenant)
    chunk: list[QueuedRequest] = []
    end = offset
    chunk_started = time.monotonic()
    try:
        stream = ctx.files.store.read(f["input_file_id"], offset)
        async for i, obj, after in requests_from(stream, offset, index):
            chunk.append(line_request(
                obj, i, batch_id=batch_id, tenant=tenant, reply_key=reply_key,
                deadline=deadline, now=time.time(), ceiling=ceiling,
                governance=ctx.governance,
            ))  # fmt: skip
            end = after
            if len(chunk) >= CHUNK:
                if not await _commit(ctx, f, chunk, end, owner):
                    return "stopped"
                chunk = []
                # pace: idle as long as the chunk took, so Redis (and the machine) serve
                # interactive work between chunks
                await asyncio.sleep((time.monotonic() - chunk_started) * PACE)
                chunk_started = time.monotonic()
                if time.monotonic() - started > SLICE_S:
                    return "more"
    except FileMissing:
        await _fail(ctx, batch_id, "input_file_missing", "the input file is gone from the store")
        return "failed"
    if chunk and not await _commit(ctx, f, chunk, end, owner):
        return "stopped"
    await ctx.batches.update(batch_id, expanded="1")
    await ctx.batches.transition(batch_id, ["validating"], "in_progress")
    log.info("batch_expanded", batch_id=batch_id, lines=f.get("total"))
    return "done"


async def _commit(
    ctx: JobContext, f: dict[str, str], chunk: list[QueuedRequest], end: int, owner: str
) -> bool:
    """Enqueue one chunk and advance the cursor past it; False when the batch stopped."""
    batch_id = f["id"]
    await renew(ctx, batch_id, owner)
    status = await ctx.redis.hmget(keys.batch(batch_id), ["status", "final_status"])
    if _text(status[0]) not in ("validating", "in_progress") or status[1] is not None:
        return False
    await ctx.results.register_new(chunk)
    by_deployment: dict[str, list[QueuedRequest]] = {}
    for req in chunk:
        by_deployment.setdefault(req.deployment, []).append(req)
    for deployment, group in by_deployment.items():
        queue = ctx.queues[deployment]
        if isinstance(queue, BulkPut):
            await queue.put_many(group)
        else:
            for start in range(0, len(group), PARALLEL):
                await asyncio.gather(*(queue.put(r) for r in group[start : start + PARALLEL]))
    last = int(chunk[-1].id.rsplit("_", 1)[1])
    await ctx.batches.update(batch_id, cursor=str(last + 1), cursor_offset=str(end))
    await ctx.batches.transition(batch_id, ["validating"], "in_progress")
    return True


async def _fail(ctx: JobContext, batch_id: str, code: str, message: str) -> None:
    error = {"code": code, "message": message, "line": None}
    await ctx.batches.update(
        batch_id, status="failed", failed_at=str(int(time.time())), final_status="failed",
        errors=json.dumps([error]),
    )  # fmt: skip
    log.error("batch_failed", batch_id=batch_id, code=code)


async def close(ctx: JobContext, batch_id: str, owner: str, reason: str) -> str:
    """Give every line that has not started the failed (or expired) result of `reason`;
    on the second close (`CLOSE_GRACE_S` later) every line still without a result."""
    f = await ctx.batches.fields(batch_id)
    if not f:
        return "gone"
    status, message = REASONS[reason]
    force = f.get("closed") == "1"
    closed = 0
    async for pending in input_chunks(ctx, f, owner):
        ids = [line_request_id(batch_id, i) for i, _ in pending]
        found = await ctx.results.results(ids)
        now = time.time()
        docs = [
            ResultDocument(
                id=rid, custom_id=str(obj.get("custom_id")), status=status,
                status_code=None, error={"code": reason, "message": message},
                deployment=str((obj.get("body") or {}).get("model", "")), attempts=0,
                enqueued_at=now, completed_at=now, batch_id=batch_id, tenant=f["tenant"],
            )
            for rid, (_, obj), there in zip(ids, pending, found, strict=True)
            if there is None
        ]  # fmt: skip
        for start in range(0, len(docs), PARALLEL):
            part = docs[start : start + PARALLEL]
            wrote = await asyncio.gather(
                *(_close_line(ctx, d, f["reply_key"], force) for d in part)
            )
            closed += sum(wrote)
    if not force:
        await ctx.batches.update(batch_id, closed="1", closed_at=repr(time.time()))
    log.info("batch_lines_closed", batch_id=batch_id, reason=reason, closed=closed, forced=force)
    return "closed"


async def _close_line(ctx: JobContext, doc: ResultDocument, reply_key: str, force: bool) -> bool:
    if force:
        return await ctx.results.complete(doc, reply_key)
    return await ctx.results.complete_if_queued(doc, reply_key, or_unknown=True)


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value

"""The batch jobs themselves, run in the offload process: expand, close, finalize.

Each job works on one batch under its job lease (`BatchStore.lease`, renewed as it
goes; a job that loses the lease stops) and is safe to run again from the start
after a crash, because everything it writes is idempotent:

- **expand** reads the input file from `cursor_offset` and enqueues its lines in
  chunks of `CHUNK` (record written only when new, `put` at most once per request id
  on Redis Streams), then advances the cursor; a crash repeats at most the chunk in
  hand and never queues a line twice. It stops after `SLICE_S` so the sweeper can
  turn to other batches, and as soon as the batch is cancelled or expired.
- **close** gives every line that has no result yet a failed result with the batch's
  reason (`batch_cancelled`, `batch_expired`, `batch_failed`): the worker skips those
  lines, and lines already running finish normally.
- **finalize** (under the finalisation claim) streams the input file once more, looks
  up each line's result in order and writes the output and error files to the file
  store, then records them and the final status; nothing is built by a GET.

Every job opens its own connections (the process is not the ingress) and closes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog

from ingress.batch.expiry import output_expiry_s
from ingress.batch.files import Files
from ingress.batch.filestore.base import FileMissing
from ingress.batch.filestore.factory import make_file_store
from ingress.batch.jsonl import output_line, succeeded
from ingress.batch.lines import line_request, requests_from
from ingress.batch.store import BatchStore, line_request_id
from ingress.chat.governance import Governance
from orchestrator.core import keys, redis_client
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import QueuedRequest, ResultDocument
from orchestrator.core.settings import Settings
from orchestrator.queues.base import BulkPut, Queue
from orchestrator.queues.factory import make_queue
from orchestrator.tenants.config import Tenancy

log = structlog.get_logger(__name__)

CHUNK = 500
"""Lines enqueued (or looked up) per round trip batch; the unit a crash may repeat."""
PACE = 1.0
"""Expansion idles this many times as long as each chunk took (1.0: half the time)."""
PARALLEL = 32
"""Single commands in flight at once (a cluster client's pool raises rather than waits)."""
SLICE_S = 10.0
"""An expansion job returns after this long, so other batches' jobs get their turn."""
LEASE_S = 15.0
"""A job's lease; renewed every chunk, so it only runs out when the job's process died
(another ingress then resumes the batch this long after)."""
REASONS = {
    "batch_cancelled": ("failed", "the batch was cancelled"),
    "batch_expired": ("expired", "the batch did not complete within its completion window"),
    "batch_failed": ("failed", "the batch failed"),
}


class LeaseLost(Exception):
    """Another job holds the batch now."""


class JobContext:
    """What a job works with, built from the settings in the job's process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis_client.connect_view(
            settings.redis, max_connections=64, pool_timeout_s=10.0
        )
        self.batches = BatchStore(self.redis)
        self.results = ResultStore(self.redis, settings.reply_ttl_s)
        self.files = Files(self.redis, make_file_store(settings))
        consumer = f"batch-jobs-{socket.gethostname()}-{os.getpid()}"
        self.queues: dict[str, Queue] = {
            d.name: make_queue(settings, d.name, self.redis, consumer)
            for d in settings.deployments
            if d.kind == "provisioned"
        }
        self.tenancy = Tenancy(settings.tenants, settings.api_keys)
        self.governance = Governance.of(settings.deployments, settings.default_max_tokens)

    def ceiling(self, tenant: str) -> int:
        """The tenant's `max_tokens` ceiling."""
        own = self.tenancy.config(tenant).max_tokens_ceiling
        return own if own is not None else self.settings.max_tokens_ceiling

    async def close(self) -> None:
        """Close every connection."""
        for queue in self.queues.values():
            await queue.close()
        await self.files.store.close()
        await self.redis.aclose()


@asynccontextmanager
async def context(settings: Settings) -> AsyncIterator[JobContext]:
    """A JobContext, closed afterwards."""
    ctx = JobContext(settings)
    try:
        yield ctx
    finally:
        await ctx.close()


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


async def _renew(ctx: JobContext, batch_id: str, owner: str) -> None:
    if not await ctx.batches.lease(batch_id, owner, LEASE_S):
        raise LeaseLost(batch_id)


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
    await _renew(ctx, batch_id, owner)
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
    """Give every line without a result the failed (or expired) result of `reason`."""
    f = await ctx.batches.fields(batch_id)
    if not f:
        return "gone"
    status, message = REASONS[reason]
    closed = 0
    pending: list[tuple[int, dict[str, Any]]] = []

    async def flush() -> None:
        nonlocal closed
        await _renew(ctx, batch_id, owner)
        ids = [line_request_id(batch_id, i) for i, _ in pending]
        async with ctx.redis.pipeline(transaction=False) as pipe:
            for rid in ids:
                pipe.exists(keys.result(rid))
            exists = await pipe.execute()
        now = time.time()
        docs = [
            ResultDocument(
                id=rid, custom_id=str(obj.get("custom_id")), status=status,
                status_code=None, error={"code": reason, "message": message},
                deployment=str((obj.get("body") or {}).get("model", "")), attempts=0,
                enqueued_at=now, completed_at=now, batch_id=batch_id, tenant=f["tenant"],
            )
            for rid, (_, obj), there in zip(ids, pending, exists, strict=True)
            if not there
        ]  # fmt: skip
        for start in range(0, len(docs), PARALLEL):
            part = docs[start : start + PARALLEL]
            wrote = await asyncio.gather(*(ctx.results.complete(d, f["reply_key"]) for d in part))
            closed += sum(wrote)
        pending.clear()

    try:
        async for i, obj, _ in requests_from(ctx.files.store.read(f["input_file_id"]), 0, 0):
            pending.append((i, obj))
            if len(pending) >= CHUNK:
                await flush()
    except FileMissing:
        log.error("batch_input_missing", batch_id=batch_id)
    if pending:
        await flush()
    await ctx.batches.update(batch_id, closed="1")
    log.info("batch_lines_closed", batch_id=batch_id, reason=reason, closed=closed)
    return "closed"


async def finalize(ctx: JobContext, batch_id: str, owner: str) -> str:
    """Write the output and error files and the final status (under the claim)."""
    if not await ctx.batches.claim_finalization(batch_id):
        return "claimed_elsewhere"
    f = await ctx.batches.fields(batch_id)
    tenant = f["tenant"]
    out_path, err_path = ctx.files.staged(), ctx.files.staged()
    counts = {"ok": 0, "errors": 0}
    try:
        with out_path.open("wb") as out, err_path.open("wb") as err:
            pending: list[tuple[int, dict[str, Any]]] = []

            async def flush() -> None:
                await _renew(ctx, batch_id, owner)
                ids = [line_request_id(batch_id, i) for i, _ in pending]
                async with ctx.redis.pipeline(transaction=False) as pipe:
                    for rid in ids:
                        pipe.get(keys.result(rid))
                    raws = await pipe.execute()
                for rid, (_, obj), raw in zip(ids, pending, raws, strict=True):
                    if raw is None:
                        line, ok = _missing(rid, str(obj.get("custom_id"))), False
                    else:
                        doc = ResultDocument.model_validate_json(raw)
                        line, ok = output_line(doc), succeeded(doc)
                    target = out if ok else err
                    target.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
                    counts["ok" if ok else "errors"] += 1
                pending.clear()

            try:
                stream = ctx.files.store.read(f["input_file_id"])
                async for i, obj, _ in requests_from(stream, 0, 0):
                    pending.append((i, obj))
                    if len(pending) >= CHUNK:
                        await flush()
            except FileMissing:
                log.error("batch_input_missing", batch_id=batch_id)
            if pending:
                await flush()
        update = {"status": f.get("final_status") or "completed"}
        update[update["status"] + "_at"] = str(int(time.time()))
        for path, key, n in ((out_path, "output_file_id", counts["ok"]),
                             (err_path, "error_file_id", counts["errors"])):  # fmt: skip
            if n:
                name = f"{batch_id}_{'output' if key.startswith('output') else 'error'}.jsonl"
                saved = await ctx.files.save(
                    tenant, name, "batch_output", Path(path), output_expiry_s(f)
                )
                update[key] = saved["id"]
        await ctx.batches.update(batch_id, **update)
        await ctx.batches.deactivate(batch_id)
    finally:
        out_path.unlink(missing_ok=True)
        err_path.unlink(missing_ok=True)
    log.info("batch_finalized", batch_id=batch_id, ok=counts["ok"], errors=counts["errors"])
    return "finalized"


def _missing(request_id: str, custom_id: str) -> dict[str, Any]:
    return {
        "id": "batch_req_" + request_id.removeprefix("req_"),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": "result_missing", "message": "the line's result expired or was lost"},
    }


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value

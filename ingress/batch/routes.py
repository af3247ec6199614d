"""The Batches API: create, retrieve, cancel, list, on top of the queue.

Create checks the input file's summary (written when it was validated at upload:
line count, deployments named), writes the batch hash and answers at once with
`validating`: the lines are enqueued by the background expansion job
(`ingress.batch.jobs`), in chunks, resumable after a restart. Batch default
priority is low, whatever `PTU_DEFAULT_PRIORITY` says; `x-priority: high` runs the
lines in this process right away instead (`batch.runner`, not durable).

Status: `validating` until the first chunk is queued, `in_progress`, `finalizing`
while the finaliser job writes the output and error files, then `completed`;
`cancelling` → `cancelled` after a cancel; `expired` when the completion window
ends first (lines without a result get `batch_expired`); `failed` when the input
file is gone. `request_counts` are live: the worker counts each line once.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from openai.types import Batch
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ingress.batch.deadline.window import deadline_of
from ingress.batch.expiry import OUTPUT_EXPIRES, output_expiry
from ingress.batch.files import Files
from ingress.batch.jobs import RUNNER_BEAT_S, BatchJobs, runner_gone
from ingress.batch.lines import line_request, requests_from
from ingress.batch.paging import after_param, limit_param, page
from ingress.batch.runner import BatchWork
from ingress.batch.store import BatchStore, batch_object
from ingress.chat.governance import Governance
from ingress.chat.limits import TenantLimits
from ingress.chat.targets import Target
from ingress.http.answers import BatchList
from ingress.http.auth import Authenticator
from ingress.http.body import read_json_object
from ingress.http.errors import ApiError, bad_request
from ingress.http.models import (
    BatchCreateRequest,
    BatchListQuery,
    BatchPath,
    PriorityHeaders,
    parse_priority,
    validated,
)
from ingress.http.openapi import Reply, operation
from ingress.metrics import IngressMetrics
from orchestrator.core import keys
from orchestrator.core.errors import StoreUnavailable
from orchestrator.core.runtime import every
from orchestrator.core.schemas import PRIORITY_HEADER, QueuedRequest
from orchestrator.core.settings import Settings
from orchestrator.core.tokens import estimate_prompt_tokens, requested_max_tokens

log = structlog.get_logger(__name__)

BATCH = {200: Reply("the batch", Batch)}


@dataclass(frozen=True, slots=True)
class BatchBackends:
    """What the batch routes drive: batch hashes, files, in-process work, the sweeper."""

    store: BatchStore
    files: Files
    work: BatchWork
    jobs: BatchJobs


class BatchRoutes:
    """`/batches` routes under each prefix."""

    def __init__(
        self,
        settings: Settings,
        targets: Mapping[str, Target],
        auth: Authenticator,
        backends: BatchBackends,
        metrics: IngressMetrics,
        *,
        limits: TenantLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._targets = targets
        self._limits = limits or TenantLimits(auth.tenancy, None, None)
        self._auth = auth
        self._store = backends.store
        self._files = backends.files
        self._work = backends.work
        self._jobs = backends.jobs
        self._metrics = metrics
        self._clock = clock
        self._max_body = settings.max_body_bytes
        self._ceiling = settings.max_tokens_ceiling
        self._default_max_tokens = settings.default_max_tokens or 0
        self._governance = Governance.of(settings.deployments, settings.default_max_tokens)

    @operation(
        "create a batch", BATCH, errors=(400, 401, 404, 413, 503),
        body=BatchCreateRequest, headers=PriorityHeaders,
    )  # fmt: skip
    async def create(self, request: Request) -> Response:
        """Record a batch and answer `validating`; its lines are queued in the background."""
        tenant = self._auth.tenant(request.headers)
        priority = parse_priority(request.headers.get(PRIORITY_HEADER), "low")
        body = await read_json_object(request, self._max_body)
        params = validated(BatchCreateRequest, body)
        input_file_id, metadata = params.input_file_id, params.metadata
        deadline = deadline_of(params.completion_window, metadata, self._clock())
        meta = await self._files.meta(tenant, input_file_id)
        if meta["purpose"] != "batch" or "lines" not in meta:
            raise bad_request("input_file_id must be a file uploaded with purpose 'batch'",
                              param="input_file_id")  # fmt: skip
        used = json.loads(meta.get("deployments") or "{}")
        self._check_deployments(used, priority)
        batch_id = "batch_" + uuid.uuid4().hex
        # a tenant already over its limits gets no batch; lines that run after its quota
        # is used up get their own token_quota_exceeded result (orchestrator.tenants.quota)
        first = await self._first_line(tenant, input_file_id)
        body0 = first.get("body") or {}
        await self._limits.admit(tenant, str(body0.get("model")), priority, batch_id, body0)
        reply_key = keys.tenant_reply(tenant, batch_id)
        now = self._clock()
        fields = {
            "id": batch_id, "tenant": tenant, "status": "validating", "endpoint": params.endpoint,
            "input_file_id": input_file_id, "completion_window": params.completion_window,
            "created_at": str(int(now)), "expires_at": str(int(deadline)),
            "total": meta["lines"], "completed": "0", "failed": "0", "priority": priority,
            "reply_key": reply_key, "metadata": json.dumps(metadata) if metadata else "",
            "cursor": "0", "cursor_offset": "0", OUTPUT_EXPIRES: output_expiry(params),
            # what the deadline planner works from (`batch/deadline/overflow`)
            "deployment": next(iter(used)) if len(used) == 1 else "",
            "line_tokens_in": str(estimate_prompt_tokens(body0)),
            "line_tokens_out": str(requested_max_tokens(body0, self._default_max_tokens)),
        }  # fmt: skip
        if priority == "high":
            fields["runner_at"] = repr(now)
        await self._store.create(fields)
        if priority == "high":
            await self._store.transition(batch_id, ["validating"], "in_progress")
            self._work.spawn(self._run_high(fields), "run_high")
        self._jobs.kick()
        self._metrics.batch_created()
        log.info("batch_created", batch_id=batch_id, lines=meta["lines"], priority=priority)
        return JSONResponse(batch_object(await self._store.get(tenant, batch_id)))

    @operation("retrieve a batch", BATCH, errors=(401, 404, 503), path=BatchPath)
    async def retrieve(self, request: Request) -> Response:
        """The Batch object, as the jobs and the worker have brought it along."""
        tenant = self._auth.tenant(request.headers)
        batch_id = str(request.path_params["batch_id"])
        return JSONResponse(batch_object(await self._store.get(tenant, batch_id)))

    @operation("cancel a batch", BATCH, errors=(401, 404, 409, 503), path=BatchPath)
    async def cancel(self, request: Request) -> Response:
        """Cancel: lines without a result get `batch_cancelled`; the batch ends cancelled."""
        tenant = self._auth.tenant(request.headers)
        batch_id = str(request.path_params["batch_id"])
        fields = await self._store.get(tenant, batch_id)
        if fields["status"] != "cancelling":
            status = await self._store.transition(
                batch_id, ["validating", "in_progress"], "cancelling"
            )
            if status != "cancelling":
                raise ApiError(
                    409, "batch_not_cancellable",
                    f"batch {batch_id} is {status}; only a validating or in-progress batch "
                    "can be cancelled",
                )  # fmt: skip
            self._jobs.kick()
        return JSONResponse(batch_object(await self._store.get(tenant, batch_id)))

    @operation(
        "list batches", {200: Reply("the batches", BatchList)}, errors=(400, 401, 503),
        query=BatchListQuery,
    )  # fmt: skip
    async def list_batches(self, request: Request) -> Response:
        """The tenant's batches, newest first, paginated (`after`, `limit`, `has_more`)."""
        tenant = self._auth.tenant(request.headers)
        batches, more = await self._store.list_batches(
            tenant, limit_param(request, 20, 100), after_param(request)
        )
        return page([batch_object(f) for f in batches], more)

    def _check_deployments(self, used: dict[str, int], priority: str) -> None:
        for name, number in sorted(used.items(), key=lambda kv: kv[1]):
            target = self._targets.get(name)
            if target is None:
                raise bad_request(f"line {number}: body.model {name!r} is no longer a "
                                  "deployment here", code="invalid_batch_file")  # fmt: skip
            if priority == "low" and not target.provisioned:
                raise bad_request(
                    f"line {number}: body.model {name!r} is a standard "
                    "deployment; low-priority batches fill provisioned deployments only",
                    code="invalid_batch_file",
                )

    async def _first_line(self, tenant: str, file_id: str) -> dict[str, Any]:
        async for _, obj, _ in requests_from(await self._files.chunks(tenant, file_id)):
            return obj
        raise bad_request("the batch file has no requests", code="invalid_batch_file")

    async def resume(self, batch_id: str) -> bool:
        """Run a high-priority batch whose run is gone here (the caller holds its job lease);
        False when it needs none (a live run beats, or it is no longer in progress)."""
        fields = await self._store.fields(batch_id)
        if fields.get("status") != "in_progress" or not runner_gone(fields, self._clock()):
            return False
        await self._store.update(batch_id, runner_at=repr(self._clock()))
        self._work.spawn(self._run_high(fields), "run_high")
        return True

    async def _run_high(self, fields: dict[str, str]) -> None:
        """Call a high-priority batch's lines, beating `runner_at` while they run."""
        batch_id = fields["id"]

        async def beat() -> None:
            await self._store.update(batch_id, runner_at=repr(self._clock()))

        beating = asyncio.ensure_future(
            every(RUNNER_BEAT_S, beat, event="batch_runner_beat_failed",
                  errors=(StoreUnavailable,), batch_id=batch_id)
        )  # fmt: skip
        try:
            await self._work.run_high(self._lines(fields))
        finally:
            beating.cancel()

    async def _lines(self, f: dict[str, str]) -> AsyncIterator[QueuedRequest]:
        """The lines of a high-priority batch as requests, read as they are needed."""
        ceiling = self._limits.ceiling(f["tenant"], self._ceiling)
        chunks = await self._files.chunks(f["tenant"], f["input_file_id"])
        async for index, obj, _ in requests_from(chunks):
            yield line_request(
                obj, index, batch_id=f["id"], tenant=f["tenant"], reply_key=f["reply_key"],
                deadline=float(f["expires_at"]), now=self._clock(), ceiling=ceiling,
                governance=self._governance,
            )  # fmt: skip

    def __repr__(self) -> str:
        return f"<BatchRoutes store={self._store!r} work={self._work!r}>"

"""The Batches API: create, retrieve, cancel, list, on top of the queue.

Create validates the input file again, writes the batch state, then enqueues
every line as a low-priority request with `batch_id` set (deadline: the 24 h
completion window). Batch default priority is low, whatever
`PTU_DEFAULT_PRIORITY` says; `x-priority: high` runs the lines in this process
right away instead (see `batch_runner`). Every line's result is also pushed to
the reply list `ptu:reply:<tenant>:<batch_id>`, so a consumer can follow a batch
live with BLPOP.

Status: `validating` while lines are enqueued, `in_progress`, then, once the
counters say every line has a result, the first retrieve builds the output and
error files (`finalizing`) and the batch is `completed` (or `cancelled` after a
cancel). An enqueue failure half-way marks the batch `failed`, closes the
lines already enqueued, and answers 503.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from openai.types import Batch
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ingress.batch.files import FileStore, limit_param, page
from ingress.batch.jsonl import BatchLine, output_line, parse_input, render, succeeded
from ingress.batch.runner import BatchWork
from ingress.batch.store import BatchStore, batch_object
from ingress.chat.governance import govern
from ingress.chat.limits import TenantLimits
from ingress.chat.targets import Target
from ingress.http.auth import Authenticator
from ingress.http.body import read_json_object
from ingress.http.errors import ApiError, bad_request
from ingress.http.models import (
    BatchCreateRequest,
    BatchList,
    BatchListQuery,
    BatchPath,
    PriorityHeaders,
    parse_priority,
    validated,
)
from ingress.http.openapi import Reply, operation
from ingress.metrics import IngressMetrics
from ingress.queued.enqueue import Enqueuer
from orchestrator.core import keys
from orchestrator.core.schemas import PRIORITY_HEADER, QueuedRequest
from orchestrator.core.settings import Settings

log = structlog.get_logger(__name__)

COMPLETION_WINDOW_S = 86_400.0
BATCH = {200: Reply("the batch", Batch)}


class BatchRoutes:
    """`/batches` routes under each prefix."""

    def __init__(
        self,
        settings: Settings,
        targets: Mapping[str, Target],
        auth: Authenticator,
        store: BatchStore,
        files: FileStore,
        enqueuer: Enqueuer,
        work: BatchWork,
        metrics: IngressMetrics,
        *,
        limits: TenantLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._targets = targets
        self._limits = limits or TenantLimits(auth.tenancy, None, None)
        self._auth = auth
        self._store = store
        self._files = files
        self._enqueuer = enqueuer
        self._work = work
        self._metrics = metrics
        self._clock = clock
        self._max_body = settings.max_body_bytes
        self._ceiling = settings.max_tokens_ceiling
        self._default_max_tokens = settings.default_max_tokens

    @operation(
        "create a batch", BATCH, errors=(400, 401, 404, 413, 503),
        body=BatchCreateRequest, headers=PriorityHeaders,
    )  # fmt: skip
    async def create(self, request: Request) -> Response:
        """Validate, record and enqueue a batch; answers the Batch object."""
        tenant = self._auth.tenant(request.headers)
        priority = parse_priority(request.headers.get(PRIORITY_HEADER), "low")
        body = await read_json_object(request, self._max_body)
        params = validated(BatchCreateRequest, body)
        input_file_id, metadata = params.input_file_id, params.metadata
        meta = await self._files.meta(tenant, input_file_id)
        if meta["purpose"] != "batch":
            raise bad_request("input_file_id must be a file uploaded with purpose 'batch'",
                              param="input_file_id")  # fmt: skip
        lines = parse_input(await self._files.content(tenant, input_file_id), self._targets)
        if priority == "low":
            self._check_provisioned(lines)
        batch_id = "batch_" + uuid.uuid4().hex
        # a tenant already over its limits gets no batch; lines that run after its quota
        # is used up get their own token_quota_exceeded result (orchestrator.tenants.quota)
        first = lines[0] if lines else None
        if first is not None:
            await self._limits.admit(tenant, first.deployment, priority, batch_id, first.body)
        reply_key = keys.tenant_reply(tenant, batch_id)
        reqs = [self._request(line, tenant, batch_id, reply_key) for line in lines]
        now = self._clock()
        fields = {
            "id": batch_id, "tenant": tenant, "status": "validating", "endpoint": params.endpoint,
            "input_file_id": input_file_id, "completion_window": params.completion_window,
            "created_at": str(int(now)), "expires_at": str(int(now + COMPLETION_WINDOW_S)),
            "total": str(len(reqs)), "completed": "0", "failed": "0", "priority": priority,
            "reply_key": reply_key, "metadata": json.dumps(metadata) if metadata else "",
        }  # fmt: skip
        await self._store.create(fields, [(r.id, r.custom_id or "", r.deployment) for r in reqs])
        if priority == "low":
            await self._enqueue(batch_id, reply_key, reqs)
        else:
            await self._work.register_all(reqs)
            self._work.spawn(self._work.run_high(reqs), "run_high")
        await self._store.transition(batch_id, ["validating"], "in_progress")
        self._metrics.batch_created()
        log.info("batch_created", batch_id=batch_id, lines=len(reqs), priority=priority)
        return JSONResponse(batch_object(await self._store.get(tenant, batch_id)))

    @operation("retrieve a batch", BATCH, errors=(401, 404, 503), path=BatchPath)
    async def retrieve(self, request: Request) -> Response:
        """The Batch object; builds the output files once every line has a result."""
        tenant = self._auth.tenant(request.headers)
        batch_id = str(request.path_params["batch_id"])
        fields = await self._store.get(tenant, batch_id)
        done = int(fields.get("completed", 0)) + int(fields.get("failed", 0))
        if (
            fields["status"] in ("in_progress", "cancelling", "finalizing")
            and done >= int(fields["total"])
            and await self._store.claim_finalization(batch_id)
        ):
            await self._finalize(tenant, batch_id)
            fields = await self._store.get(tenant, batch_id)
        return JSONResponse(batch_object(fields))

    @operation("cancel a batch", BATCH, errors=(401, 404, 409, 503), path=BatchPath)
    async def cancel(self, request: Request) -> Response:
        """Cancel: still-queued lines get a `batch_cancelled` result; the batch ends cancelled."""
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
            lines = await self._store.requests(batch_id)
            closing = self._work.close_lines(
                batch_id,
                fields["reply_key"],
                lines,
                "batch_cancelled",
                "the batch was cancelled",
                tenant,
            )
            self._work.spawn(closing, "cancel")
        return JSONResponse(batch_object(await self._store.get(tenant, batch_id)))

    @operation(
        "list batches", {200: Reply("the batches", BatchList)}, errors=(400, 401, 503),
        query=BatchListQuery,
    )  # fmt: skip
    async def list_batches(self, request: Request) -> Response:
        """The tenant's batches, newest first."""
        tenant = self._auth.tenant(request.headers)
        batches = await self._store.list_batches(tenant, limit_param(request, 20, 100))
        return page([batch_object(f) for f in batches])

    def _check_provisioned(self, lines: list[BatchLine]) -> None:
        for line in lines:
            if not self._targets[line.deployment].provisioned:
                raise bad_request(
                    f"line {line.number}: body.model {line.deployment!r} is a standard "
                    "deployment; low-priority batches fill provisioned deployments only",
                    code="invalid_batch_file",
                )

    def _request(
        self, line: BatchLine, tenant: str, batch_id: str, reply_key: str
    ) -> QueuedRequest:
        body = dict(line.body)
        ceiling = self._limits.ceiling(tenant, self._ceiling)
        govern(body, ceiling=ceiling, default=self._default_max_tokens, endpoint=line.endpoint)
        return self._enqueuer.build(
            line.deployment, body, endpoint=line.endpoint, tenant=tenant, reply_key=reply_key,
            ttl_s=COMPLETION_WINDOW_S, custom_id=line.custom_id, batch_id=batch_id,
        )  # fmt: skip

    async def _enqueue(self, batch_id: str, reply_key: str, reqs: list[QueuedRequest]) -> None:
        try:
            await self._enqueuer.put_many(reqs)
        except Exception as exc:
            # whatever stopped the enqueue, the batch ends failed and every line gets a result
            message = exc.message if isinstance(exc, ApiError) else "internal error"
            error = {"code": "enqueue_failed", "message": message, "line": None}
            await self._store.update(
                batch_id, status="failed", failed_at=str(int(self._clock())),
                errors=json.dumps([error]),
            )  # fmt: skip
            lines = [(r.id, r.custom_id or "", r.deployment) for r in reqs]
            closing = self._work.close_lines(
                batch_id,
                reply_key,
                lines,
                "batch_failed",
                "the batch could not be enqueued",
                reqs[0].tenant if reqs else "default",
            )
            self._work.spawn(closing, "close_failed_batch")
            raise

    async def _finalize(self, tenant: str, batch_id: str) -> None:
        fields = await self._store.get(tenant, batch_id)
        lines = await self._store.requests(batch_id)
        docs = await self._store.results(batch_id)
        output: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for rid, custom_id, _ in lines:
            doc = docs.get(rid)
            if doc is None:
                errors.append(_missing(rid, custom_id))
            else:
                (output if succeeded(doc) else errors).append(output_line(doc))
        update = {"status": fields.get("final_status") or "completed"}
        update[update["status"] + "_at"] = str(int(self._clock()))
        if output:
            saved = await self._files.save(
                tenant, f"{batch_id}_output.jsonl", "batch_output", render(output)
            )
            update["output_file_id"] = saved["id"]
        if errors:
            saved = await self._files.save(
                tenant, f"{batch_id}_error.jsonl", "batch_output", render(errors)
            )
            update["error_file_id"] = saved["id"]
        await self._store.update(batch_id, **update)
        await self._store.discard_lines(batch_id)
        log.info("batch_finalized", batch_id=batch_id, ok=len(output), errors=len(errors))

    def __repr__(self) -> str:
        return f"<BatchRoutes store={self._store!r} work={self._work!r}>"


def _missing(request_id: str, custom_id: str) -> dict[str, Any]:
    return {
        "id": "batch_req_" + request_id.removeprefix("req_"),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": "result_missing", "message": "the line's result expired or was lost"},
    }

"""A Global Batch deployment: the resource's Files + Batches API over `globalbatch` deployments.

`--deployment NAME=MODEL:TPM:globalbatch` declares one (TPM: its enqueued-token quota,
not enforced here). The routes follow Azure's data plane under `/openai/` and `/openai/v1/`:
`POST files` (multipart, `purpose=batch`), `GET files/{id}`, `GET files/{id}/content`,
`POST batches`, `GET batches/{id}`, `POST batches/{id}/cancel`. Every line of an input file
must name a globalbatch deployment in `body.model`.

A batch is `validating` at creation, `in_progress` at once, and its lines are answered all
together `--batch-turnaround-s` after creation (Azure's target is 24 h; its real turnaround
varies). The failure knobs, drawn per line from the seed: `--batch-failure-rate` (the line
gets a 500 in the error file) and `--batch-expiry-rate` (the line is not processed: the batch
ends `expired` and the line is in the error file with `batch_expired`). Answers carry the
usage the chat completions route would have counted for the same body. State lives in
memory: `now` is passed in (the app's clock), nothing here sleeps.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.core.tokens import estimate_prompt_tokens
from simulator.config import DeploymentSpec
from simulator.openai import chat, tokens


@dataclass(slots=True)
class SimBatch:
    """One batch of the simulated resource."""

    id: str
    input_file_id: str
    created_at: float
    lines: list[dict[str, Any]]
    status: str = "in_progress"
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"completed": 0, "failed": 0})
    ended_at: float | None = None


class BatchService:
    """Files and batches of the simulated resource's globalbatch deployments."""

    def __init__(
        self, deployments: Mapping[str, DeploymentSpec], *, turnaround_s: float,
        failure_rate: float, expiry_rate: float, seed: int,
    ) -> None:  # fmt: skip
        self.deployments = dict(deployments)
        self.turnaround_s = turnaround_s
        self.failure_rate = failure_rate
        self.expiry_rate = expiry_rate
        self._seed = seed
        self._rng = random.Random(f"{seed}:batches")
        self.files: dict[str, tuple[str, bytes]] = {}
        self.batches: dict[str, SimBatch] = {}
        self.tokens = {"prompt": 0, "completion": 0, "lines": 0}

    def upload(self, filename: str, content: bytes, now: float) -> dict[str, Any]:
        """Store a batch input file; ValueError names a line that is not one of ours."""
        for number, raw in enumerate(content.splitlines(), 1):
            if not raw.strip():
                continue
            line = json.loads(raw)
            if (line.get("body") or {}).get("model") not in self.deployments:
                raise ValueError(f"line {number}: body.model is not a globalbatch deployment")
        file_id = "file-" + uuid.uuid4().hex
        self.files[file_id] = (filename, content)
        return self.file_object(file_id, now)

    def file_object(self, file_id: str, now: float, purpose: str = "batch") -> dict[str, Any]:
        """The File object of a stored file."""
        name, content = self.files[file_id]
        return {
            "id": file_id, "object": "file", "bytes": len(content), "created_at": int(now),
            "filename": name, "purpose": purpose, "status": "processed",
        }  # fmt: skip

    def create(self, input_file_id: str, now: float) -> SimBatch:
        """A new batch over an uploaded file (KeyError when unknown)."""
        _, content = self.files[input_file_id]
        lines = [json.loads(r) for r in content.splitlines() if r.strip()]
        batch = SimBatch("batch_" + uuid.uuid4().hex, input_file_id, now, lines)
        self.batches[batch.id] = batch
        return batch

    def advance(self, batch: SimBatch, now: float) -> SimBatch:
        """Finish the batch once its turnaround has passed."""
        if batch.status != "in_progress" or now < batch.created_at + self.turnaround_s:
            return batch
        out, err = [], []
        for line in batch.lines:
            draw = self._rng.random()
            if draw < self.expiry_rate:
                err.append(_error_line(line, 408, "batch_expired", "not processed in time"))
            elif draw < self.expiry_rate + self.failure_rate:
                err.append(_error_line(line, 500, "server_error", chat.MSG_500))
            else:
                out.append(self._answer(line, now))
        batch.counts = {"completed": len(out), "failed": len(err)}
        expired = self.expiry_rate > 0 and any(e["error"]["code"] == "batch_expired" for e in err)
        batch.status, batch.ended_at = ("expired" if expired else "completed"), now
        for rows, attr in ((out, "output_file_id"), (err, "error_file_id")):
            if rows:
                file_id = "file-" + uuid.uuid4().hex
                body = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
                self.files[file_id] = (f"{batch.id}_{attr}.jsonl", body)
                setattr(batch, attr, file_id)
        return batch

    def _answer(self, line: dict[str, Any], now: float) -> dict[str, Any]:
        body = line.get("body") or {}
        messages = body.get("messages") or []
        limit = tokens.validated_max_tokens(body)
        n = tokens.completion_length(tokens.content_fraction(self._seed, messages), limit)
        prompt = estimate_prompt_tokens(body)
        self.tokens["prompt"] += prompt
        self.tokens["completion"] += n
        self.tokens["lines"] += 1
        spec = self.deployments[str(body.get("model"))]
        completion = chat.completion_body(
            completion_id=f"chatcmpl-batch{uuid.uuid4().hex[:12]}", created=int(now),
            model=spec.model, content="".join(chat.completion_tokens_text(n, int(now))).lstrip(),
            finish_reason="stop", prompt_tokens=prompt, completion_tokens=n,
        )  # fmt: skip
        return {
            "id": "batch_req_" + uuid.uuid4().hex, "custom_id": line.get("custom_id"),
            "response": {"status_code": 200, "request_id": uuid.uuid4().hex, "body": completion},
            "error": None,
        }  # fmt: skip

    def state(self) -> dict[str, Any]:
        """What `/sim/state` shows of the batches."""
        by_status: dict[str, int] = {}
        for b in self.batches.values():
            by_status[b.status] = by_status.get(b.status, 0) + 1
        return {"batches": by_status, "tokens": dict(self.tokens)}


def _error_line(line: dict[str, Any], status: int, code: str, message: str) -> dict[str, Any]:
    return {
        "id": "batch_req_" + uuid.uuid4().hex, "custom_id": line.get("custom_id"),
        "response": {"status_code": status, "request_id": uuid.uuid4().hex, "body": None},
        "error": {"code": code, "message": message},
    }  # fmt: skip


def batch_object(b: SimBatch) -> dict[str, Any]:
    """The Batch object Azure answers."""
    done = b.counts["completed"] + b.counts["failed"]
    return {
        "id": b.id, "object": "batch", "endpoint": "/chat/completions", "errors": None,
        "input_file_id": b.input_file_id, "completion_window": "24h", "status": b.status,
        "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
        "created_at": int(b.created_at), "in_progress_at": int(b.created_at),
        "expires_at": int(b.created_at + 86_400),
        "completed_at": int(b.ended_at) if b.ended_at and b.status == "completed" else None,
        "expired_at": int(b.ended_at) if b.ended_at and b.status == "expired" else None,
        "request_counts": {"total": len(b.lines), **({"completed": 0, "failed": 0}
                           if not done else b.counts)},
        "metadata": None,
    }  # fmt: skip


def _not_found(what: str) -> JSONResponse:
    return JSONResponse({"error": {"code": "404", "message": f"{what} not found"}}, 404)


class _Handlers:
    """The route handlers over one service."""

    def __init__(self, service: BatchService, clock: Callable[[], float]) -> None:
        self.service = service
        self.clock = clock

    async def upload(self, request: Request) -> Response:
        async with request.form() as form:
            upload, purpose = form.get("file"), form.get("purpose")
            if purpose != "batch" or upload is None or isinstance(upload, str):
                problem = chat.error_body("invalid_request", "give file, purpose=batch")
                return JSONResponse(problem, 400)
            content, name = await upload.read(), upload.filename
        try:
            return JSONResponse(self.service.upload(name or "input.jsonl", content, self.clock()))
        except ValueError as exc:
            return JSONResponse(chat.error_body("invalid_request", str(exc)), 400)

    async def file_meta(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        if file_id not in self.service.files:
            return _not_found("file")
        return JSONResponse(self.service.file_object(file_id, self.clock()))

    async def content(self, request: Request) -> Response:
        found = self.service.files.get(request.path_params["file_id"])
        if found is None:
            return _not_found("file")
        return Response(found[1], media_type="application/octet-stream")

    async def create(self, request: Request) -> Response:
        body = await request.json()
        try:
            batch = self.service.create(str(body.get("input_file_id")), self.clock())
        except KeyError:
            return _not_found("input file")
        return JSONResponse(batch_object(batch))

    async def retrieve(self, request: Request) -> Response:
        batch = self.service.batches.get(request.path_params["batch_id"])
        if batch is None:
            return _not_found("batch")
        return JSONResponse(batch_object(self.service.advance(batch, self.clock())))

    async def cancel(self, request: Request) -> Response:
        batch = self.service.batches.get(request.path_params["batch_id"])
        if batch is None:
            return _not_found("batch")
        if batch.status == "in_progress":
            batch.status, batch.ended_at = "cancelled", self.clock()
        return JSONResponse(batch_object(batch))


def batch_routes(
    service: BatchService, clock: Callable[[], float], authorised: Callable[[Request], bool]
) -> list[Route]:
    """The Files + Batches routes under `/openai` and `/openai/v1` (401 without the key)."""
    h = _Handlers(service, clock)

    def guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[..., Any]:
        async def route(request: Request) -> Response:
            if not authorised(request):
                return JSONResponse(chat.error_body("401", chat.MSG_401), 401)
            return await handler(request)

        return route

    routes: list[Route] = []
    for prefix in ("/openai", "/openai/v1"):
        routes += [
            Route(f"{prefix}/files", guarded(h.upload), methods=["POST"]),
            Route(f"{prefix}/files/{{file_id}}", guarded(h.file_meta), methods=["GET"]),
            Route(f"{prefix}/files/{{file_id}}/content", guarded(h.content), methods=["GET"]),
            Route(f"{prefix}/batches", guarded(h.create), methods=["POST"]),
            Route(f"{prefix}/batches/{{batch_id}}", guarded(h.retrieve), methods=["GET"]),
            Route(f"{prefix}/batches/{{batch_id}}/cancel", guarded(h.cancel), methods=["POST"]),
        ]
    return routes

"""The Files API routes: upload (the body cut off at the size limit, spooled, validated in the
offload process), retrieve, content, delete, list; every file is its tenant's (`files`)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import IO

from openai.types import FileDeleted
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Receive

from ingress.batch.expiry import upload_expiry
from ingress.batch.files import (
    FILE,
    FORM_OVERHEAD_BYTES,
    MAX_FILE_BYTES,
    OCTETS,
    Files,
    file_object,
)
from ingress.batch.offload import Offload
from ingress.batch.paging import after_param, limit_param, page
from ingress.batch.validate import Summary, validate_file
from ingress.http.answers import FileList
from ingress.http.auth import Authenticator
from ingress.http.body import too_large
from ingress.http.errors import bad_request
from ingress.http.models import FileListQuery, FilePath, FileUpload
from ingress.http.openapi import Reply, operation


def limited_receive(receive: Receive, limit: int) -> Receive:
    """`receive`, raising 413 as soon as the body passes `limit` bytes."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large(limit)
        return message

    return counted


def _copy(source: IO[bytes], target: Path) -> None:
    source.seek(0)
    with target.open("wb") as out:
        shutil.copyfileobj(source, out, 1024 * 1024)


class FileRoutes:
    """`/files` routes under each prefix."""

    def __init__(
        self,
        files: Files,
        auth: Authenticator,
        deployments: Collection[str],
        offload: Offload,
    ) -> None:
        self._files = files
        self._auth = auth
        self._deployments = sorted(deployments)
        self._offload = offload

    @operation("upload a batch JSONL file", FILE, errors=(400, 401, 413, 503), form=FileUpload)
    async def upload(self, request: Request) -> Response:
        """Stream a batch JSONL upload to disk, validate it off the event loop, store it."""
        tenant = self._auth.tenant(request.headers)
        limit = MAX_FILE_BYTES + FORM_OVERHEAD_BYTES
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large(MAX_FILE_BYTES)
        kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind != "multipart/form-data":
            raise bad_request("the body must be multipart/form-data with 'file' and 'purpose'")
        streamed = Request(request.scope, limited_receive(request.receive, limit))
        try:
            form = await streamed.form(max_files=1, max_fields=10)
        except HTTPException as exc:
            raise bad_request(f"malformed multipart body: {exc.detail}") from exc
        try:
            expires_s = upload_expiry(form)
            return await self._accept(tenant, form.get("purpose"), form.get("file"), expires_s)
        finally:
            await form.close()

    async def _accept(
        self, tenant: str, purpose: object, upload: object, expires_s: int | None
    ) -> Response:
        if purpose != "batch":
            raise bad_request("purpose must be 'batch': only batch files are supported",
                              param="purpose")  # fmt: skip
        if not isinstance(upload, UploadFile):
            raise bad_request("the form has no 'file' field", param="file")
        if (upload.size or 0) > MAX_FILE_BYTES:
            raise too_large(MAX_FILE_BYTES)
        staged = self._files.staged()
        try:
            await asyncio.to_thread(_copy, upload.file, staged)
            outcome = await self._offload.run(validate_file, str(staged), self._deployments)
            if isinstance(outcome, str):
                raise bad_request(outcome, code="invalid_batch_file")
            summary: Summary = outcome
            meta = await self._files.save(
                tenant, upload.filename or "upload.jsonl", "batch", staged, expires_s,
                lines=str(summary.lines), deployments=json.dumps(summary.deployments),
            )  # fmt: skip
        finally:
            staged.unlink(missing_ok=True)
        return JSONResponse(file_object(meta))

    @operation("file metadata", FILE, errors=(401, 404, 503), path=FilePath)
    async def retrieve(self, request: Request) -> Response:
        """A file's metadata."""
        tenant = self._auth.tenant(request.headers)
        return JSONResponse(file_object(await self._files.meta(tenant, _file_id(request))))

    @operation(
        "file content", {200: Reply("the file's bytes (JSONL)", media_type=OCTETS)},
        errors=(401, 404, 503), path=FilePath,
    )  # fmt: skip
    async def content(self, request: Request) -> Response:
        """A file's bytes, streamed from the store."""
        tenant = self._auth.tenant(request.headers)
        file_id = _file_id(request)
        meta = await self._files.meta(tenant, file_id)
        chunks = await self._files.chunks(tenant, file_id)
        return StreamingResponse(
            chunks, media_type=OCTETS, headers={"content-length": meta["bytes"]}
        )

    @operation(
        "delete a file", {200: Reply("deleted", FileDeleted)}, errors=(401, 404, 503),
        path=FilePath,
    )  # fmt: skip
    async def delete(self, request: Request) -> Response:
        """Delete a file."""
        tenant = self._auth.tenant(request.headers)
        file_id = _file_id(request)
        await self._files.delete(tenant, file_id)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    @operation(
        "list files", {200: Reply("the files", FileList)}, errors=(400, 401, 503),
        query=FileListQuery,
    )  # fmt: skip
    async def list_files(self, request: Request) -> Response:
        """The tenant's files, newest first (`order=asc`: oldest first), paginated."""
        tenant = self._auth.tenant(request.headers)
        order = request.query_params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise bad_request("order must be 'asc' or 'desc'", param="order")
        metas, more = await self._files.list_files(
            tenant, limit_param(request, 10_000, 10_000), after_param(request), order == "desc"
        )
        return page([file_object(m) for m in metas], more)

    def __repr__(self) -> str:
        return f"<FileRoutes files={self._files!r}>"


def _file_id(request: Request) -> str:
    return str(request.path_params["file_id"])

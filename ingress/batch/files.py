"""The Files API, enough for batches: upload (validated), metadata, content, delete, list.

A file's bytes live in the `FileStore` (`ingress.batch.filestore`: a directory or
Blob Storage); Redis holds only its metadata (`keys.file(id)`), which expires with
the file: after `FILE_TTL_S`, or its own `expires_after` (`ingress.batch.expiry`).
Every file belongs to the tenant that uploaded it (or whose batch produced it);
another tenant gets 404.

An upload never sits in memory: Starlette's form parser spools the part to a
temporary file while the body streams in, and the body is cut off with 413 as soon
as it passes the limit. The spooled file is copied to the store's staging area (a
thread), validated line by line in the offload process (`batch.validate`), then
put whole into the store; only then is the metadata written and `processed`
answered, or a 400 naming the first bad line, as Azure does.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path
from typing import IO, Any

import redis.asyncio as aioredis
from openai.types import FileDeleted, FileObject
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Receive

from ingress.batch.expiry import upload_expiry
from ingress.batch.filestore.base import FileMissing, FileStore, FileStoreUnavailable
from ingress.batch.offload import Offload
from ingress.batch.validate import Summary, validate_file
from ingress.http.auth import Authenticator
from ingress.http.body import too_large
from ingress.http.errors import ApiError, bad_request, unavailable
from ingress.http.models import MAX_EXPIRES_S, FileList, FileListQuery, FilePath, FileUpload
from ingress.http.openapi import Reply, operation
from orchestrator.core import keys

MAX_FILE_BYTES = 200 * 1024 * 1024
"""The Batch API's input file limit."""
FORM_OVERHEAD_BYTES = 64 * 1024
"""Room for the multipart boundaries, headers and the `purpose` field."""
FILE_TTL_S = 2 * 86_400
"""How long files are kept: the 24 h completion window plus a day to fetch results."""
OCTETS = "application/octet-stream"
FILE = {200: Reply("the file", FileObject)}
_META = ("id", "tenant", "filename", "purpose", "bytes", "created_at", "expires_at")
_EXTRA = ("lines", "deployments")


def new_file_id() -> str:
    """`file-<uuid hex>`, Azure's shape."""
    return "file-" + uuid.uuid4().hex


def file_object(meta: dict[str, str]) -> dict[str, Any]:
    """The OpenAI FileObject of stored metadata."""
    return {
        "id": meta["id"],
        "object": "file",
        "bytes": int(meta["bytes"]),
        "created_at": int(meta["created_at"]),
        "expires_at": int(meta["expires_at"]),
        "filename": meta["filename"],
        "purpose": meta["purpose"],
        "status": "processed",
        "status_details": None,
    }


def not_found(file_id: str) -> ApiError:
    """The 404 for an unknown (or someone else's) file."""
    return ApiError(404, "file_not_found", f"no file {file_id[:100]!r}")


def store_unavailable(exc: Exception) -> ApiError:
    """The 503 when the file store cannot be reached."""
    return unavailable("the file store", code="file_store_unavailable", detail=str(exc))


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Files:
    """Tenant-scoped files: bytes in the `FileStore`, metadata in Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        store: FileStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.store = store
        self._clock = clock

    def staged(self) -> Path:
        """A fresh path in the store's staging area."""
        return self.store.staging / uuid.uuid4().hex

    async def save(
        self,
        tenant: str,
        filename: str,
        purpose: str,
        source: Path,
        expires_s: int | None = None,
        **extra: str,
    ) -> dict[str, str]:
        """Put the staged file `source` into the store, then record it; returns its metadata.

        `expires_s`: its `expires_after` seconds (`ingress.batch.expiry`), else `FILE_TTL_S`.
        """
        now = self._clock()
        size = await asyncio.to_thread(os.path.getsize, source)
        lifetime = expires_s or FILE_TTL_S
        meta = {
            "id": new_file_id(), "tenant": tenant, "filename": filename, "purpose": purpose,
            "bytes": str(size), "created_at": str(int(now)),
            "expires_at": str(int(now) + lifetime), **extra,
        }  # fmt: skip
        try:
            await self.store.put(meta["id"], source)
        except FileStoreUnavailable as exc:
            raise store_unavailable(exc) from exc
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.file(meta["id"]), mapping=meta)  # type: ignore[arg-type]
            pipe.expire(keys.file(meta["id"]), lifetime)
            await pipe.execute()
        # the tenant's index is another slot: written after the file it names; it keeps
        # ids as long as the longest lifetime, the list skips those that expired sooner
        index = keys.tenant_files(tenant)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(index, {meta["id"]: now})
            pipe.zremrangebyscore(index, 0, now - MAX_EXPIRES_S)
            pipe.expire(index, MAX_EXPIRES_S)
            await pipe.execute()
        return meta

    async def meta(self, tenant: str, file_id: str) -> dict[str, str]:
        """A file's metadata; 404 if unknown or another tenant's."""
        names = [*_META, *_EXTRA]
        values = await self.redis.hmget(keys.file(file_id), names)
        meta = {k: _s(v) for k, v in zip(names, values, strict=True) if v is not None}
        if meta.get("tenant") != tenant or not all(k in meta for k in _META):
            raise not_found(file_id)
        if int(meta["expires_at"]) <= self._clock():
            raise not_found(file_id)  # expired: gone, whatever Redis still holds
        return meta

    async def chunks(self, tenant: str, file_id: str) -> AsyncIterator[bytes]:
        """A file's bytes in chunks; 404 if unknown or another tenant's."""
        await self.meta(tenant, file_id)
        stream = self.store.read(file_id)
        try:
            first = await anext(stream, b"")
        except FileMissing as exc:
            raise not_found(file_id) from exc
        except FileStoreUnavailable as exc:
            raise store_unavailable(exc) from exc

        async def rest() -> AsyncIterator[bytes]:
            if first:
                yield first
            async for chunk in stream:
                yield chunk

        return rest()

    async def delete(self, tenant: str, file_id: str) -> None:
        """Delete a file; 404 if unknown or another tenant's."""
        await self.meta(tenant, file_id)
        await self.redis.delete(keys.file(file_id))
        await self.redis.zrem(keys.tenant_files(tenant), file_id)
        try:
            await self.store.delete(file_id)
        except FileStoreUnavailable as exc:
            raise store_unavailable(exc) from exc

    async def list_files(
        self, tenant: str, limit: int, after: str | None = None, descending: bool = True
    ) -> tuple[list[dict[str, str]], bool]:
        """A page of the tenant's files and whether more follow."""
        return await list_page(
            self.redis, keys.tenant_files(tenant), lambda i: self.meta(tenant, i),
            limit, after, descending,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"<Files store={self.store!r}>"


async def list_page(
    redis: aioredis.Redis,
    index: str,
    load: Callable[[str], Any],
    limit: int,
    after: str | None,
    descending: bool = True,
) -> tuple[list[dict[str, str]], bool]:
    """A page of an index (sorted set by creation time) after the id `after`, as OpenAI
    paginates: `has_more` when items follow the page. Ids that expired are skipped."""
    start = 0
    if after is not None:
        rank = await (redis.zrevrank(index, after) if descending else redis.zrank(index, after))
        if rank is None:
            return [], False
        start = int(rank) + 1  # type: ignore[arg-type]
    out: list[dict[str, str]] = []
    while len(out) <= limit:
        want = limit + 1 - len(out)
        fetch = redis.zrevrange if descending else redis.zrange
        ids = await fetch(index, start, start + want - 1)
        if not ids:
            break
        start += len(ids)
        for raw in ids:
            try:
                out.append(await load(_s(raw)))  # type: ignore[arg-type]
            except ApiError:
                continue  # expired between the index and the item
    return out[:limit], len(out) > limit


def limit_param(request: Request, default: int, maximum: int) -> int:
    """The `limit` query parameter, 1..maximum."""
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise bad_request(f"limit must be an integer from 1 to {maximum}", param="limit")
    return int(raw)


def after_param(request: Request) -> str | None:
    """The `after` query parameter (an id), if given."""
    raw = request.query_params.get("after")
    if raw is not None and not 0 < len(raw) <= 200:
        raise bad_request("after must be an id", param="after")
    return raw


def page(data: list[dict[str, Any]], has_more: bool = False) -> JSONResponse:
    """An OpenAI list page."""
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )


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

"""The Files API, enough for batches: upload (validated), metadata, content, delete, list.

Files live in Redis (`keys.file(id)`: metadata fields plus `content`) and expire
with their batch state (`FILE_TTL_S`). Every file belongs to the tenant that
uploaded it (or whose batch produced it); another tenant gets 404.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Collection
from typing import Any

import redis.asyncio as aioredis
from openai.types import FileDeleted, FileObject
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ingress.batch.jsonl import parse_input
from ingress.http.auth import Authenticator
from ingress.http.body import read_body
from ingress.http.errors import ApiError, bad_request
from ingress.http.models import FileList, FileListQuery, FilePath, FileUpload
from ingress.http.multipart import parse_form
from ingress.http.openapi import Reply, operation
from orchestrator.core import keys

MAX_FILE_BYTES = 200 * 1024 * 1024
"""The Batch API's input file limit."""
FILE_TTL_S = 2 * 86_400
"""How long files are kept: the 24 h completion window plus a day to fetch results."""
OCTETS = "application/octet-stream"
FILE = {200: Reply("the file", FileObject)}
_META = ("id", "tenant", "filename", "purpose", "bytes", "created_at", "expires_at")


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


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class FileStore:
    """Tenant-scoped files in Redis."""

    def __init__(self, redis: aioredis.Redis, *, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._clock = clock

    async def save(
        self, tenant: str, filename: str, purpose: str, content: bytes
    ) -> dict[str, str]:
        """Store a file; returns its metadata."""
        now = self._clock()
        meta = {
            "id": new_file_id(),
            "tenant": tenant,
            "filename": filename,
            "purpose": purpose,
            "bytes": str(len(content)),
            "created_at": str(int(now)),
            "expires_at": str(math.ceil(now + FILE_TTL_S)),
        }
        index = keys.tenant_files(tenant)
        async with self._redis.pipeline(transaction=True) as pipe:
            mapping: dict[str, str | bytes] = {**meta, "content": content}
            pipe.hset(keys.file(meta["id"]), mapping=mapping)  # type: ignore[arg-type]
            pipe.expire(keys.file(meta["id"]), FILE_TTL_S)
            await pipe.execute()
        # the tenant's index is another slot: written after the file it names
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(index, {meta["id"]: now})
            pipe.zremrangebyscore(index, 0, now - FILE_TTL_S)
            pipe.expire(index, FILE_TTL_S)
            await pipe.execute()
        return meta

    async def meta(self, tenant: str, file_id: str) -> dict[str, str]:
        """A file's metadata; 404 if unknown or another tenant's."""
        values = await self._redis.hmget(keys.file(file_id), list(_META))
        meta = {k: _s(v) for k, v in zip(_META, values, strict=True) if v is not None}
        if meta.get("tenant") != tenant or len(meta) != len(_META):
            raise not_found(file_id)
        return meta

    async def content(self, tenant: str, file_id: str) -> bytes:
        """A file's bytes; 404 if unknown or another tenant's."""
        owner, content = await self._redis.hmget(keys.file(file_id), ["tenant", "content"])
        if owner is None or _s(owner) != tenant or content is None:
            raise not_found(file_id)
        return content if isinstance(content, bytes) else content.encode()

    async def delete(self, tenant: str, file_id: str) -> None:
        """Delete a file; 404 if unknown or another tenant's."""
        await self.meta(tenant, file_id)
        await self._redis.delete(keys.file(file_id))
        await self._redis.zrem(keys.tenant_files(tenant), file_id)

    async def list_files(self, tenant: str, limit: int) -> list[dict[str, str]]:
        """The tenant's newest files."""
        ids = await self._redis.zrevrange(keys.tenant_files(tenant), 0, limit - 1)
        out = []
        for raw in ids:
            try:
                out.append(await self.meta(tenant, _s(raw)))  # type: ignore[arg-type]
            except ApiError:
                continue  # expired between the index and the file
        return out

    def __repr__(self) -> str:
        return "<FileStore>"


def limit_param(request: Request, default: int, maximum: int) -> int:
    """The `limit` query parameter, 1..maximum."""
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise bad_request(f"limit must be an integer from 1 to {maximum}", param="limit")
    return int(raw)


def page(data: list[dict[str, Any]]) -> JSONResponse:
    """An OpenAI list page (everything in one page)."""
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }
    )


class FileRoutes:
    """`/files` routes under each prefix."""

    def __init__(self, store: FileStore, auth: Authenticator, deployments: Collection[str]) -> None:
        self._store = store
        self._auth = auth
        self._deployments = deployments

    @operation("upload a batch JSONL file", FILE, errors=(400, 401, 413, 503), form=FileUpload)
    async def upload(self, request: Request) -> Response:
        """Validate a batch JSONL upload and store it."""
        tenant = self._auth.tenant(request.headers)
        body = await read_body(request, MAX_FILE_BYTES)
        form = parse_form(body, request.headers.get("content-type", ""))
        purpose = form.get("purpose")
        if purpose is None or purpose.content != b"batch":
            raise bad_request("purpose must be 'batch': only batch files are supported",
                              param="purpose")  # fmt: skip
        upload = form.get("file")
        if upload is None:
            raise bad_request("the form has no 'file' field", param="file")
        parse_input(upload.content, self._deployments)
        meta = await self._store.save(tenant, upload.filename or "upload.jsonl", "batch",
                                      upload.content)  # fmt: skip
        return JSONResponse(file_object(meta))

    @operation("file metadata", FILE, errors=(401, 404, 503), path=FilePath)
    async def retrieve(self, request: Request) -> Response:
        """A file's metadata."""
        tenant = self._auth.tenant(request.headers)
        return JSONResponse(file_object(await self._store.meta(tenant, _file_id(request))))

    @operation(
        "file content", {200: Reply("the file's bytes (JSONL)", media_type=OCTETS)},
        errors=(401, 404, 503), path=FilePath,
    )  # fmt: skip
    async def content(self, request: Request) -> Response:
        """A file's bytes."""
        tenant = self._auth.tenant(request.headers)
        data = await self._store.content(tenant, _file_id(request))
        return Response(data, media_type=OCTETS)

    @operation(
        "delete a file", {200: Reply("deleted", FileDeleted)}, errors=(401, 404, 503),
        path=FilePath,
    )  # fmt: skip
    async def delete(self, request: Request) -> Response:
        """Delete a file."""
        tenant = self._auth.tenant(request.headers)
        file_id = _file_id(request)
        await self._store.delete(tenant, file_id)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    @operation(
        "list files", {200: Reply("the files", FileList)}, errors=(400, 401, 503),
        query=FileListQuery,
    )  # fmt: skip
    async def list_files(self, request: Request) -> Response:
        """The tenant's files, newest first."""
        tenant = self._auth.tenant(request.headers)
        metas = await self._store.list_files(tenant, limit_param(request, 100, 10_000))
        return page([file_object(m) for m in metas])

    def __repr__(self) -> str:
        return f"<FileRoutes store={self._store!r}>"


def _file_id(request: Request) -> str:
    return str(request.path_params["file_id"])

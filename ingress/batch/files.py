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
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from openai.types import FileObject

from ingress.batch.filestore.base import FileMissing, FileStore, FileStoreUnavailable
from ingress.batch.paging import list_page
from ingress.http.errors import ApiError, unavailable
from ingress.http.models import MAX_EXPIRES_S
from ingress.http.openapi import Reply
from orchestrator.core import keys
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.redis_replies import text

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

    @redis_boundary("file metadata")
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

    @redis_boundary("file metadata")
    async def meta(self, tenant: str, file_id: str) -> dict[str, str]:
        """A file's metadata; 404 if unknown or another tenant's."""
        names = [*_META, *_EXTRA]
        values = await self.redis.hmget(keys.file(file_id), names)
        meta = {k: text(v) for k, v in zip(names, values, strict=True) if v is not None}
        if meta.get("tenant") != tenant or not all(k in meta for k in _META):
            raise not_found(file_id)
        if int(meta["expires_at"]) <= self._clock():
            raise not_found(file_id)  # expired: gone, whatever Redis still holds
        return meta

    @redis_boundary("file metadata")
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

    @redis_boundary("file metadata")
    async def delete(self, tenant: str, file_id: str) -> None:
        """Delete a file; 404 if unknown or another tenant's."""
        await self.meta(tenant, file_id)
        await self.redis.delete(keys.file(file_id))
        await self.redis.zrem(keys.tenant_files(tenant), file_id)
        try:
            await self.store.delete(file_id)
        except FileStoreUnavailable as exc:
            raise store_unavailable(exc) from exc

    @redis_boundary("file metadata")
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

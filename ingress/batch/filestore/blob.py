"""The Azure Blob Storage file store: production (`PTU_BLOB_ACCOUNT_URL`, `PTU_BLOB_CONTAINER`).

One block blob per file in one container (created on first use). Uploads go in
1 MiB blocks committed at the end, so a blob is visible only once whole; downloads
stream in 1 MiB ranges from any offset. The single-request limits of the SDK are
lowered so neither direction ever holds more than a few MiB of a file in memory.
Identity: `DefaultAzureCredential` (workload identity, managed identity, az login)
unless a credential is passed in, or `PTU_BLOB_CONNECTION_STRING` names the account
with its key (Azurite, the emulator; an account that allows shared keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.blob.aio import BlobServiceClient

from ingress.batch.filestore.base import CHUNK_BYTES, FileMissing, FileStoreUnavailable, check_name

BLOCK_BYTES = 1024 * 1024
"""aiohttp warns about bodies over 1 MiB sent from bytes (it blocks the loop): blocks stay at it."""


class BlobFileStore:
    """Files as block blobs of one container."""

    def __init__(
        self,
        account_url: str | None,
        container: str,
        credential: Any = None,
        *,
        connection_string: str | None = None,
    ) -> None:
        self._owned_credential = None
        limits: dict[str, Any] = {
            "max_single_put_size": BLOCK_BYTES,
            "max_block_size": BLOCK_BYTES,
            "max_single_get_size": CHUNK_BYTES,
            "max_chunk_get_size": CHUNK_BYTES,
        }
        if connection_string is not None:  # the emulator, or an account with shared keys
            self._service = BlobServiceClient.from_connection_string(connection_string, **limits)
        else:
            if account_url is None:
                raise ValueError("an account URL or a connection string is needed")
            if credential is None:
                from azure.identity.aio import DefaultAzureCredential

                credential = self._owned_credential = DefaultAzureCredential()
            self._service = BlobServiceClient(account_url, credential=credential, **limits)
        self._container = self._service.get_container_client(container)
        self._ready = False
        self._lock = asyncio.Lock()
        self._staging = Path(tempfile.gettempdir()) / "ptu-blob-staging"
        self._staging.mkdir(parents=True, exist_ok=True)

    @property
    def staging(self) -> Path:
        """A temporary directory on local disk."""
        return self._staging

    async def put(self, name: str, source: Path) -> None:
        """Upload `source` in blocks, then delete it."""
        check_name(name)
        await self._ensure_container()
        path = str(source)
        try:
            handle = await asyncio.to_thread(open, path, "rb")
            with handle:
                size = os.fstat(handle.fileno()).st_size
                await self._container.upload_blob(
                    name, handle, length=size, overwrite=True, max_concurrency=2
                )
        except AzureError as exc:
            raise FileStoreUnavailable(f"cannot store {name}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def read(self, name: str, offset: int = 0) -> AsyncIterator[bytes]:
        """Ranged downloads of the blob from `offset`."""
        check_name(name)
        try:
            downloader = await self._container.download_blob(name, offset=offset or None)
        except ResourceNotFoundError as exc:
            raise FileMissing(name) from exc
        except AzureError as exc:
            if offset and getattr(exc, "status_code", None) == 416:
                return  # offset at the end: nothing left
            raise FileStoreUnavailable(f"cannot read {name}: {exc}") from exc
        try:
            async for chunk in downloader.chunks():
                yield chunk
        except AzureError as exc:
            raise FileStoreUnavailable(f"cannot read {name}: {exc}") from exc

    async def delete(self, name: str) -> None:
        """Delete the blob; a missing one is fine."""
        check_name(name)
        try:
            await self._container.delete_blob(name)
        except ResourceNotFoundError:
            return
        except AzureError as exc:
            raise FileStoreUnavailable(f"cannot delete {name}: {exc}") from exc

    async def close(self) -> None:
        """Close the client (and the credential this store created)."""
        await self._service.close()
        if self._owned_credential is not None:
            await self._owned_credential.close()

    async def _ensure_container(self) -> None:
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            try:
                await self._container.create_container()
            except ResourceExistsError:
                pass
            except AzureError as exc:
                raise FileStoreUnavailable(f"container: {exc}") from exc
            self._ready = True

    def __repr__(self) -> str:
        return f"<BlobFileStore container={self._container.container_name!r}>"

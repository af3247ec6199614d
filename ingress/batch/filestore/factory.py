"""The configured file store: Blob Storage when `PTU_BLOB_ACCOUNT_URL` is set, else a directory."""

from __future__ import annotations

from pathlib import Path

from ingress.batch.filestore.base import FileStore
from ingress.batch.filestore.local import LocalFileStore
from orchestrator.core.errors import MissingDependencyError
from orchestrator.core.settings import Settings


def make_file_store(settings: Settings) -> FileStore:
    """The configured store; the Azure SDK is imported only when Blob Storage is used."""
    if settings.blob_account_url:
        try:
            from ingress.batch.filestore.blob import BlobFileStore
        except ModuleNotFoundError as exc:
            raise MissingDependencyError("azure-storage-blob", "azure") from exc
        return BlobFileStore(settings.blob_account_url, settings.blob_container)
    return LocalFileStore(Path(settings.files_dir))

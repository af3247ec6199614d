"""The configured file store: Blob Storage when `PTU_BLOB_ACCOUNT_URL` (or
`PTU_BLOB_CONNECTION_STRING`) is set, else a directory."""

from __future__ import annotations

from pathlib import Path

from ingress.batch.filestore.base import FileStore
from ingress.batch.filestore.local import LocalFileStore
from orchestrator.core.errors import MissingDependencyError
from orchestrator.core.settings import Settings


def make_file_store(settings: Settings) -> FileStore:
    """The configured store; the Azure SDK is imported only when Blob Storage is used."""
    secret = settings.blob_connection_string
    if settings.blob_account_url or secret is not None:
        try:
            from ingress.batch.filestore.blob import BlobFileStore
        except ModuleNotFoundError as exc:
            raise MissingDependencyError("azure-storage-blob", "azure") from exc
        return BlobFileStore(
            settings.blob_account_url,
            settings.blob_container,
            connection_string=None if secret is None else secret.get_secret_value(),
        )
    return LocalFileStore(Path(settings.files_dir))

"""The file store contract: named immutable blobs of bytes, written whole, read as a stream.

Batch input, output and error files can be 200 MB, so their bytes never pass
through Redis (which keeps only their metadata, `ingress.batch.files`) and never
sit in memory whole. A file is written once from a local file the caller staged
(`put`), is visible to readers only once complete, and is read back in chunks
from any byte offset (`read`), so a job resuming half-way through a file starts
where it stopped. Names are ours (`file-<hex>`): `[A-Za-z0-9_.-]`, no paths.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from orchestrator.core.errors import PTUError

CHUNK_BYTES = 1024 * 1024
"""The size of the chunks `read` yields (the last one may be shorter)."""
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")


class FileMissing(PTUError):
    """The named file does not exist (never written, deleted, or lost)."""


class FileStoreUnavailable(PTUError):
    """The store could not be reached or refused the operation."""


def check_name(name: str) -> str:
    """`name` if it is a valid file name; ValueError otherwise (never a path)."""
    if not _NAME.fullmatch(name) or name.startswith("."):
        raise ValueError(f"invalid file name {name[:100]!r}")
    return name


class FileStore(Protocol):
    """Whole-file writes, streamed reads; every method is safe to retry."""

    @property
    def staging(self) -> Path:
        """A local directory for files about to be `put` (cheapest when on the store's disk)."""

    async def put(self, name: str, source: Path) -> None:
        """Store the local file `source` as `name`, atomically: readers see all of it or none.

        `source` is consumed (moved or deleted) when this returns. Putting a name that
        exists replaces it whole. Raises FileStoreUnavailable (nothing is stored).
        """

    def read(self, name: str, offset: int = 0) -> AsyncIterator[bytes]:
        """The file's bytes from `offset`, in chunks of at most `CHUNK_BYTES`.

        Raises FileMissing (on the first iteration) when there is no such file.
        """

    async def delete(self, name: str) -> None:
        """Remove the file; removing a missing file does nothing."""

    async def close(self) -> None:
        """Release connections."""

"""The local-directory file store: the embedded default (`PTU_FILES_DIR`).

Files are plain files under the root; `put` renames the staged file into place
(`os.replace`, atomic on one filesystem), so a reader never sees half a file and a
crash leaves at most a staged file behind, which the next start removes once it is
a day old. Several ingress processes may share the directory (a shared volume).
Disk I/O runs in threads so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

from ingress.batch.filestore.base import CHUNK_BYTES, FileMissing, FileStoreUnavailable, check_name

STAGING = ".staging"
STALE_STAGED_S = 86_400.0


class LocalFileStore:
    """Files in one directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._staging = self.root / STAGING
        try:
            self._staging.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FileStoreUnavailable(f"files directory {self.root}: {exc}") from exc
        self._sweep_staging(time.time())

    @property
    def staging(self) -> Path:
        """`<root>/.staging`: same filesystem, so `put` is a rename."""
        return self._staging

    async def put(self, name: str, source: Path) -> None:
        """Move `source` into place (a copy then rename when it is on another disk)."""
        target = self.root / check_name(name)
        try:
            await asyncio.to_thread(_move, Path(source), target)
        except OSError as exc:
            raise FileStoreUnavailable(f"cannot store {name}: {exc}") from exc

    async def read(self, name: str, offset: int = 0) -> AsyncIterator[bytes]:
        """Chunks of the file from `offset`."""
        path = self.root / check_name(name)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError as exc:
            raise FileMissing(name) from exc
        except OSError as exc:
            raise FileStoreUnavailable(f"cannot read {name}: {exc}") from exc
        try:
            if offset:
                handle.seek(offset)
            while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                yield chunk
        finally:
            handle.close()

    async def delete(self, name: str) -> None:
        """Unlink the file if it exists."""
        path = self.root / check_name(name)
        await asyncio.to_thread(path.unlink, missing_ok=True)

    async def close(self) -> None:
        """Nothing to release."""

    def _sweep_staging(self, now: float) -> None:
        for entry in self._staging.iterdir():
            try:
                if now - entry.stat().st_mtime > STALE_STAGED_S:
                    entry.unlink()
            except OSError:
                continue  # another process took it meanwhile

    def __repr__(self) -> str:
        return f"<LocalFileStore root={str(self.root)!r}>"


def _move(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError:
        # another filesystem: copy beside the target, then rename into place
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
        source.unlink(missing_ok=True)

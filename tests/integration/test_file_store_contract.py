"""One contract suite for every `FileStore`: the local directory and Blob Storage (Azurite)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ingress.batch.filestore.base import CHUNK_BYTES, FileMissing, FileStore
from ingress.batch.filestore.blob import BlobFileStore
from ingress.batch.filestore.local import LocalFileStore
from tests.support.azurite import ACCOUNT, KEY, azurite_blob


@pytest.fixture(scope="module")
def azurite() -> Iterator[str]:
    with azurite_blob() as url:
        yield url


@pytest.fixture(params=["local", "blob"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FileStore]:
    if request.param == "local":
        made: FileStore = LocalFileStore(tmp_path / "files")
    else:
        url = request.getfixturevalue("azurite")
        credential = {"account_name": ACCOUNT, "account_key": KEY}
        made = BlobFileStore(url, "c" + uuid.uuid4().hex[:12], credential=credential)
    try:
        yield made
    finally:
        await made.close()


def _staged(store: FileStore, data: bytes) -> Path:
    path = store.staging / uuid.uuid4().hex
    path.write_bytes(data)
    return path


async def _read(store: FileStore, name: str, offset: int = 0) -> bytes:
    return b"".join([chunk async for chunk in store.read(name, offset)])


async def test_put_then_read_back_in_bounded_chunks(store: FileStore) -> None:
    data = os.urandom(CHUNK_BYTES * 2 + 12_345)
    source = _staged(store, data)
    await store.put("file-a", source)
    assert not source.exists()  # consumed
    chunks = [c async for c in store.read("file-a")]
    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) <= CHUNK_BYTES


async def test_read_from_an_offset(store: FileStore) -> None:
    data = b"".join(b"line %d\n" % i for i in range(50_000))
    await store.put("file-b", _staged(store, data))
    assert await _read(store, "file-b", 1000) == data[1000:]
    assert await _read(store, "file-b", len(data)) == b""


async def test_put_replaces_whole(store: FileStore) -> None:
    await store.put("file-c", _staged(store, b"first version, longer\n"))
    await store.put("file-c", _staged(store, b"second\n"))
    assert await _read(store, "file-c") == b"second\n"


async def test_missing_file_and_idempotent_delete(store: FileStore) -> None:
    with pytest.raises(FileMissing):
        await _read(store, "file-none")
    await store.put("file-d", _staged(store, b"x"))
    await store.delete("file-d")
    await store.delete("file-d")
    with pytest.raises(FileMissing):
        await _read(store, "file-d")


async def test_empty_file(store: FileStore) -> None:
    await store.put("file-e", _staged(store, b""))
    assert await _read(store, "file-e") == b""


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 201])
async def test_names_are_never_paths(store: FileStore, name: str) -> None:
    with pytest.raises(ValueError, match="invalid file name"):
        await store.put(name, _staged(store, b"x"))
    with pytest.raises(ValueError, match="invalid file name"):
        await _read(store, name)

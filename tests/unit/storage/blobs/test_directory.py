"""DirectoryBlobStore specifics and the store factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.errors import BadRequest, StorageUnavailable
from app.settings import Settings
from app.storage.blobs import DirectoryBlobStore, create_blob_store
from app.storage.blobs.base import validate_key


async def test_upload_in_progress_is_invisible_and_cleaned_on_cancel(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path / "blobs")
    await store.open()
    release = asyncio.Event()
    written = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"x" * (2 << 20)  # above one chunk: something reaches the temp file
        written.set()
        await release.wait()
        yield b"y"

    task = asyncio.create_task(store.put_stream("a/b", slow()))
    await asyncio.wait_for(written.wait(), 10)
    await asyncio.sleep(0.1)
    assert await store.list() == []
    assert not await store.exists("a/b")
    temp_files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert len(temp_files) == 1 and temp_files[0].name.startswith(".b.")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []
    await store.aclose()


async def test_ping(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path / "missing")
    with pytest.raises(StorageUnavailable, match="missing or not writable"):
        await store.ping()
    await store.open()
    await store.ping()


async def test_open_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StorageUnavailable, match="cannot create blob directory"):
        await DirectoryBlobStore(tmp_path / "file" / "blobs").open()


def test_validate_key() -> None:
    assert validate_key("snapshots/snap_1.tar.zst") == "snapshots/snap_1.tar.zst"
    for bad in ["", "/a", "a/", "a//b", "a/./b", "a/../b", ".x", "a/.x", "a b", "a\\b", "x" * 1025]:
        with pytest.raises(BadRequest):
            validate_key(bad)


def test_factory(tmp_path: Path) -> None:
    store = create_blob_store(Settings.load(data_dir=tmp_path, s3_bucket=None))
    assert isinstance(store, DirectoryBlobStore) and store.root == tmp_path / "blobs"

    from app.storage.blobs.s3 import S3BlobStore

    s3 = create_blob_store(
        Settings.load(
            data_dir=tmp_path,
            s3_bucket="snapshots",
            s3_endpoint="http://127.0.0.1:9",
            s3_access_key="AKIAEXAMPLE",
            s3_secret_key="secret-example",
        )
    )
    assert isinstance(s3, S3BlobStore) and s3.bucket == "snapshots" and s3.endpoint_url == "http://127.0.0.1:9"
    assert "secret-example" not in repr(s3)

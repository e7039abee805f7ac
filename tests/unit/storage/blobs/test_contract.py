"""The BlobStore contract, run against every store (directory and a real S3 server)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator

import pytest

from app.errors import BadRequest, NotFound, PayloadTooLarge
from app.storage.blobs import BlobStore


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


class Boom(Exception):
    pass


async def failing_after(data: bytes, fail_at: int) -> AsyncIterator[bytes]:
    sent = 0
    async for chunk in chunks_of(data, 256 * 1024):
        if sent >= fail_at:
            raise Boom("producer failed")
        sent += len(chunk)
        yield chunk
    raise Boom("producer failed at the end")


async def test_put_get_roundtrip(blob_store: BlobStore) -> None:
    data = os.urandom(300_000)
    assert await blob_store.put_stream("a/b/c.bin", chunks_of(data)) == len(data)
    assert await collect(blob_store.get_stream("a/b/c.bin")) == data
    assert await blob_store.exists("a/b/c.bin")
    assert await blob_store.size("a/b/c.bin") == len(data)


async def test_put_replaces_existing(blob_store: BlobStore) -> None:
    await blob_store.put_bytes("k", b"first version")
    await blob_store.put_bytes("k", b"second")
    assert await blob_store.get_bytes("k") == b"second"


async def test_empty_object(blob_store: BlobStore) -> None:
    assert await blob_store.put_bytes("empty", b"") == 0
    assert await blob_store.get_bytes("empty") == b""
    assert await blob_store.size("empty") == 0
    assert await collect(blob_store.get_stream("empty", start=0, end=10)) == b""


async def test_ranges(blob_store: BlobStore) -> None:
    data = bytes(range(256)) * 40
    await blob_store.put_bytes("r", data)
    assert await collect(blob_store.get_stream("r", start=10, end=20)) == data[10:20]
    assert await collect(blob_store.get_stream("r", start=5000)) == data[5000:]
    assert await collect(blob_store.get_stream("r", end=7)) == data[:7]
    assert await collect(blob_store.get_stream("r", start=len(data) - 3, end=len(data) + 100)) == data[-3:]
    assert await collect(blob_store.get_stream("r", start=len(data) + 5)) == b""
    assert await collect(blob_store.get_stream("r", start=30, end=30)) == b""
    with pytest.raises(BadRequest):
        await collect(blob_store.get_stream("r", start=-1))


async def test_missing_key(blob_store: BlobStore) -> None:
    with pytest.raises(NotFound):
        await collect(blob_store.get_stream("nope/missing"))
    with pytest.raises(NotFound):
        await blob_store.get_bytes("nope/missing")
    with pytest.raises(NotFound):
        await blob_store.size("nope/missing")
    assert not await blob_store.exists("nope/missing")


async def test_delete_reports_existence(blob_store: BlobStore) -> None:
    await blob_store.put_bytes("d/x", b"1")
    assert await blob_store.delete("d/x") is True
    assert await blob_store.delete("d/x") is False
    assert not await blob_store.exists("d/x")


async def test_list_by_prefix(blob_store: BlobStore) -> None:
    for key in ["snapshots/a.json", "snapshots/a.tar.zst", "snapshots/b.json", "other/c", "snapshotsX"]:
        await blob_store.put_bytes(key, b"x")
    assert await blob_store.list("snapshots/") == ["snapshots/a.json", "snapshots/a.tar.zst", "snapshots/b.json"]
    assert await blob_store.list("snapshots/a") == ["snapshots/a.json", "snapshots/a.tar.zst"]
    assert await blob_store.list("snapshots") == [
        "snapshots/a.json",
        "snapshots/a.tar.zst",
        "snapshots/b.json",
        "snapshotsX",
    ]
    assert len(await blob_store.list()) == 5
    assert await blob_store.list("zzz/") == []


@pytest.mark.parametrize("key", ["/abs", "a/../b", "..", "a//b", "a/", ".hidden", "a/.b", "sp ace", "", "ü"])
async def test_invalid_keys_refused(blob_store: BlobStore, key: str) -> None:
    with pytest.raises(BadRequest):
        await blob_store.put_bytes(key, b"x")
    with pytest.raises(BadRequest):
        await blob_store.exists(key)


async def test_get_bytes_limit(blob_store: BlobStore) -> None:
    await blob_store.put_bytes("big", b"x" * 2000)
    with pytest.raises(PayloadTooLarge):
        await blob_store.get_bytes("big", limit=1000)
    assert len(await blob_store.get_bytes("big", limit=2000)) == 2000


@pytest.mark.parametrize("fail_at", [0, 100_000, 6 * 1024 * 1024])
async def test_failed_upload_leaves_nothing(blob_store: BlobStore, fail_at: int) -> None:
    """A producer failing before, inside or after the first multipart part leaves no object."""
    data = os.urandom(7 * 1024 * 1024) if fail_at > 1_000_000 else os.urandom(200_000)
    with pytest.raises(Boom):
        await blob_store.put_stream("snapshots/partial.tar.zst", failing_after(data, fail_at))
    assert not await blob_store.exists("snapshots/partial.tar.zst")
    assert await blob_store.list() == []


async def test_failed_upload_keeps_previous_version(blob_store: BlobStore) -> None:
    await blob_store.put_bytes("keep", b"old")
    with pytest.raises(Boom):
        await blob_store.put_stream("keep", failing_after(os.urandom(100_000), 50_000))
    assert await blob_store.get_bytes("keep") == b"old"


async def test_cancelled_upload_leaves_nothing(blob_store: BlobStore) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield os.urandom(6 * 1024 * 1024)  # past one S3 part: a multipart upload is open
        started.set()
        await asyncio.sleep(3600)
        yield b"never"

    task = asyncio.create_task(blob_store.put_stream("cancelled", slow()))
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await blob_store.exists("cancelled")
    assert await blob_store.list() == []


async def test_large_streamed_roundtrip_bounded_memory(blob_store: BlobStore) -> None:
    """40 MiB up and down; Python allocations peak far below the object size.

    The S3 store holds two 5 MiB parts (one uploading while the next fills) plus a few
    1 MiB chunks in transit, about 14 MiB whatever the object size; the object is made
    large enough for that bound to be clearly below it. The directory store holds one chunk.
    """
    size = 40 * 1024 * 1024
    expected = hashlib.sha256()

    async def produce() -> AsyncIterator[bytes]:
        for _ in range(size // (1024 * 1024)):
            chunk = os.urandom(1024 * 1024)  # distinct objects: buffering cannot share them
            expected.update(chunk)
            yield chunk

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        assert await blob_store.put_stream("large/object", produce()) == size
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        got = hashlib.sha256()
        total = 0
        async for chunk in blob_store.get_stream("large/object"):
            got.update(chunk)
            total += len(chunk)
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert got.hexdigest() == expected.hexdigest()
    assert upload_peak < 16 * 1024 * 1024, upload_peak
    assert download_peak < 4 * 1024 * 1024, download_peak

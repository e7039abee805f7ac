"""S3BlobStore against a real S3 server: bucket handling, aborted uploads, outages."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.errors import StorageUnavailable
from app.snapshots.reader import load_manifest, restore_snapshot
from app.snapshots.writer import write_snapshot
from app.storage.blobs import BlobStore
from app.storage.blobs.s3 import MIN_PART_SIZE, S3BlobStore
from tests.fixtures.s3 import S3Server
from tests.support_tree import build_sample_tree, tar_extract, tar_stream, tree_hash

pytestmark = pytest.mark.s3


class Boom(Exception):
    pass


async def test_open_creates_missing_bucket(s3_server: S3Server, s3_bucket: str) -> None:
    store = S3BlobStore(**s3_server.store_kwargs(s3_bucket))
    await store.open()
    await store.open()  # idempotent
    await store.ping()
    buckets = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert s3_bucket in buckets
    await store.aclose()


async def test_open_without_creation_names_the_problem(s3_server: S3Server, s3_bucket: str) -> None:
    store = S3BlobStore(**s3_server.store_kwargs(s3_bucket), create_bucket=False)
    with pytest.raises(StorageUnavailable, match=f"{s3_bucket}.*does not exist.*creation is disabled"):
        await store.open()
    await store.aclose()


def _drop_bucket(server: S3Server, bucket: str) -> None:
    """What a wiped MinIO does to the service: the bucket and everything in it gone."""
    client = server.client()
    for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)


@pytest.mark.parametrize("allowed", [True, False])
async def test_a_bucket_that_vanishes_while_serving_is_created_again_when_allowed(
    s3_server: S3Server, s3_bucket: str, allowed: bool
) -> None:
    creator = S3BlobStore(**s3_server.store_kwargs(s3_bucket))
    await creator.open()
    await creator.aclose()
    store = S3BlobStore(**s3_server.store_kwargs(s3_bucket), create_bucket=allowed)
    await store.open()
    await store.put_bytes("snapshots/before.json", b"{}")
    await asyncio.to_thread(_drop_bucket, s3_server, s3_bucket)
    if allowed:
        assert await store.put_bytes("snapshots/after.json", b"{}") == 2
        assert await store.list("snapshots/") == ["snapshots/after.json"]
    else:
        with pytest.raises(StorageUnavailable, match=f"{s3_bucket}.*no longer exists.*S3_CREATE_BUCKET=false"):
            await store.put_bytes("snapshots/after.json", b"{}")
    await store.aclose()


async def test_abort_uploads_drops_a_dead_writers_parts_of_that_key_only(
    s3_store: BlobStore, s3_server: S3Server, s3_bucket: str
) -> None:
    client = s3_server.client()
    dead = client.create_multipart_upload(Bucket=s3_bucket, Key="snapshots/snap_dead.tar.zst")["UploadId"]
    client.upload_part(
        Bucket=s3_bucket, Key="snapshots/snap_dead.tar.zst", UploadId=dead, PartNumber=1, Body=b"x" * 1024
    )
    other = client.create_multipart_upload(Bucket=s3_bucket, Key="snapshots/snap_dead.tar.zst.other")["UploadId"]
    assert await s3_store.abort_uploads("snapshots/snap_dead.tar.zst") == 1
    left = [u["UploadId"] for u in client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])]
    assert left == [other]
    assert await s3_store.abort_uploads("snapshots/snap_dead.tar.zst") == 0
    client.abort_multipart_upload(Bucket=s3_bucket, Key="snapshots/snap_dead.tar.zst.other", UploadId=other)


@pytest.mark.parametrize("fail_after_parts", [1, 2])
async def test_failed_multipart_upload_is_aborted(
    s3_store: BlobStore, s3_server: S3Server, fail_after_parts: int
) -> None:
    assert isinstance(s3_store, S3BlobStore)
    part = os.urandom(MIN_PART_SIZE)

    async def produce() -> AsyncIterator[bytes]:
        for _ in range(fail_after_parts):
            yield part
        yield b"tail"
        raise Boom("producer died mid-upload")

    with pytest.raises(Boom):
        await s3_store.put_stream("snapshots/x.tar.zst", produce())
    client = s3_server.client()
    assert client.list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=s3_store.bucket).get("KeyCount", 0) == 0


async def test_cancelled_multipart_upload_is_aborted(s3_store: BlobStore, s3_server: S3Server) -> None:
    assert isinstance(s3_store, S3BlobStore)
    first_part_sent = asyncio.Event()

    async def produce() -> AsyncIterator[bytes]:
        yield os.urandom(MIN_PART_SIZE)
        yield b"more"  # the first part is now full and uploading
        first_part_sent.set()
        await asyncio.sleep(3600)
        yield b"never"

    task = asyncio.create_task(s3_store.put_stream("k", produce()))
    await asyncio.wait_for(first_part_sent.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert s3_server.client().list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads", []) == []
    assert not await s3_store.exists("k")


async def test_outage_then_recovery(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = S3BlobStore(**s3_server.store_kwargs(s3_bucket))
    await store.open()
    await store.put_bytes("before", b"1")
    src = build_sample_tree(tmp_path / "src")
    try:
        s3_server.stop()
        with caplog.at_level(logging.INFO, logger="app.storage.blobs.s3"):
            with pytest.raises(StorageUnavailable, match=r"127\.0\.0\.1"):
                await store.put_bytes("k", b"data")
            with pytest.raises(StorageUnavailable):
                await store.get_bytes("before")
            with pytest.raises(StorageUnavailable):
                await store.ping()
            with pytest.raises(StorageUnavailable):
                await write_snapshot(
                    store, snapshot_id="during-outage", sandbox_id="s", provider="local", paths=["/workspace"],
                    export=lambda p: tar_stream(src),
                )  # fmt: skip
        retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
        # 3 attempts per call (store_kwargs): two retries for each of put_bytes, get_bytes...
        assert retries and all(m.endswith(("retry 1/2", "retry 2/2")) for m in retries)
    finally:
        s3_server.restart()
    await store.open()  # moto forgets its buckets on restart; minio keeps them
    await store.put_bytes("after", b"2")
    assert await store.get_bytes("after") == b"2"

    await write_snapshot(
        store, snapshot_id="after-outage", sandbox_id="s", provider="local", paths=["/workspace"],
        export=lambda p: tar_stream(src),
    )  # fmt: skip
    assert (await load_manifest(store, "after-outage")).paths == ["/workspace"]

    async def importer(path: str, stream: AsyncIterator[bytes]) -> None:
        code, err = await tar_extract(stream, tmp_path / "restored")
        assert code == 0, err

    await restore_snapshot(store, "after-outage", importer)
    assert tree_hash(tmp_path / "restored") == tree_hash(src)
    await store.aclose()

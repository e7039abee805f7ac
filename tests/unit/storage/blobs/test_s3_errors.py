"""S3BlobStore error translation and retries, at the botocore boundary (botocore's Stubber)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
import urllib3
from botocore.response import StreamingBody
from botocore.stub import Stubber

from app.errors import NotFound, StorageUnavailable
from app.storage.blobs.s3 import S3BlobStore

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def store() -> Iterator[S3BlobStore]:
    # Port 9 (discard) is never contacted: the Stubber answers every call.
    yield S3BlobStore(
        "bucket",
        endpoint_url="http://127.0.0.1:9",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        max_attempts=3,
        backoff_base=0.001,
        backoff_max=0.002,
    )


def stub(store: S3BlobStore) -> Stubber:
    stubber = Stubber(store._client)
    stubber.activate()
    return stubber


async def test_auth_errors_are_clear_and_leak_no_key(store: S3BlobStore) -> None:
    stubber = stub(store)
    stubber.add_client_error(
        "head_object", "InvalidAccessKeyId", f"The AWS Access Key Id {ACCESS_KEY} does not exist", 403
    )
    with pytest.raises(StorageUnavailable) as caught:
        await store.exists("k")
    message = str(caught.value)
    assert "refused the credentials" in message and "S3_ACCESS_KEY" in message
    assert ACCESS_KEY not in message and SECRET_KEY not in message
    stubber.assert_no_pending_responses()  # not retried


async def test_transient_errors_retried_then_succeed(store: S3BlobStore, caplog: pytest.LogCaptureFixture) -> None:
    stubber = stub(store)
    stubber.add_client_error("head_object", "SlowDown", "Please reduce your request rate.", 503)
    stubber.add_client_error("head_object", "InternalError", "We encountered an internal error.", 500)
    stubber.add_response("head_object", {"ContentLength": 5})
    with caplog.at_level(logging.INFO, logger="app.storage.blobs.s3"):
        assert await store.size("k") == 5
    assert sum("retry" in r.getMessage() for r in caplog.records) == 2
    stubber.assert_no_pending_responses()


async def test_transient_errors_bounded(store: S3BlobStore) -> None:
    stubber = stub(store)
    for _ in range(3):
        stubber.add_client_error("head_object", "ServiceUnavailable", "busy", 503)
    stubber.add_response("head_object", {"ContentLength": 5})  # never reached: 3 attempts only
    with pytest.raises(StorageUnavailable, match="ServiceUnavailable"):
        await store.size("k")
    assert await store.size("k") == 5  # the fourth answer was still queued: not asked for before


async def test_missing_key_and_bucket(store: S3BlobStore) -> None:
    stubber = stub(store)
    stubber.add_client_error("get_object", "NoSuchKey", "The specified key does not exist.", 404)
    # The bucket vanished: created again (creation allowed), then the key is simply missing.
    stubber.add_client_error("get_object", "NoSuchBucket", "The specified bucket does not exist", 404)
    stubber.add_client_error("head_bucket", "404", "Not Found", 404)
    stubber.add_response("create_bucket", {}, {"Bucket": "bucket"})
    stubber.add_client_error("get_object", "NoSuchKey", "The specified key does not exist.", 404)
    # Gone again and not creatable: a 503 that says so.
    stubber.add_client_error("get_object", "NoSuchBucket", "The specified bucket does not exist", 404)
    stubber.add_client_error("head_bucket", "404", "Not Found", 404)
    stubber.add_client_error("create_bucket", "AccessDenied", "Access Denied", 403)
    with pytest.raises(NotFound):
        async for _ in store.get_stream("k"):
            pass
    with pytest.raises(NotFound):
        async for _ in store.get_stream("k"):
            pass
    with pytest.raises(StorageUnavailable, match="bucket 'bucket' does not exist and these credentials may not"):
        async for _ in store.get_stream("k"):
            pass
    stubber.assert_no_pending_responses()


async def test_a_vanished_bucket_is_not_created_when_creation_is_disabled() -> None:
    store = S3BlobStore("gone", endpoint_url="http://127.0.0.1:9", access_key="a", secret_key="b", create_bucket=False)
    stubber = stub(store)
    stubber.add_client_error("put_object", "NoSuchBucket", "The specified bucket does not exist", 404)
    with pytest.raises(StorageUnavailable, match=r"'gone' no longer exists.*S3_CREATE_BUCKET=false"):
        await store.put_bytes("k", b"x")
    stubber.assert_no_pending_responses()


async def test_open_refuses_missing_bucket_when_creation_disabled() -> None:
    store = S3BlobStore(
        "absent", endpoint_url="http://127.0.0.1:9", access_key="a", secret_key="b", create_bucket=False
    )
    stubber = stub(store)
    stubber.add_client_error("head_bucket", "404", "Not Found", 404)
    with pytest.raises(StorageUnavailable, match=r"does not exist.*creation is disabled"):
        await store.open()


async def test_open_creation_refused_by_permissions(store: S3BlobStore) -> None:
    stubber = stub(store)
    stubber.add_client_error("head_bucket", "404", "Not Found", 404)
    stubber.add_client_error("create_bucket", "AccessDenied", "Access Denied", 403)
    with pytest.raises(StorageUnavailable, match="may not create it"):
        await store.open()


class BreakingStream(io.RawIOBase):
    """A response body whose connection drops after ``fail_at`` bytes."""

    def __init__(self, data: bytes, fail_at: int) -> None:
        super().__init__()
        self._data = data
        self._pos = 0
        self._fail_at = fail_at

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._pos >= self._fail_at:
            raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")
        end = self._fail_at if size < 0 else min(self._fail_at, self._pos + size)
        out = self._data[self._pos : end]
        self._pos = end
        return out


async def test_broken_download_resumes_where_it_stopped(store: S3BlobStore) -> None:
    data = bytes(range(256)) * 20
    stubber = stub(store)
    stubber.add_response(
        "get_object",
        {"Body": StreamingBody(BreakingStream(data, 1000), len(data)), "ContentLength": len(data), "ETag": '"v1"'},
        {"Bucket": "bucket", "Key": "k"},
    )
    stubber.add_response(
        "get_object",
        {"Body": StreamingBody(io.BytesIO(data[1000:]), len(data) - 1000), "ContentLength": len(data) - 1000},
        {"Bucket": "bucket", "Key": "k", "Range": "bytes=1000-", "IfMatch": '"v1"'},
    )
    assert b"".join([piece async for piece in store.get_stream("k")]) == data
    stubber.assert_no_pending_responses()

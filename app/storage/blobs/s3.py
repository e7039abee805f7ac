"""S3-compatible blob store (AWS S3, MinIO, Cloudflare R2) over boto3.

boto3 is synchronous, so every call runs in a worker thread. Memory stays bounded:
uploads buffer one multipart part at a time (plus the one part in flight), downloads
read the response body in chunks.

Failures are translated once, here: transient trouble (connection refused or reset,
timeouts, 5xx, ``SlowDown``) is retried with exponential backoff and jitter a bounded
number of times and then raised as ``StorageUnavailable``; refused credentials become a
``StorageUnavailable`` that says so without echoing any key; a missing object is
``NotFound``. botocore's own retries are switched off so the bound is ours alone.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from app.errors import NotFound, SandboxControlError, StorageUnavailable
from app.storage.blobs.base import CHUNK_SIZE, BackgroundCleanup, BlobStore, blob_not_found, check_range, validate_key
from app.storage.blobs.s3_errors import AUTH_CODES, error_code, is_transient, translate
from app.storage.blobs.s3_parts import PartBody, fill_part

if TYPE_CHECKING:
    from app.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Default multipart part size; S3 refuses parts (but the last) under 5 MiB.
PART_SIZE = 8 << 20
MIN_PART_SIZE = 5 << 20
#: S3's limit on the number of parts of one upload.
MAX_PARTS = 10_000
#: Resumptions of one download after its connection broke mid-body.
MAX_RESUMES = 5


class S3BlobStore(BlobStore):
    """Blobs as objects in one S3 bucket; see the module docstring."""

    kind = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        path_style: bool = True,
        create_bucket: bool = True,
        part_size: int = PART_SIZE,
        max_attempts: int = 5,
        backoff_base: float = 0.2,
        backoff_max: float = 8.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (an S3 limit)")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self._create_bucket = create_bucket
        self._part_size = part_size
        self._max_attempts = max(1, max_attempts)
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._cleanup = BackgroundCleanup()
        self._bucket_lock = asyncio.Lock()
        config = Config(
            region_name=region,
            s3={"addressing_style": "path" if path_style else "auto"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 1},  # we retry ourselves, with a bound we control
            # Plain payloads without trailing checksums: accepted by every S3 look-alike.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=16,
        )
        # A private session: boto3's default session is a process global.
        session = boto3.session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region
        )
        self._client: Any = session.client("s3", endpoint_url=endpoint_url, config=config)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        """Build the store from the ``S3_*`` settings."""
        if not settings.s3_bucket:
            raise ValueError("S3_BUCKET is not set")
        return cls(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint,
            region=settings.s3_region,
            access_key=settings.s3_access_key.get_secret_value() if settings.s3_access_key else None,
            secret_key=settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None,
            path_style=settings.s3_path_style,
            create_bucket=settings.s3_create_bucket,
        )

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.bucket!r}, endpoint={self.endpoint_url!r})"

    # -- plumbing -------------------------------------------------------------------

    def _where(self, key: str | None = None) -> str:
        target = f"s3://{self.bucket}/{key}" if key else f"bucket {self.bucket!r}"
        return f"{target} at {self.endpoint_url}" if self.endpoint_url else target

    def _translate(self, exc: BaseException, what: str, key: str | None) -> SandboxControlError:
        return translate(exc, what, bucket=self.bucket, where=self._where, key=key)

    def _backoff(self, attempt: int) -> float:
        # Exponential with "equal jitter": spreads replicas retrying the same outage.
        delay = min(self._backoff_max, self._backoff_base * 2.0 ** (attempt - 1))
        return delay * (0.5 + random.random() / 2)

    async def _call(
        self, what: str, fn: Callable[..., T], *, key: str | None = None, attempts: int | None = None, **kwargs: Any
    ) -> T:
        """Run one boto3 call in a thread with bounded retries; translate its failure."""
        limit = attempts or self._max_attempts
        attempt, recreated = 0, False
        while True:
            attempt += 1
            try:
                return await asyncio.to_thread(fn, **kwargs)
            except Exception as exc:
                if is_transient(exc) and attempt < limit:
                    log.info("S3 %s on %s failed (%s), retry %d/%d", what, self.bucket, exc, attempt, limit - 1)
                    await asyncio.sleep(self._backoff(attempt))
                    continue
                if not recreated and isinstance(exc, ClientError) and error_code(exc)[0] == "NoSuchBucket":
                    # The bucket went away under us (a wiped MinIO): make it again, once, when allowed.
                    recreated = True
                    await self._recreate_bucket()
                    continue
                raise self._translate(exc, what, key) from exc

    async def _recreate_bucket(self) -> None:
        if not self._create_bucket:
            raise StorageUnavailable(
                f"S3 bucket {self.bucket!r} no longer exists ({self._where()}) and bucket creation is disabled "
                "(S3_CREATE_BUCKET=false): create the bucket again"
            )
        async with self._bucket_lock:  # concurrent failures recreate it once
            log.warning("S3 bucket %s vanished; creating it again", self.bucket)
            await self.open()

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Check the bucket; create it when missing and ``create_bucket`` allows."""
        try:
            await self._call("head_bucket", self._client.head_bucket, Bucket=self.bucket)
            return
        except StorageUnavailable as exc:
            cause = exc.__cause__
            if not (isinstance(cause, ClientError) and error_code(cause)[0] in {"404", "NoSuchBucket", "NotFound"}):
                raise
        if not self._create_bucket:
            raise StorageUnavailable(
                f"S3 bucket {self.bucket!r} does not exist ({self._where()}) and bucket creation is disabled "
                "(S3_CREATE_BUCKET=false): create it or allow creation"
            )
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self._client.meta.region_name
        if region and region not in ("us-east-1", "auto"):
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await self._call("create_bucket", self._client.create_bucket, **kwargs)
        except StorageUnavailable as exc:
            cause = exc.__cause__
            code = error_code(cause)[0] if isinstance(cause, ClientError) else ""
            if code == "BucketAlreadyOwnedByYou":
                return  # another replica won the race
            if code == "BucketAlreadyExists":
                raise StorageUnavailable(f"S3 bucket name {self.bucket!r} is taken by another account") from cause
            if code in AUTH_CODES:
                raise StorageUnavailable(
                    f"S3 bucket {self.bucket!r} does not exist and these credentials may not create it "
                    f"({code}): create it or grant s3:CreateBucket"
                ) from cause
            raise
        log.info("created S3 bucket %s", self.bucket)

    async def aclose(self) -> None:
        await self._cleanup.wait(timeout=30.0)
        await asyncio.to_thread(self._client.close)

    async def ping(self) -> None:
        await self._call("head_bucket", self._client.head_bucket, attempts=1, Bucket=self.bucket)

    # -- writes ---------------------------------------------------------------------

    def _part_target(self, number: int) -> int:
        # Grow parts every 1000 so 10,000 parts reach ~430 GiB at the default size.
        return self._part_size * (1 + (number - 1) // 1000)

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        validate_key(key)
        source = aiter(chunks)
        body, eof = await fill_part(source, self._part_target(1))
        if eof and body.size < self._part_size:
            small = body

            def put() -> Any:
                small.seek(0)  # a retried attempt resends the body from its start
                return self._client.put_object(Bucket=self.bucket, Key=key, Body=small, ContentLength=small.size)

            await self._call("put_object", put, key=key)
            return small.size
        created = await self._call(
            "create_multipart_upload", self._client.create_multipart_upload, key=key, Bucket=self.bucket, Key=key
        )
        upload_id: str = created["UploadId"]
        pending: asyncio.Task[dict[str, Any]] | None = None
        parts: list[dict[str, Any]] = []
        total = 0
        try:
            for number in range(1, MAX_PARTS + 1):
                # One part uploads while the next one fills: two parts in memory at most.
                if pending is not None:
                    # Shielded: a cancelled caller must not orphan a part still in a thread.
                    parts.append(await asyncio.shield(pending))
                pending = asyncio.ensure_future(self._upload_part(key, upload_id, number, body))
                total += body.size
                del body  # the task owns the part now; holding it here would keep a third part alive
                if eof:
                    break
                body, eof = await fill_part(source, self._part_target(number + 1))
                if body.size == 0:
                    break
            else:
                raise StorageUnavailable(f"object {key!r} needs more than {MAX_PARTS} parts")
            assert pending is not None
            parts.append(await asyncio.shield(pending))
            pending = None
            await self._complete(key, upload_id, parts, total)
        except BaseException:
            await self._cleanup.run(f"abort upload of {key}", self._abort(key, upload_id, pending))
            raise
        return total

    async def _upload_part(self, key: str, upload_id: str, number: int, body: PartBody) -> dict[str, Any]:
        def upload() -> Any:
            body.seek(0)  # a retried attempt resends the part from its start
            return self._client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body, ContentLength=body.size
            )

        answer: dict[str, Any] = await self._call("upload_part", upload, key=key)
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def _complete(self, key: str, upload_id: str, parts: list[dict[str, Any]], total: int) -> None:
        try:
            await self._call(
                "complete_multipart_upload",
                self._client.complete_multipart_upload,
                key=key,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except NotFound:
            # NoSuchUpload after a retry: the first attempt completed but its answer was lost.
            if await self.exists(key) and await self.size(key) == total:
                return
            raise

    async def _abort(self, key: str, upload_id: str, pending: asyncio.Task[Any] | None) -> None:
        if pending is not None:
            # A part still uploading could reappear after the abort; let it end first.
            await asyncio.wait({pending})
            if not pending.cancelled():
                pending.exception()  # retrieved: its failure is already being reported
        await self._call(
            "abort_multipart_upload",
            self._client.abort_multipart_upload,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
        )

    async def abort_uploads(self, key: str) -> int:
        validate_key(key)
        aborted = 0
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": key}
        for _page in range(10_000):  # bounded: a key has few uploads, a listing page holds 1000
            answer = await self._call("list_multipart_uploads", self._client.list_multipart_uploads, **kwargs)
            for upload in answer.get("Uploads", ()):
                if upload["Key"] == key:  # the prefix also matches longer keys
                    await self._abort(key, upload["UploadId"], None)
                    aborted += 1
            if not answer.get("IsTruncated"):
                break
            kwargs["KeyMarker"] = answer.get("NextKeyMarker", "")
            kwargs["UploadIdMarker"] = answer.get("NextUploadIdMarker", "")
        return aborted

    # -- reads ----------------------------------------------------------------------

    async def get_stream(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        validate_key(key)
        check_range(start, end)
        if end is not None and end <= start:
            return
        position = start
        etag: str | None = None
        for _resume in range(MAX_RESUMES + 1):
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
            if position or end is not None:
                kwargs["Range"] = f"bytes={position}-{'' if end is None else end - 1}"
            if etag:
                kwargs["IfMatch"] = etag  # a resumed read must continue the same object
            try:
                answer = await self._call("get_object", self._client.get_object, key=key, **kwargs)
            except StorageUnavailable as exc:
                cause = exc.__cause__
                if isinstance(cause, ClientError) and error_code(cause)[0] == "InvalidRange":
                    return  # start at or past the end: an empty range, as for a file
                raise
            etag = answer.get("ETag")
            body = answer["Body"]
            try:
                length = int(answer.get("ContentLength", 0))
                stop = position + length
                while position < stop:
                    try:
                        data = await asyncio.to_thread(body.read, min(CHUNK_SIZE, stop - position))
                    except Exception as exc:
                        if not is_transient(exc):
                            raise self._translate(exc, "get_object", key) from exc
                        log.info("S3 read of %s broke at byte %d (%s); resuming", key, position, exc)
                        break
                    if not data:
                        break  # connection closed early: resume from here
                    position += len(data)
                    yield data
                else:
                    return
            finally:
                await asyncio.to_thread(body.close)
            await asyncio.sleep(self._backoff(_resume + 1))
        raise StorageUnavailable(f"S3 download of {self._where(key)} kept breaking at byte {position}")

    async def _head(self, key: str) -> dict[str, Any] | None:
        validate_key(key)
        try:
            head: dict[str, Any] = await self._call(
                "head_object", self._client.head_object, key=key, Bucket=self.bucket, Key=key
            )
        except NotFound:
            return None
        return head

    async def exists(self, key: str) -> bool:
        return await self._head(key) is not None

    async def size(self, key: str) -> int:
        head = await self._head(key)
        if head is None:
            raise blob_not_found(key)
        return int(head["ContentLength"])

    async def delete(self, key: str) -> bool:
        # S3 deletes are idempotent and silent; a head first tells whether it existed.
        if await self._head(key) is None:
            return False
        await self._call("delete_object", self._client.delete_object, key=key, Bucket=self.bucket, Key=key)
        return True

    async def list(self, prefix: str = "") -> builtins.list[str]:
        keys: builtins.list[str] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        for _page in range(100_000):  # 100M keys: far beyond any real snapshot bucket
            answer = await self._call("list_objects_v2", self._client.list_objects_v2, **kwargs)
            keys.extend(item["Key"] for item in answer.get("Contents", ()))
            if not answer.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = answer["NextContinuationToken"]
        return sorted(keys)

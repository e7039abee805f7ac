"""Blob store: immutable byte objects under flat string keys (snapshot archives, manifests).

Two implementations share one small async contract:

* ``DirectoryBlobStore`` (``app.storage.blobs.directory``, the embedded default):
  files under ``<data_dir>/blobs``.
* ``S3BlobStore`` (``app.storage.blobs.s3``, imported lazily): AWS S3, MinIO, R2.

``app.storage.blobs.create_blob_store(settings)`` picks one: S3 when ``S3_BUCKET`` is set.
This module holds the contract and the helpers both implementations share.

Contract every implementation honours:

* **Keys** match ``validate_key``: segments of ``[A-Za-z0-9._-]`` joined by ``/``; no
  empty, ``.`` or ``..`` segment, no segment starting with ``.`` (reserved for the
  directory store's temporary files), no leading or trailing ``/``.
* **Atomic writes**: ``put_stream`` either publishes the whole object or nothing. A
  producer that raises, a storage failure or a cancellation leaves no object and no
  partial upload behind (best effort against a storage outage during cleanup).
* **Streamed reads**: ``get_stream`` is an async iterator; it opens the object on the
  first iteration, so a missing key raises there.

Raises:
    NotFound: ``get_stream``, ``get_bytes`` or ``size`` on a missing key.
    BadRequest: an invalid key or range.
    StorageUnavailable: the store cannot be reached or refused us (after bounded retries).
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import Any, ClassVar

from app.errors import BadRequest, NotFound, PayloadTooLarge

log = logging.getLogger(__name__)

#: Size of the pieces a store reads and writes at once.
CHUNK_SIZE = 1 << 20
#: Longest key accepted (S3's own limit is 1024 bytes).
MAX_KEY_LENGTH = 1024

KEY_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(?:/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid blob key, else raise ``BadRequest``."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH or not KEY_PATTERN.fullmatch(key):
        raise BadRequest(
            f"invalid blob key {key!r}: use segments of [A-Za-z0-9._-] joined by '/', none empty or starting with '.'",
            key=str(key),
        )
    return key


def check_range(start: int, end: int | None) -> None:
    """Refuse negative offsets; ``start`` is inclusive and ``end`` exclusive, like a slice."""
    if start < 0 or (end is not None and end < 0):
        raise BadRequest(f"invalid byte range start={start} end={end}: offsets must be >= 0")


def blob_not_found(key: str) -> NotFound:
    """The error every store raises for a missing key."""
    return NotFound(f"blob {key!r} not found", key=key)


class BackgroundCleanup:
    """Runs cleanup coroutines to completion even when their caller is cancelled.

    Aborting an upload must not be skipped because the request that started it was
    cancelled; the task is shielded and kept referenced here until it ends.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, what: str, coro: Any) -> None:
        """Await ``coro`` shielded from cancellation; log (never raise) its failure."""
        task: asyncio.Task[None] = asyncio.ensure_future(self._logged(what, coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    @staticmethod
    async def _logged(what: str, coro: Any) -> None:
        try:
            await coro
        except Exception as exc:
            log.warning("blob store cleanup failed: %s: %s", what, exc)

    async def wait(self, timeout: float) -> None:
        """Let pending cleanups finish (bounded by ``timeout``) before the store closes."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


class BlobStore(abc.ABC):
    """Async store of immutable blobs; see the module docstring for the contract."""

    #: Short name for logs and readiness output, e.g. ``"directory"`` or ``"s3"``.
    kind: ClassVar[str] = ""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Prepare the store (create the directory, check or create the bucket)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients; the store cannot be used afterwards."""

    async def __aenter__(self) -> BlobStore:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @abc.abstractmethod
    async def put_stream(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        """Store the bytes of ``chunks`` under ``key`` atomically; return the byte count.

        Replaces an existing object. If ``chunks`` raises, the exception propagates
        and no object (and no partial upload) is left behind.
        """

    @abc.abstractmethod
    def get_stream(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """Stream bytes ``[start, end)`` of ``key`` (``end=None``: to the end).

        Offsets past the end are clamped (an empty stream, not an error).
        Missing key → ``NotFound``, raised on the first iteration.
        """

    @abc.abstractmethod
    async def exists(self, key: str) -> bool:
        """True when ``key`` holds an object."""

    @abc.abstractmethod
    async def size(self, key: str) -> int:
        """Size of ``key`` in bytes. Missing → ``NotFound``."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove ``key``; True only if it existed."""

    @abc.abstractmethod
    async def list(self, prefix: str = "") -> builtins.list[str]:
        """Keys starting with ``prefix`` (plain string prefix, as S3), sorted."""

    @abc.abstractmethod
    async def abort_uploads(self, key: str) -> int:
        """Drop the unfinished uploads of ``key`` (a dead writer's parts); how many there were.

        Only for a key whose writer is known to be gone: a live upload of it would fail.
        """

    @abc.abstractmethod
    async def ping(self) -> None:
        """Readiness check: return when usable, else raise ``StorageUnavailable``."""

    async def put_bytes(self, key: str, data: bytes) -> int:
        """Store a small object (a manifest) atomically."""

        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put_stream(key, one())

    async def get_bytes(self, key: str, *, limit: int | None = None) -> bytes:
        """Read a small object whole; more than ``limit`` bytes → ``PayloadTooLarge``."""
        parts: builtins.list[bytes] = []
        total = 0
        stream = self.get_stream(key, end=None if limit is None else limit + 1)
        try:
            async for chunk in stream:
                parts.append(chunk)
                total += len(chunk)
        finally:
            await stream.aclose()
        if limit is not None and total > limit:
            raise PayloadTooLarge(f"blob {key!r} is larger than {limit} bytes", key=key)
        return b"".join(parts)

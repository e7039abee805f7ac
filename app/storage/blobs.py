"""Blob store: immutable byte objects under flat string keys (snapshot archives, manifests).

Two implementations share one small async contract:

* ``DirectoryBlobStore`` (the embedded default): files under ``<data_dir>/blobs``.
* ``S3BlobStore`` (``app.storage.blobs_s3``, imported lazily): AWS S3, MinIO, R2.

``create_blob_store(settings)`` picks one: S3 when ``S3_BUCKET`` is set.

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
import os
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from stat import S_ISREG
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, ClassVar

from app.errors import BadRequest, NotFound, PayloadTooLarge, StorageUnavailable

if TYPE_CHECKING:
    from app.settings import Settings

log = logging.getLogger(__name__)

#: Size of the pieces a store reads and writes at once.
CHUNK_SIZE = 1 << 20
#: Longest key accepted (S3's own limit is 1024 bytes).
MAX_KEY_LENGTH = 1024

_KEY_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(?:/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid blob key, else raise ``BadRequest``."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH or not _KEY_RE.fullmatch(key):
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


class DirectoryBlobStore(BlobStore):
    """Blobs as files under ``root``; the embedded default (``<data_dir>/blobs``).

    Writes go to a hidden temporary file next to the target, are fsynced and renamed
    into place, so readers never see a partial object. All file I/O runs in worker
    threads, one chunk at a time.
    """

    kind = "directory"

    def __init__(self, root: Path | str, *, chunk_size: int = CHUNK_SIZE, fsync: bool = True) -> None:
        self.root = Path(root)
        self._chunk_size = chunk_size
        self._fsync = fsync
        self._cleanup = BackgroundCleanup()

    def __repr__(self) -> str:
        return f"DirectoryBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot create blob directory {self.root}: {exc.strerror}") from exc

    async def aclose(self) -> None:
        await self._cleanup.wait(timeout=10.0)

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
        try:
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            handle: IO[bytes] = await asyncio.to_thread(open, tmp, "xb")
        except OSError as exc:
            raise StorageUnavailable(f"cannot write blob {key!r}: {exc.strerror}", key=key) from exc
        written = 0
        try:
            try:
                # Batch small producer chunks so each thread hop moves about one chunk_size.
                batch = bytearray()
                async for chunk in chunks:
                    batch += chunk
                    if len(batch) >= self._chunk_size:
                        await asyncio.to_thread(handle.write, batch)
                        written += len(batch)
                        batch = bytearray()
                if batch:
                    await asyncio.to_thread(handle.write, batch)
                    written += len(batch)
                await asyncio.to_thread(self._flush, handle)
            finally:
                await self._cleanup.run(f"close {tmp}", asyncio.to_thread(handle.close))
            await asyncio.to_thread(self._publish, tmp, path)
        except BaseException as exc:
            await self._cleanup.run(f"remove {tmp}", asyncio.to_thread(_unlink_quietly, tmp))
            if isinstance(exc, OSError):
                raise StorageUnavailable(f"cannot write blob {key!r}: {exc.strerror}", key=key) from exc
            raise
        return written

    def _publish(self, tmp: Path, path: Path) -> None:
        os.replace(tmp, path)  # atomic: readers see the old object or the whole new one
        if self._fsync:
            # Make the rename itself durable: a manifest must never outlive its blob in a crash.
            fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _flush(self, handle: IO[bytes]) -> None:
        handle.flush()
        if self._fsync:
            os.fsync(handle.fileno())

    async def get_stream(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        path = self._path(key)
        check_range(start, end)
        try:
            handle, size = await asyncio.to_thread(_open_for_read, path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise blob_not_found(key) from None
        except OSError as exc:
            raise StorageUnavailable(f"cannot read blob {key!r}: {exc.strerror}", key=key) from exc
        try:
            stop = size if end is None else min(end, size)
            position = start
            if start:
                await asyncio.to_thread(handle.seek, start)
            # Bounded: the open descriptor pins the inode, whose size cannot grow (writers rename).
            while position < stop:
                data = await asyncio.to_thread(handle.read, min(self._chunk_size, stop - position))
                if not data:
                    break
                position += len(data)
                yield data
        finally:
            # Closing a read-only descriptor does not block; doing it inline keeps the
            # generator's cleanup safe during loop shutdown.
            handle.close()

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def size(self, key: str) -> int:
        path = self._path(key)
        try:
            stat = await asyncio.to_thread(path.stat)
        except (FileNotFoundError, NotADirectoryError):
            raise blob_not_found(key) from None
        if not S_ISREG(stat.st_mode):
            raise blob_not_found(key)
        return stat.st_size

    async def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            await asyncio.to_thread(path.unlink)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return False
        except OSError as exc:
            raise StorageUnavailable(f"cannot delete blob {key!r}: {exc.strerror}", key=key) from exc
        return True

    async def list(self, prefix: str = "") -> builtins.list[str]:
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> builtins.list[str]:
        # Walk only below the deepest directory the prefix names.
        base_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if base_rel and not _KEY_RE.fullmatch(base_rel):
            return []
        base = self.root / base_rel if base_rel else self.root
        keys: builtins.list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if name.startswith("."):
                    continue  # temporary files of uploads in progress
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    async def ping(self) -> None:
        ok = await asyncio.to_thread(lambda: self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK))
        if not ok:
            raise StorageUnavailable(f"blob directory {self.root} is missing or not writable")


def _open_for_read(path: Path) -> tuple[IO[bytes], int]:
    handle = open(path, "rb")  # noqa: SIM115 - closed by the caller's generator
    try:
        return handle, os.fstat(handle.fileno()).st_size
    except BaseException:
        handle.close()
        raise


def _unlink_quietly(path: Path) -> None:
    path.unlink(missing_ok=True)


def create_blob_store(settings: Settings) -> BlobStore:
    """The store the settings ask for: S3 when ``S3_BUCKET`` is set, else a directory.

    The store is not opened; call ``await store.open()`` (or ``async with``) first.
    """
    if settings.s3_bucket:
        # Imported here so a directory-only deployment never pays for importing boto3.
        from app.storage.blobs_s3 import S3BlobStore

        return S3BlobStore.from_settings(settings)
    return DirectoryBlobStore(settings.data_dir / "blobs")

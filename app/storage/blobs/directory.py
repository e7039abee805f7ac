"""The embedded default blob store: files under ``<data_dir>/blobs``."""

from __future__ import annotations

import asyncio
import builtins
import os
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from stat import S_ISREG
from typing import IO

from app.errors import StorageUnavailable
from app.storage.blobs.base import (
    CHUNK_SIZE,
    KEY_PATTERN,
    BackgroundCleanup,
    BlobStore,
    blob_not_found,
    check_range,
    validate_key,
)


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
        if base_rel and not KEY_PATTERN.fullmatch(base_rel):
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

    async def abort_uploads(self, key: str) -> int:
        path = self._path(key)
        return await asyncio.to_thread(_remove_parts, path.parent, f".{path.name}.")

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


def _remove_parts(directory: Path, stem: str) -> int:
    """Remove the part files ``put_stream`` names ``.<name>.<random>.part`` in ``directory``."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    parts = [n for n in names if n.startswith(stem) and n.endswith(".part")]
    for name in parts:
        _unlink_quietly(directory / name)
    return len(parts)


def _unlink_quietly(path: Path) -> None:
    path.unlink(missing_ok=True)

"""Streaming a snapshot blob back: size and SHA-256 checked on the fly, zstd decoded in a thread.

zstd's stream reader pulls compressed input through ``VerifyingDecoder.read()`` from a
private worker thread; each pull runs the blob iterator on the event loop. The stream
reader bounds the output of each read, so even a frame of zeros expanding a
thousandfold never materializes more than ``READ_BYTES`` at once. The thread is
private so that it never waits for a slot in the default executor that the blob
store itself uses (which could deadlock under load).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
from collections.abc import AsyncGenerator, Callable
from typing import IO, Any, cast

import zstandard

from app.errors import SnapshotCorrupt
from app.snapshots.manifest import ManifestBase, SnapshotManifest
from app.storage.blobs.base import BlobStore

#: Decompressed bytes per worker-thread read; bounds memory per read.
READ_BYTES = 512 * 1024
#: Largest zstd window accepted (levels up to 19 use at most 8 MiB); a crafted frame
#: asking for more is refused instead of allocating it.
MAX_WINDOW_BYTES = 16 << 20
#: Longest wait of the decompression thread for the next blob chunk, seconds.
PULL_TIMEOUT = 600.0


def snapshot_corrupt(manifest: ManifestBase, problem: str) -> SnapshotCorrupt:
    """The error for a snapshot that failed verification, naming it."""
    return SnapshotCorrupt(f"snapshot {manifest.snapshot_id!r} is corrupt: {problem}", snapshot_id=manifest.snapshot_id)


class VerifyingDecoder:
    """Streams a snapshot's blob, counts and hashes it, and decompresses it in a private thread.

    ``chunks()`` yields the decompressed tar stream; ``finish()`` (after the tar end)
    drains and checks the rest; ``aclose()`` always, to release the thread and stream.
    """

    def __init__(self, store: BlobStore, manifest: SnapshotManifest) -> None:
        self._manifest = manifest
        self._chunks = store.get_stream(manifest.blob_key)
        self._loop = asyncio.get_running_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="snapshot-zstd")
        self._sha = hashlib.sha256()
        self._size = 0
        self._pending = b""
        self._inflight: concurrent.futures.Future[Any] | None = None
        # zstd only calls read(); the stubs ask for a full IO object.
        source = cast("IO[bytes]", self)
        self._reader: Any = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES).stream_reader(
            source, read_size=1 << 20, closefd=False
        )
        self.raw_size = 0

    def read(self, size: int) -> bytes:
        """Compressed input for zstd; called in the worker thread only."""
        if not self._pending:
            chunk = asyncio.run_coroutine_threadsafe(self._pull(), self._loop).result(timeout=PULL_TIMEOUT)
            if not chunk:
                return b""
            self._sha.update(chunk)
            self._pending = chunk
        out, self._pending = self._pending[:size], self._pending[size:]
        return out

    async def _pull(self) -> bytes:
        chunk = await anext(self._chunks, b"")
        self._size += len(chunk)
        if self._size > self._manifest.compressed_size:
            raise snapshot_corrupt(
                self._manifest, f"blob is larger than the {self._manifest.compressed_size} bytes recorded"
            )
        return chunk

    def _submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        self._inflight = self._executor.submit(fn, *args)
        return self._inflight

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(self._submit(fn, *args))

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """Decompressed bytes until the end of the zstd frame.

        One read runs ahead: while the consumer parses this block, the thread already
        pulls, hashes and decompresses the next (the pull and sha256 release the GIL,
        python-zstandard does not). At most two reads' worth of output exist at once.
        """
        ahead = self._submit(self._reader.read, READ_BYTES)
        while True:  # bounded: raw_size is checked against the manifest below
            try:
                data: bytes = await asyncio.wrap_future(ahead)
            except zstandard.ZstdError as exc:
                raise snapshot_corrupt(self._manifest, f"blob does not decompress ({exc})") from exc
            if not data:
                return
            self.raw_size += len(data)
            if self.raw_size > self._manifest.raw_size:
                raise snapshot_corrupt(
                    self._manifest, f"archive is larger than the {self._manifest.raw_size} bytes recorded"
                )
            ahead = self._submit(self._reader.read, READ_BYTES)
            yield data

    async def finish(self) -> None:
        """Hash what remains of the blob and compare size and SHA-256 with the manifest."""
        for _ in range(self._manifest.compressed_size + 2):  # bounded: _pull refuses excess bytes
            chunk = await self._pull()
            if not chunk:
                break
            await self._in_thread(self._sha.update, chunk)
        if self._size != self._manifest.compressed_size:
            raise snapshot_corrupt(
                self._manifest, f"blob has {self._size} bytes, the manifest says {self._manifest.compressed_size}"
            )
        if self._sha.hexdigest() != self._manifest.sha256:
            raise snapshot_corrupt(self._manifest, "blob SHA-256 does not match the manifest")
        if self.raw_size != self._manifest.raw_size:
            raise snapshot_corrupt(
                self._manifest, f"archive has {self.raw_size} bytes, the manifest says {self._manifest.raw_size}"
            )

    async def aclose(self) -> None:
        """Stop the worker (after its current read) and close the blob stream."""
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            # It may be waiting for a pull that needs this loop: wait, do not block.
            await asyncio.wait({asyncio.wrap_future(inflight)}, timeout=PULL_TIMEOUT)
        with contextlib.suppress(RuntimeError):  # a pull still running after a timeout
            await self._chunks.aclose()
        self._reader.close()
        self._executor.shutdown(wait=False)

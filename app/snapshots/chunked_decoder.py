"""Streaming a v2 snapshot back: chunks fetched in parallel, verified, reassembled in order.

Same interface as ``decoder.VerifyingDecoder`` (``chunks()``, ``finish()``,
``aclose()``), so the reader treats both formats alike. At most ``window``
chunks are fetched or held at once (a few MiB each), whatever the snapshot's size;
each is checked (stored size, zstd, plaintext size and SHA-256) before any of its
bytes are handed on, and the whole stream's SHA-256 and size are checked at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import AsyncGenerator

from app.snapshots.chunk_store import ChunkMismatch, fetch_chunk
from app.snapshots.chunked_manifest import ChunkedManifest
from app.snapshots.decoder import snapshot_corrupt
from app.storage.blobs.base import BlobStore


class ChunkedDecoder:
    """The plaintext tar stream of a v2 snapshot, verified chunk by chunk and as a whole."""

    def __init__(self, blobs: BlobStore, manifest: ChunkedManifest, *, concurrency: int = 4) -> None:
        self._blobs = blobs
        self._manifest = manifest
        self._window = max(1, concurrency)
        self._tasks: deque[asyncio.Task[bytes]] = deque()
        self._sha = hashlib.sha256()
        self._done = False
        self.raw_size = 0

    async def _fetch(self, index: int) -> bytes:
        try:
            return await fetch_chunk(self._blobs, self._manifest.chunks[index])
        except ChunkMismatch as exc:
            raise snapshot_corrupt(self._manifest, f"chunk {index}: {exc}") from None

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """Verified plaintext, one chunk at a time, in stream order."""
        refs = self._manifest.chunks
        ahead = 0
        for _ in range(len(refs)):
            while ahead < len(refs) and len(self._tasks) < self._window:
                self._tasks.append(asyncio.create_task(self._fetch(ahead)))
                ahead += 1
            data = await self._tasks.popleft()
            await asyncio.to_thread(self._sha.update, data)
            self.raw_size += len(data)
            yield data
        self._done = True

    async def finish(self) -> None:
        """After the tar end: every chunk was consumed and the stream's SHA-256 matches."""
        if not self._done or self.raw_size != self._manifest.raw_size:
            raise snapshot_corrupt(
                self._manifest, f"archive ends after {self.raw_size} of the {self._manifest.raw_size} bytes recorded"
            )
        if self._sha.hexdigest() != self._manifest.sha256:
            raise snapshot_corrupt(self._manifest, "the stream's SHA-256 does not match the manifest")

    async def aclose(self) -> None:
        """Cancel fetches still running (a failed or abandoned restore)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

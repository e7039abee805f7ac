"""The snapshot chunk store: ``chunks/<sha256>`` blobs, each one zstd frame, stored once.

Storing a chunk (``ChunkStore.put``) follows the protocol that garbage collection
relies on (``app.services.chunk_gc``):

1. mark the chunk in the index *before* relying on it: a live mark keeps the
   collector away from it for a whole grace period;
2. if the index knows it, confirm with the bucket (the index can be ahead of a
   failed upload, or out of date): present → reuse it, nothing uploaded;
3. otherwise index it (marked) and upload it. A chunk the collector is deleting
   right now is waited for (its blob must be gone before we upload it again, or
   the collector's delete could land after our upload).

Reading (``fetch_chunk``) checks the stored size, decompresses with bounded
output, and checks the plaintext's length and SHA-256.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Literal, NamedTuple, Protocol

import zstandard

from app.errors import NotFound, PayloadTooLarge, StorageUnavailable
from app.snapshots.chunked_manifest import ChunkRef, chunk_key
from app.snapshots.coalescer import Coalescer
from app.storage.blobs.base import BlobStore

ChunkState = Literal["live", "deleting"]
#: Largest zstd window accepted when decoding a chunk (level <= 19 needs at most 8 MiB).
MAX_WINDOW_BYTES = 16 << 20
#: zstd contexts kept for reuse; more threads compressing at once get fresh ones.
IDLE_COMPRESSORS = 2
#: How long a writer waits for the collector to finish deleting a chunk it needs.
DELETING_WAIT_SECONDS = 30.0


class NewChunk(NamedTuple):
    """A chunk about to be uploaded, as the index records it."""

    sha256: str
    raw_size: int
    stored_size: int


class ByteBudget:
    """At most ``limit`` bytes held at once by the holders of ``reserve``; one holder may exceed it alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._waiters: list[asyncio.Future[None]] = []

    @contextlib.asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[None]:
        """Hold ``size`` bytes of the budget for the block (waits, in no fixed order, for room)."""
        while self.held and self.held + size > self.limit:  # bounded: each release wakes us to look again
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        self.held += size
        try:
            yield
        finally:
            # Released synchronously (no lock to wait for), so a cancelled holder cannot keep bytes;
            # every waiter looks again, so a cancelled waiter cannot swallow a wake-up.
            self.held -= size
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)


class BucketSlots:
    """Bounds on one writer's concurrent bucket requests: existence checks are tiny, uploads are not."""

    def __init__(self, concurrency: int, *, lookups_per_upload: int = 4, upload_bytes: int | None = None) -> None:
        self.uploads = asyncio.Semaphore(concurrency)
        # A known chunk costs one HEAD: with the uploads' bound, a second snapshot would
        # wait on round trips (~20 ms on S3) rather than on hashing.
        self.lookups = asyncio.Semaphore(concurrency * lookups_per_upload)
        #: Raw bytes of new chunks being compressed or uploaded at once (None: unbounded here).
        self.upload_bytes = ByteBudget(upload_bytes) if upload_bytes else None


class ChunkMarks(Protocol):
    """What the chunk store needs of the chunk index (``app.storage.state.chunks.ChunkIndex``)."""

    async def mark(self, sha256: str) -> ChunkState | None: ...

    async def mark_many(self, hashes: Collection[str]) -> Mapping[str, ChunkState]: ...

    async def add_many(self, chunks: Collection[NewChunk]) -> Mapping[str, ChunkState]: ...


class ChunkMismatch(ValueError):
    """A fetched chunk is not the chunk its reference names (names what differs)."""


class ChunkStore:
    """Content-addressed chunk blobs plus their index.

    Index lookups of concurrent ``put`` calls are batched (``Coalescer``): one
    transaction marks or indexes every chunk that arrived while the previous one ran.
    """

    def __init__(self, blobs: BlobStore, index: ChunkMarks, *, compression_level: int = 3) -> None:
        self.blobs = blobs
        self.index = index
        self._level = compression_level
        self._marks: Coalescer[str, ChunkState] = Coalescer(index.mark_many)
        self._adds: Coalescer[NewChunk, ChunkState] = Coalescer(self._add_many)
        # Idle compressors, reused: a zstd context per chunk costs more than compressing a small one.
        self._compressors: list[zstandard.ZstdCompressor] = []

    async def put(self, raw: bytes, sha256: str, *, slots: BucketSlots | None = None) -> tuple[ChunkRef, bool]:
        """Make sure chunk ``sha256`` (plaintext ``raw``) is stored; (its reference, uploaded by us).

        ``slots`` bound the caller's concurrent requests to the blob store.
        """
        key = chunk_key(sha256)
        lookup = slots.lookups if slots else contextlib.nullcontext()
        upload = slots.uploads if slots else contextlib.nullcontext()
        state = await self._marks.get(sha256)
        if state == "deleting":
            state = await self._await_deleted(sha256)
        if state == "live":
            try:
                async with lookup:
                    stored = await self.blobs.size(key)
            except NotFound:
                stored = None
            if stored is not None:
                return ChunkRef(sha256=sha256, size=len(raw), stored_size=stored), False
        budget = slots.upload_bytes.reserve(len(raw)) if slots and slots.upload_bytes else contextlib.nullcontext()
        async with budget:
            packed = await asyncio.to_thread(self._compress, raw)
            if await self._adds.get(NewChunk(sha256, len(raw), len(packed))) != "live":
                raise StorageUnavailable(f"chunk {sha256} is being garbage-collected; retry the snapshot")
            async with upload:
                written = await self.blobs.put_bytes(key, packed)
        if written != len(packed):
            raise StorageUnavailable(f"blob store stored {written} of {len(packed)} bytes of chunk {sha256}")
        return ChunkRef(sha256=sha256, size=len(raw), stored_size=len(packed)), True

    async def settle(self) -> None:
        """Wait for index updates in flight (after a failed write: nothing changes once it returned)."""
        await self._marks.settle()
        await self._adds.settle()

    async def _add_many(self, chunks: list[NewChunk]) -> dict[NewChunk, ChunkState]:
        states = await self.index.add_many(chunks)
        return {chunk: states[chunk.sha256] for chunk in chunks if chunk.sha256 in states}

    async def _await_deleted(self, sha256: str) -> ChunkState | None:
        deadline = time.monotonic() + DELETING_WAIT_SECONDS
        delay = 0.05
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            state = await self.index.mark(sha256)
            if state != "deleting":
                return state
        raise StorageUnavailable(f"chunk {sha256} is still being garbage-collected; retry the snapshot")

    def _compress(self, raw: bytes) -> bytes:
        # Worker thread. A compressor serves one thread at a time: popped here, put back after.
        try:
            compressor = self._compressors.pop()
        except IndexError:
            compressor = zstandard.ZstdCompressor(level=self._level, write_checksum=True)
        try:
            return compressor.compress(raw)
        finally:
            if len(self._compressors) < IDLE_COMPRESSORS:  # each holds MiBs of tables
                self._compressors.append(compressor)


async def fetch_chunk(blobs: BlobStore, ref: ChunkRef) -> bytes:
    """The verified plaintext of ``ref``.

    Raises:
        ChunkMismatch: missing, of the wrong size, undecodable, or of another hash.
        StorageUnavailable: the blob store failed.
    """
    try:
        packed = await blobs.get_bytes(ref.key, limit=ref.stored_size)
    except NotFound:
        raise ChunkMismatch(f"chunk {ref.sha256} is missing") from None
    except PayloadTooLarge:
        raise ChunkMismatch(f"chunk {ref.sha256} is larger than the {ref.stored_size} bytes recorded") from None
    if len(packed) != ref.stored_size:
        raise ChunkMismatch(f"chunk {ref.sha256} has {len(packed)} bytes, not the {ref.stored_size} recorded")
    return await asyncio.to_thread(_unpack, packed, ref)


def _unpack(packed: bytes, ref: ChunkRef) -> bytes:
    """Decompress (output bounded by the recorded size) and verify a chunk; runs in a worker thread."""
    try:
        raw = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES).decompress(packed, max_output_size=ref.size)
    except zstandard.ZstdError as exc:
        raise ChunkMismatch(f"chunk {ref.sha256} does not decompress ({exc})") from None
    if len(raw) != ref.size:
        raise ChunkMismatch(f"chunk {ref.sha256} holds {len(raw)} bytes, not the {ref.size} recorded")
    if hashlib.sha256(raw).hexdigest() != ref.sha256:
        raise ChunkMismatch(f"chunk {ref.sha256} does not match its SHA-256")
    return raw

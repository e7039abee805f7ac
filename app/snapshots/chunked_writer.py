"""Writing a v2 snapshot: the v1 tar stream, cut into content-defined chunks, each stored once.

Pipeline (everything streams; nothing on the service's disk):

* ``ArchiveBuilder`` (shared with v1: same checks, scrubbing and secret refusal)
  yields ~1 MiB batches of tar bytes on the event loop;
* a private worker thread hashes the whole stream, cuts it (``ChunkCutter``, C
  speed) and hashes each chunk, while the builder prepares the next batches;
* each chunk is looked up (index queries batched across chunks, ``ChunkStore``),
  and if new compressed and uploaded by a task; chunk tasks hold at most
  ``LOOKUP_WINDOW_BYTES`` of chunks at once, of which at most ``WINDOW_BYTES`` are
  being compressed or uploaded (bounding memory); at most ``concurrency`` of them
  upload at once (more may check that a known chunk is in the bucket), and their
  results are collected in stream order;
* before the manifest (the commit point) every chunk it lists is marked again, so
  the collector cannot have removed one it names (``app.services.chunk_gc``).

On failure nothing is committed: no manifest. Chunks already uploaded stay in the
bucket unreferenced and are collected after the grace period.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime

from app.errors import StorageUnavailable
from app.snapshots.chunk_store import BucketSlots, ChunkStore
from app.snapshots.chunked_manifest import ChunkedManifest, ChunkRef
from app.snapshots.chunking import ChunkCutter
from app.snapshots.manifest import manifest_key
from app.snapshots.scrub import SecretScanner
from app.snapshots.writer import ArchiveBuilder, Exporter, check_new_snapshot
from app.storage.blobs.base import BackgroundCleanup, BlobStore

#: Raw bytes of new chunks being compressed or uploaded at once: bounds memory.
#: Freed chunk buffers stay in the worker threads' malloc arenas, so peak RSS grows with it
#: (measured on a first snapshot: 16 MiB +109 MB, 8 MiB +66 MB, at the same speed).
WINDOW_BYTES = 8 << 20
#: Raw bytes of chunks in flight at all (being looked up and confirmed, or in ``WINDOW_BYTES``).
#: A known chunk waits for an index round trip and a HEAD (tens of ms on a busy host) and
#: holds its bytes until then (it is uploaded again if the bucket lacks it): with only
#: ``WINDOW_BYTES`` of them in flight, a second snapshot waited on those round trips
#: (measured in one process, alternating: 24 MiB vs 8 MiB, -14% on the second snapshot of a
#: 256 MiB workspace; peak RSS of a first snapshot +15 MB, the raw chunks waiting for the budget).
LOOKUP_WINDOW_BYTES = 24 << 20
#: Archive batches (~1 MiB) built ahead of the cutter.
READ_AHEAD = 2

#: ``ChunkIndex.mark_all``: re-mark chunks, return how many are still live.
MarkAll = Callable[[Collection[str]], Awaitable[int]]


async def write_chunked_snapshot(
    chunks: ChunkStore,
    *,
    snapshot_id: str,
    sandbox_id: str,
    provider: str,
    paths: Sequence[str],
    export: Exporter,
    mark_all: MarkAll,
    session_id: str | None = None,
    repo: str | None = None,
    git_head: str | None = None,
    reason: str = "manual",
    secret_values: Iterable[str] = (),
    allow_external_symlinks: bool = False,
    concurrency: int = 4,
) -> ChunkedManifest:
    """Capture ``paths`` as v2 snapshot ``snapshot_id``; arguments and errors as ``write_snapshot``.

    ``mark_all(hashes)`` re-marks the listed chunks and returns how many are still
    live (``ChunkIndex.mark_all``); fewer than listed means the collector took one
    during a write longer than its grace period, and the snapshot fails (503) rather
    than commit a manifest naming a missing chunk.
    """
    store = chunks.blobs
    path_list = await check_new_snapshot(store, snapshot_id, paths)
    builder = ArchiveBuilder(path_list, export, SecretScanner(secret_values), allow_external_symlinks)
    pipeline = _ChunkPipeline(chunks, concurrency)
    cleanup = BackgroundCleanup()
    try:
        refs = await pipeline.run(builder.stream())
        distinct = {ref.sha256 for ref in refs}
        if await mark_all(distinct) != len(distinct):
            raise StorageUnavailable(f"snapshot {snapshot_id}: a chunk was garbage-collected while it was written")
        manifest = ChunkedManifest(
            snapshot_id=snapshot_id,
            sandbox_id=sandbox_id,
            session_id=session_id,
            repo=repo,
            provider=provider,
            compressed_size=sum(ref.stored_size for ref in refs),
            sha256=pipeline.sha256.hexdigest(),
            git_head=git_head,
            reason=reason,
            created_at=datetime.now(UTC),
            chunks=refs,
            stored_bytes=pipeline.stored_bytes,
            **builder.manifest_fields(),
        )
        await store.put_bytes(manifest_key(snapshot_id), manifest.to_bytes())
    except BaseException:
        # The manifest only: an appearance-only failure of its write must not leave a snapshot.
        await cleanup.run(f"discard partial snapshot {snapshot_id}", _forget(store, snapshot_id))
        raise
    return manifest


async def _forget(store: BlobStore, snapshot_id: str) -> None:
    with contextlib.suppress(Exception):
        await store.delete(manifest_key(snapshot_id))


class _ChunkPipeline:
    """Cuts the raw stream into chunks and stores them, up to ``LOOKUP_WINDOW_BYTES`` at a time, in order."""

    def __init__(self, chunks: ChunkStore, concurrency: int) -> None:
        self._chunks = chunks
        self._slots = BucketSlots(concurrency, upload_bytes=WINDOW_BYTES)
        self._cutter = ChunkCutter()
        self._tasks: deque[tuple[asyncio.Task[ChunkRef], int]] = deque()
        self._in_flight = 0
        self._seen: dict[str, asyncio.Future[ChunkRef]] = {}
        self.sha256 = hashlib.sha256()
        self.stored_bytes = 0

    def _feed(self, batch: bytes | None) -> list[tuple[bytes, str]]:
        # Worker thread: hashing and cutting release the GIL on large buffers. Each chunk is
        # hashed here too, not in a thread hop of its own that would queue behind bucket calls.
        chunks = self._cutter.finish() if batch is None else self._cutter.feed(batch)
        if batch is not None:
            self.sha256.update(batch)
        return [(chunk, hashlib.sha256(chunk).hexdigest()) for chunk in chunks]

    async def run(self, raw: AsyncGenerator[bytes, None]) -> list[ChunkRef]:
        refs: list[ChunkRef] = []
        # The archive is built (on the loop) while the previous batches are cut (in a thread).
        batches: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=READ_AHEAD)
        producer = asyncio.create_task(_produce(raw, batches))
        # Its own thread: the shared pool also runs the bucket calls, which would delay the stream.
        cutter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="snapshot-cut")
        loop = asyncio.get_running_loop()
        try:
            while (batch := await _next(batches, producer)) is not None:
                for chunk, sha in await loop.run_in_executor(cutter, self._feed, batch):
                    await self._submit(chunk, sha, refs)
            for chunk, sha in await loop.run_in_executor(cutter, self._feed, None):
                await self._submit(chunk, sha, refs)
            await producer
            while self._tasks:
                refs.append(await self._tasks.popleft()[0])
        except BaseException:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
            await self._cancel()
            raise
        finally:
            cutter.shutdown(wait=False)  # a cut still running (on a failure) ends on its own
        return refs

    async def _submit(self, chunk: bytes, sha: str, refs: list[ChunkRef]) -> None:
        while self._tasks and self._in_flight + len(chunk) > LOOKUP_WINDOW_BYTES:
            task, size = self._tasks.popleft()
            refs.append(await task)
            self._in_flight -= size
        self._tasks.append((asyncio.create_task(self._store(chunk, sha)), len(chunk)))
        self._in_flight += len(chunk)

    async def _store(self, chunk: bytes, sha: str) -> ChunkRef:
        earlier = self._seen.get(sha)
        if earlier is not None:  # the same chunk twice in one stream: stored once
            return await earlier
        future: asyncio.Future[ChunkRef] = asyncio.get_running_loop().create_future()
        self._seen[sha] = future
        try:
            ref, uploaded = await self._chunks.put(chunk, sha, slots=self._slots)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; the first task re-raises it
            raise
        if uploaded:
            self.stored_bytes += ref.stored_size
        future.set_result(ref)
        return ref

    async def _cancel(self) -> None:
        for task, _ in self._tasks:
            task.cancel()
        await asyncio.gather(*(task for task, _ in self._tasks), return_exceptions=True)
        self._tasks.clear()
        await self._chunks.settle()


async def _produce(raw: AsyncGenerator[bytes, None], batches: asyncio.Queue[bytes | None]) -> None:
    async with contextlib.aclosing(raw):
        async for batch in raw:
            await batches.put(batch)
    await batches.put(None)


async def _next(batches: asyncio.Queue[bytes | None], producer: asyncio.Task[None]) -> bytes | None:
    """The next batch; ``None`` at the end; the producer's error if it failed."""
    getter = asyncio.ensure_future(batches.get())
    try:
        await asyncio.wait({getter, producer}, return_when=asyncio.FIRST_COMPLETED)
        failure = None if getter.done() else producer.exception()
        if failure is not None:
            raise failure
        return await getter  # a producer that ended well put the end marker first
    finally:
        getter.cancel()

"""Garbage collection of v2 snapshot chunks: delete chunks no manifest lists any more.

Deleting a snapshot removes its manifest only, so a chunk shared with another
snapshot (or a repo image) is never lost. A pass of ``ChunkCollector.collect``
(run periodically under the lease ``job:snapshot-gc``, so by one replica at a
time) removes the chunks that no manifest in the bucket lists and that no writer
has relied on for the grace period.

Why a concurrent writer never loses a chunk it counted on:

* a writer *marks* a chunk in the index (``marked_at = now``) **before** it skips
  the chunk's upload or uploads it (``ChunkStore.put``), and marks all its chunks
  again just before it writes its manifest (``write_chunked_snapshot``);
* the collector computes ``cutoff = now - grace`` *before* it lists the
  manifests, and moves a chunk to ``deleting`` only by one conditional update
  (``state = live AND marked_at < cutoff``), and only then deletes its blob;
* so a writer that marked a chunk after the cutoff keeps it; a manifest written
  after the listing was preceded by a re-mark, which is after the cutoff as long
  as re-mark and manifest write are less than ``grace`` apart (milliseconds vs hours);
* a writer whose final re-mark finds a chunk no longer live (a write that took
  longer than the grace period) fails with 503 instead of committing a manifest
  naming a deleted chunk; a writer that meets a ``deleting`` chunk waits until its
  blob and row are gone and uploads it afresh.

Chunks of failed snapshots are indexed before upload, so they are collected too.
Chunks the index does not know (another state store sharing the bucket) are left alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta

from app.errors import NotFound
from app.logging import get_logger
from app.snapshots.chunked_manifest import chunk_key
from app.snapshots.manifest import MAX_MANIFEST_BYTES
from app.storage.blobs.base import BlobStore
from app.storage.state.chunks import ChunkIndex
from app.storage.state.times import utcnow

log = get_logger("chunk_gc")

MANIFEST_PREFIX = "snapshots/"
#: Chunks examined per pass; the next pass continues.
BATCH = 5000


class ChunkCollector:
    """One garbage-collection pass at a time over the chunk index and the bucket's manifests."""

    def __init__(
        self,
        blobs: BlobStore,
        index: ChunkIndex,
        *,
        grace_seconds: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._blobs = blobs
        self._index = index
        self._grace = timedelta(seconds=grace_seconds)
        self._clock = clock

    async def collect(self) -> dict[str, int]:
        """Delete unreferenced chunks older than the grace period; counts of what was done."""
        finished = 0
        for sha in await self._index.deleting(BATCH):  # claimed by a pass that died
            await self._remove(sha)
            finished += 1
        cutoff = self._clock() - self._grace  # before the listing: see the module docstring
        referenced = await self.referenced()
        deleted = 0
        for sha in await self._index.stale(cutoff, BATCH):
            if sha in referenced or not await self._index.claim(sha, cutoff):
                continue
            await self._remove(sha)
            deleted += 1
        if deleted or finished:
            log.info("chunk_gc.pass", deleted=deleted, finished=finished, referenced=len(referenced))
        return {"deleted": deleted, "finished": finished} if deleted or finished else {}

    async def _remove(self, sha: str) -> None:
        await self._blobs.delete(chunk_key(sha))  # a blob that is already gone is fine
        await self._index.forget(sha)

    async def referenced(self) -> set[str]:
        """Hashes of every chunk some v2 manifest in the bucket lists.

        A manifest that cannot be parsed is no snapshot (restore refuses it) and
        protects nothing; a storage error aborts the pass (nothing deleted).
        """
        hashes: set[str] = set()
        for key in await self._blobs.list(MANIFEST_PREFIX):
            if not key.endswith(".json"):
                continue
            try:
                raw = await self._blobs.get_bytes(key, limit=MAX_MANIFEST_BYTES)
            except NotFound:  # deleted since the listing
                continue
            try:
                data = json.loads(raw)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("format_version") == 2 and isinstance(data.get("chunks"), list):
                hashes.update(c["sha256"] for c in data["chunks"] if isinstance(c, dict) and "sha256" in c)
        return hashes

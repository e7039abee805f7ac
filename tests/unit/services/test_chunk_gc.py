"""Chunk garbage collection: what it deletes, what it keeps, and its races with writers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from app.errors import SnapshotNotFound, StorageUnavailable
from app.services.chunk_gc import ChunkCollector
from app.snapshots.chunk_store import ChunkState, ChunkStore
from app.snapshots.chunked_manifest import CHUNK_PREFIX, ChunkedManifest
from app.snapshots.chunked_writer import write_chunked_snapshot
from app.snapshots.manifest import manifest_key
from app.snapshots.reader import delete_snapshot, load_manifest, verify_snapshot
from app.storage.blobs import DirectoryBlobStore
from app.storage.state import StateStore
from app.storage.state.chunks import ChunkIndex
from app.storage.state.tables import ChunkRow
from app.storage.state.times import utcnow
from tests.support_tree import tar_stream

WORKSPACE = "/workspace"
GRACE = 3600.0


class HookedStore(DirectoryBlobStore):
    """A directory store that runs a hook when the collector lists manifests or deletes a chunk."""

    on_list: Callable[[], Awaitable[None]] | None = None
    on_delete: Callable[[str], Awaitable[None]] | None = None

    async def list(self, prefix: str = "") -> list[str]:
        keys = await super().list(prefix)
        if self.on_list is not None and prefix == "snapshots/":
            hook, self.on_list = self.on_list, None
            await hook()
        return keys

    async def delete(self, key: str) -> bool:
        if self.on_delete is not None and key.startswith(CHUNK_PREFIX):
            hook, self.on_delete = self.on_delete, None
            await hook(key)
        return await super().delete(key)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[HookedStore]:
    blobs = HookedStore(tmp_path / "blobs")
    await blobs.open()
    yield blobs
    await blobs.aclose()


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[StateStore]:
    db = StateStore(f"sqlite:///{tmp_path}/state.db")
    await db.open()
    yield db
    await db.aclose()


def tree(root: Path, files: int = 12, seed: bytes = b"") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{i}.bin").write_bytes(seed + os.urandom(300_000))
        os.utime(root / f"f{i}.bin", (1_700_000_000, 1_700_000_000))
    os.utime(root, (1_700_000_000, 1_700_000_000))
    return root


async def snapshot(
    blobs: DirectoryBlobStore,
    index: ChunkIndex,
    snapshot_id: str,
    src: Path,
    mark_all: Callable[[Collection[str]], Awaitable[int]] | None = None,
) -> ChunkedManifest:
    return await write_chunked_snapshot(
        ChunkStore(blobs, index),
        snapshot_id=snapshot_id,
        sandbox_id="s",
        provider="local",
        paths=[WORKSPACE],
        export=lambda path: tar_stream(src),
        mark_all=mark_all or index.mark_all,
    )


async def backdate(state: StateStore, seconds: float) -> None:
    """Pretend every chunk was last relied on ``seconds`` ago."""
    async with state.database.sessions.begin() as session:
        await session.execute(update(ChunkRow).values(marked_at=utcnow() - timedelta(seconds=seconds)))


def collector(blobs: DirectoryBlobStore, state: StateStore) -> ChunkCollector:
    return ChunkCollector(blobs, state.chunks, grace_seconds=GRACE)


async def chunk_keys(blobs: DirectoryBlobStore) -> set[str]:
    return set(await blobs.list(CHUNK_PREFIX))


async def test_deleting_a_snapshot_keeps_shared_chunks(store: HookedStore, state: StateStore, tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    a = await snapshot(store, state.chunks, "A", src)
    (src / "extra.bin").write_bytes(os.urandom(2_000_000))
    b = await snapshot(store, state.chunks, "B", src)
    only_a = {c.key for c in a.chunks} - {c.key for c in b.chunks}
    assert await delete_snapshot(store, "A")
    assert await chunk_keys(store) == {c.key for c in a.chunks + b.chunks}  # deleting removed no chunk

    await backdate(state, 2 * GRACE)
    assert (await collector(store, state).collect())["deleted"] == len(only_a)
    assert await chunk_keys(store) == {c.key for c in b.chunks}
    await verify_snapshot(store, "B")
    assert (await state.chunks.totals())[0] == len({c.sha256 for c in b.chunks})


async def test_nothing_is_collected_within_the_grace_period(
    store: HookedStore, state: StateStore, tmp_path: Path
) -> None:
    a = await snapshot(store, state.chunks, "A", tree(tmp_path / "src"))
    await delete_snapshot(store, "A")
    assert await collector(store, state).collect() == {}
    assert await chunk_keys(store) == {c.key for c in a.chunks}


class HookedIndex(ChunkIndex):
    """The real index; runs a hook right after the collector picked its candidates."""

    on_stale: Callable[[], Awaitable[None]] | None = None

    async def stale(self, cutoff: datetime, limit: int) -> list[str]:
        candidates = await super().stale(cutoff, limit)
        if self.on_stale is not None:
            hook, self.on_stale = self.on_stale, None
            await hook()
        return candidates


@pytest.mark.parametrize("moment", ["after the manifest listing", "after the candidates were picked"])
async def test_writer_relying_on_a_chunk_during_the_pass_keeps_it(
    store: HookedStore, state: StateStore, tmp_path: Path, moment: str
) -> None:
    """Stale, unreferenced chunks; the collector starts; a writer reuses them and commits; the claims fail."""
    src = tree(tmp_path / "src")
    old = await snapshot(store, state.chunks, "old", src)
    await delete_snapshot(store, "old")
    await backdate(state, 2 * GRACE)
    written: list[ChunkedManifest] = []

    async def writer() -> None:
        written.append(await snapshot(store, state.chunks, "new", src))

    index = HookedIndex(state.database)
    if moment == "after the manifest listing":
        store.on_list = writer
    else:
        index.on_stale = writer
    assert await ChunkCollector(store, index, grace_seconds=GRACE).collect() == {}
    assert written[0].stored_bytes == 0  # it relied on the stored chunks...
    assert await chunk_keys(store) == {c.key for c in old.chunks}  # ...and they are all still there
    await verify_snapshot(store, "new")


class ReportingIndex(ChunkIndex):
    """The real index, telling the test when a writer met a chunk being deleted."""

    met_deleting: asyncio.Event

    async def mark(self, sha256: str) -> ChunkState | None:
        state = await super().mark(sha256)
        if state == "deleting":
            self.met_deleting.set()
        return state


async def test_writer_meeting_a_chunk_being_deleted_uploads_it_again(
    store: HookedStore, state: StateStore, tmp_path: Path
) -> None:
    src = tree(tmp_path / "src", files=4)
    await snapshot(store, state.chunks, "old", src)
    await delete_snapshot(store, "old")
    await backdate(state, 2 * GRACE)
    index = ReportingIndex(state.database)
    index.met_deleting = asyncio.Event()
    writer: list[asyncio.Task[ChunkedManifest]] = []

    async def writer_while_a_blob_is_deleted(key: str) -> None:
        # The chunk is claimed ("deleting"): the writer must wait, not reuse it.
        writer.append(asyncio.create_task(snapshot(store, index, "new", src)))
        await asyncio.wait_for(index.met_deleting.wait(), timeout=30)

    store.on_delete = writer_while_a_blob_is_deleted
    result = await collector(store, state).collect()
    assert result["deleted"] >= 1
    manifest = await asyncio.wait_for(writer[0], timeout=60)
    assert manifest.stored_bytes > 0  # what the collector removed was uploaded afresh
    assert {c.key for c in manifest.chunks} <= await chunk_keys(store)
    await verify_snapshot(store, "new")


async def test_writer_outlived_by_the_grace_period_fails_instead_of_committing(
    store: HookedStore, state: StateStore, tmp_path: Path
) -> None:
    """A write longer than the grace period: the collector takes its chunks; it must not commit."""
    src = tree(tmp_path / "src")

    async def late_mark_all(hashes: Collection[str]) -> int:
        await backdate(state, 2 * GRACE)  # as if the upload had taken hours
        assert (await collector(store, state).collect())["deleted"] >= 1
        return await state.chunks.mark_all(hashes)

    with pytest.raises(StorageUnavailable, match="garbage-collected"):
        await snapshot(store, state.chunks, "slow", src, mark_all=late_mark_all)
    assert not await store.exists(manifest_key("slow"))


async def test_chunks_of_a_failed_snapshot_are_collected(store: HookedStore, state: StateStore, tmp_path: Path) -> None:
    src = tree(tmp_path / "src", files=120)

    async def dies_midway(path: str) -> AsyncIterator[bytes]:
        sent = 0
        async for piece in tar_stream(src):
            yield piece
            sent += len(piece)
            # Once some chunks are stored: the writer's window holds several in flight.
            if sent > 20 << 20 and await chunk_keys(store):
                raise OSError("sandbox vanished")

    with pytest.raises(OSError, match="vanished"):
        await write_chunked_snapshot(
            ChunkStore(store, state.chunks),
            snapshot_id="dead",
            sandbox_id="s",
            provider="local",
            paths=[WORKSPACE],
            export=dies_midway,
            mark_all=state.chunks.mark_all,
        )
    orphans = await chunk_keys(store)
    assert orphans and not await store.exists(manifest_key("dead"))  # no manifest: no snapshot
    with pytest.raises(SnapshotNotFound):
        await load_manifest(store, "dead")
    # Indexed before upload: an upload cut short by the failure leaves a row without a blob.
    indexed, _ = await state.chunks.totals()
    assert indexed >= len(orphans)
    await backdate(state, 2 * GRACE)
    assert (await collector(store, state).collect())["deleted"] == indexed
    assert await chunk_keys(store) == set() and await state.chunks.totals() == (0, 0)


async def test_a_pass_that_died_mid_way_is_finished(store: HookedStore, state: StateStore, tmp_path: Path) -> None:
    a = await snapshot(store, state.chunks, "A", tree(tmp_path / "src", files=3))
    await delete_snapshot(store, "A")
    await backdate(state, 2 * GRACE)
    victim = a.chunks[0].sha256
    assert await state.chunks.claim(victim, utcnow())  # claimed, then the replica died
    # A writer does not reuse a chunk in that state, and the next pass removes it first.
    assert await state.chunks.mark(victim) == "deleting"
    result = await ChunkCollector(store, state.chunks, grace_seconds=10 * GRACE).collect()
    assert result == {"deleted": 0, "finished": 1}
    assert not await store.exists(a.chunks[0].key)

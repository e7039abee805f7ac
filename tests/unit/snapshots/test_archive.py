"""Snapshot archive v1: fidelity, commit point, corruption, against every blob store."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zstandard

from app.errors import BadRequest, Conflict, ProviderError, SnapshotCorrupt, SnapshotNotFound, StorageUnavailable
from app.snapshots.manifest import SnapshotManifest, blob_key, manifest_key
from app.snapshots.reader import delete_snapshot, load_manifest, read_snapshot, restore_snapshot, verify_snapshot
from app.snapshots.writer import write_snapshot
from app.storage.blobs import BlobStore, DirectoryBlobStore
from tests.support_tree import build_sample_tree, collect, tar_extract, tar_stream, tree_entries, tree_hash

WORKSPACE = "/workspace"
STATE_DIR = "/home/sandbox/.local/share/opencode"


async def snapshot_of(
    store: BlobStore, snapshot_id: str, trees: dict[str, Path], tool: str = "gnu"
) -> SnapshotManifest:
    return await write_snapshot(
        store,
        snapshot_id=snapshot_id,
        sandbox_id="sbx_1",
        provider="local",
        paths=list(trees),
        export=lambda path: tar_stream(trees[path], tool=tool),
        session_id="sess-1",
        repo="octo/repo",
        git_head="a" * 40,
        reason="test",
    )


class Importer:
    """Plays Provider.import_tar with real `tar -x` into per-path directories."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.calls: list[str] = []
        self.codes: list[int] = []

    def dest(self, path: str) -> Path:
        return self.base / path.lstrip("/")

    async def __call__(self, path: str, stream: AsyncIterator[bytes]) -> None:
        self.calls.append(path)
        code, stderr = await tar_extract(stream, self.dest(path))
        self.codes.append(code)
        assert code == 0, stderr


@pytest.mark.parametrize("tool", ["gnu", "python"])
async def test_roundtrip_fidelity(blob_store: BlobStore, tmp_path: Path, tool: str) -> None:
    src = build_sample_tree(tmp_path / "src")
    manifest = await snapshot_of(blob_store, "snap1", {WORKSPACE: src}, tool=tool)

    importer = Importer(tmp_path / "restored")
    assert await restore_snapshot(blob_store, "snap1", importer) == manifest
    assert importer.calls == [WORKSPACE]
    restored = importer.dest(WORKSPACE)
    assert tree_entries(restored) == tree_entries(src)
    assert tree_hash(restored) == tree_hash(src)

    # The whole-archive stream restores in place under "/" (here: a stand-in root).
    code, stderr = await tar_extract(read_snapshot(blob_store, "snap1"), tmp_path / "root")
    assert code == 0, stderr
    assert tree_hash(tmp_path / "root" / "workspace") == tree_hash(src)


async def test_manifest_fields(blob_store: BlobStore, tmp_path: Path) -> None:
    src = build_sample_tree(tmp_path / "src")
    manifest = await snapshot_of(blob_store, "snap-fields", {WORKSPACE: src})
    blob = await blob_store.get_bytes(blob_key("snap-fields"))
    assert manifest.compressed_size == len(blob)
    assert manifest.sha256 == hashlib.sha256(blob).hexdigest()
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    assert manifest.raw_size == len(raw)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
    assert members[0].name == "workspace" and members[0].isdir()
    assert all(m.name == "workspace" or m.name.startswith("workspace/") for m in members)
    assert manifest.file_count == sum(not m.isdir() for m in members)
    assert manifest.file_count == sum(e[0] != "dir" for e in tree_entries(src).values())
    stored = json.loads(await blob_store.get_bytes(manifest_key("snap-fields")))
    assert stored["format_version"] == 1
    assert stored["paths"] == [WORKSPACE]
    assert stored["repo"] == "octo/repo" and stored["session_id"] == "sess-1" and stored["reason"] == "test"
    assert await load_manifest(blob_store, "snap-fields") == manifest
    assert await verify_snapshot(blob_store, "snap-fields") == manifest


async def test_two_paths_restore_separately(blob_store: BlobStore, tmp_path: Path) -> None:
    work = build_sample_tree(tmp_path / "work")
    state = tmp_path / "state"
    (state / "storage/session").mkdir(parents=True)
    (state / "storage/session/ses_1.json").write_text('{"messages": []}')
    await snapshot_of(blob_store, "two", {WORKSPACE: work, STATE_DIR: state})

    importer = Importer(tmp_path / "restored")
    manifest = await restore_snapshot(blob_store, "two", importer)
    assert manifest.paths == [WORKSPACE, STATE_DIR]
    assert importer.calls == [WORKSPACE, STATE_DIR]
    assert tree_hash(importer.dest(WORKSPACE)) == tree_hash(work)
    assert tree_hash(importer.dest(STATE_DIR)) == tree_hash(state)


async def test_empty_export_still_restores_its_root(blob_store: BlobStore, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()

    async def nothing(path: str) -> AsyncIterator[bytes]:
        yield bytes(1024)  # an archive with no member at all

    manifest = await write_snapshot(
        blob_store, snapshot_id="e", sandbox_id="s", provider="local", paths=[WORKSPACE], export=nothing
    )
    assert manifest.file_count == 0
    importer = Importer(tmp_path / "restored")
    await restore_snapshot(blob_store, "e", importer)
    assert importer.dest(WORKSPACE).is_dir()


async def test_failed_export_leaves_no_snapshot(blob_store: BlobStore, tmp_path: Path) -> None:
    src = build_sample_tree(tmp_path / "src")

    async def breaks(path: str) -> AsyncIterator[bytes]:
        sent = 0
        async for piece in tar_stream(src):
            yield piece
            sent += len(piece)
            if sent > 512 * 1024:
                raise ProviderError("sandbox vanished")

    with pytest.raises(ProviderError, match="vanished"):
        await write_snapshot(
            blob_store, snapshot_id="x", sandbox_id="s", provider="local", paths=[WORKSPACE], export=breaks
        )
    assert await blob_store.list() == []
    with pytest.raises(SnapshotNotFound):
        await load_manifest(blob_store, "x")


async def test_garbage_export_is_a_provider_error(blob_store: BlobStore) -> None:
    async def garbage(path: str) -> AsyncIterator[bytes]:
        yield b"this is not a tar stream" * 100

    with pytest.raises(ProviderError, match="not a valid tar"):
        await write_snapshot(
            blob_store, snapshot_id="g", sandbox_id="s", provider="local", paths=[WORKSPACE], export=garbage
        )
    assert await blob_store.list() == []


async def test_existing_snapshot_and_bad_arguments(blob_store: BlobStore, tmp_path: Path) -> None:
    src = build_sample_tree(tmp_path / "src")
    await snapshot_of(blob_store, "dup", {WORKSPACE: src})
    with pytest.raises(Conflict):
        await snapshot_of(blob_store, "dup", {WORKSPACE: src})
    with pytest.raises(BadRequest):
        await snapshot_of(blob_store, "../evil", {WORKSPACE: src})
    with pytest.raises(BadRequest):
        await snapshot_of(blob_store, "nested", {WORKSPACE: src, WORKSPACE + "/sub": src})


async def test_delete_snapshot(blob_store: BlobStore, tmp_path: Path) -> None:
    src = build_sample_tree(tmp_path / "src")
    await snapshot_of(blob_store, "del", {WORKSPACE: src})
    assert await delete_snapshot(blob_store, "del") is True
    assert await blob_store.list() == []
    assert await delete_snapshot(blob_store, "del") is False
    with pytest.raises(SnapshotNotFound):
        await collect(read_snapshot(blob_store, "del"))


# -- corruption ------------------------------------------------------------------


@pytest.fixture
async def two_snapshots(blob_store: BlobStore, tmp_path: Path) -> BlobStore:
    a = build_sample_tree(tmp_path / "a")
    b = tmp_path / "b"
    b.mkdir()
    (b / "other.txt").write_text("a different workspace\n" * 1000)
    await snapshot_of(blob_store, "A", {WORKSPACE: a})
    await snapshot_of(blob_store, "B", {WORKSPACE: b})
    return blob_store


async def expect_corrupt(store: BlobStore, snapshot_id: str, tmp_path: Path, match: str | None = None) -> None:
    """Every way of reading refuses the snapshot; tar fed by the stream fails too."""
    with pytest.raises(SnapshotCorrupt, match=match):
        await verify_snapshot(store, snapshot_id)
    with pytest.raises(SnapshotCorrupt, match=match):
        await collect(read_snapshot(store, snapshot_id))

    swallowed: list[int] = []

    async def swallowing(path: str, stream: AsyncIterator[bytes]) -> None:
        try:
            code, _ = await tar_extract(stream, tmp_path / "half" / path.lstrip("/"))
            swallowed.append(code)
        except SnapshotCorrupt:
            swallowed.append(-1)  # a careless importer hides the error...

    with pytest.raises(SnapshotCorrupt, match=match):
        await restore_snapshot(store, snapshot_id, swallowing)  # ...restore still raises


async def test_flipped_byte(two_snapshots: BlobStore, tmp_path: Path) -> None:
    store = two_snapshots
    blob = bytearray(await store.get_bytes(blob_key("A")))
    blob[len(blob) // 2] ^= 0x01
    await store.put_bytes(blob_key("A"), bytes(blob))
    await expect_corrupt(store, "A", tmp_path)


async def test_truncated_blob(two_snapshots: BlobStore, tmp_path: Path) -> None:
    store = two_snapshots
    blob = await store.get_bytes(blob_key("A"))
    await store.put_bytes(blob_key("A"), blob[: len(blob) - 100])
    await expect_corrupt(store, "A", tmp_path)

    # tar fed by the stream never sees an end-of-archive marker: it fails, not "succeeds short".
    codes: list[int] = []

    async def importer(path: str, stream: AsyncIterator[bytes]) -> None:
        code, _ = await tar_extract(_until_error(stream), tmp_path / "t")
        codes.append(code)

    with pytest.raises(SnapshotCorrupt):
        await restore_snapshot(store, "A", importer)
    assert codes and codes[0] != 0


async def _until_error(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for piece in stream:
            yield piece
    except SnapshotCorrupt:
        return


async def test_blob_of_another_snapshot(two_snapshots: BlobStore, tmp_path: Path) -> None:
    store = two_snapshots
    await store.put_bytes(blob_key("A"), await store.get_bytes(blob_key("B")))
    await expect_corrupt(store, "A", tmp_path)


async def test_manifest_of_another_snapshot(two_snapshots: BlobStore, tmp_path: Path) -> None:
    store = two_snapshots
    await store.put_bytes(manifest_key("A"), await store.get_bytes(manifest_key("B")))
    await expect_corrupt(store, "A", tmp_path, match="belongs to snapshot 'B'")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"format_version": 3}', "format version 3"),
        (b'{"format_version": 2, "snapshot_id": "A"}', "invalid manifest"),
        (b'{"format_version": 1, "snapshot_id": "A"}', "invalid manifest"),
    ],
)
async def test_bad_manifest(two_snapshots: BlobStore, tmp_path: Path, content: bytes, match: str) -> None:
    store = two_snapshots
    await store.put_bytes(manifest_key("A"), content)
    await expect_corrupt(store, "A", tmp_path, match=match)


async def test_tampered_manifest_sizes(two_snapshots: BlobStore, tmp_path: Path) -> None:
    store = two_snapshots
    manifest = await load_manifest(store, "A")
    forged = manifest.model_copy(update={"file_count": manifest.file_count + 1})
    await store.put_bytes(manifest_key("A"), forged.to_bytes())
    await expect_corrupt(store, "A", tmp_path, match="files instead of")


class ManifestWriteFails(DirectoryBlobStore):
    """A directory store whose manifest writes fail, as when storage dies at the last step."""

    async def put_bytes(self, key: str, data: bytes) -> int:
        if key.endswith(".json"):
            raise StorageUnavailable("storage went away")
        return await super().put_bytes(key, data)


async def test_failed_manifest_write_removes_the_blob(tmp_path: Path) -> None:
    store = ManifestWriteFails(tmp_path / "blobs")
    await store.open()
    src = build_sample_tree(tmp_path / "src")
    with pytest.raises(StorageUnavailable):
        await snapshot_of(store, "late", {WORKSPACE: src})
    assert await store.list() == []


async def test_cancelled_snapshot_leaves_nothing(blob_store: BlobStore, tmp_path: Path) -> None:
    halfway = asyncio.Event()

    async def export(path: str) -> AsyncIterator[bytes]:
        # Stall inside a member, 6 MiB into a 7 MiB file: an S3 multipart upload is open.
        header = tarfile.TarInfo("big")
        header.size = 7 << 20
        yield header.tobuf(tarfile.PAX_FORMAT)
        yield os.urandom(6 << 20)
        halfway.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(
        write_snapshot(blob_store, snapshot_id="c", sandbox_id="s", provider="local", paths=[WORKSPACE], export=export)
    )
    await asyncio.wait_for(halfway.wait(), 30)
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await blob_store.list() == []
